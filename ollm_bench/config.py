"""Hydra structured-config schemas (ConfigStore), validated when turned into objects.

`OmegaConf.to_object(cfg)` instantiates these dataclasses, which runs `__post_init__`: that is
where impossible values are rejected, before any run starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .errors import ConfigError

CONTENT_TYPES = ("code", "prose", "structured", "repetitive")
OPTIM_KINDS = ("kv_cache", "attention", "memory")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    name: str = MISSING
    # gemma3_270m (embedded), tiny (random test model), random (no-weights: `arch` shapes),
    # or a hub id / local directory.
    source: str = MISSING
    dtype: str = "float32"
    max_seq_len: Optional[int] = None
    weights: bool = True  # False: random weights, speed/memory only, never quality
    arch: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r} is not one of {DTYPES}")
        if self.max_seq_len is not None and self.max_seq_len <= 0:
            raise ConfigError(f"model.max_seq_len must be positive, got {self.max_seq_len}")


@dataclass
class OptimConfig:
    name: str = MISSING
    kind: str = "kv_cache"
    peer: bool = False
    method: Any = None  # {_target_: optim.<module>.<Class>, ...params}

    def __post_init__(self):
        if self.kind not in OPTIM_KINDS:
            raise ConfigError(f"optim.kind={self.kind!r} is not one of {OPTIM_KINDS}")
        if not isinstance(self.method, dict) or "_target_" not in self.method:
            raise ConfigError(f"optim {self.name!r} needs method._target_ naming its class in optim/")


@dataclass
class ContentConfig:
    name: str = MISSING
    source: str = ""
    license: str = ""

    def __post_init__(self):
        if self.name not in CONTENT_TYPES:
            raise ConfigError(f"content {self.name!r} is not one of {CONTENT_TYPES}")


@dataclass
class QualityConfig:
    enabled: bool = True
    n_docs: int = 3
    score_tokens: int = 256  # last tokens of each document, scored from the optimized cache
    prefill_chunk: int = 512
    score_chunk: int = 128
    bootstrap: int = 2000

    def __post_init__(self):
        for key in ("n_docs", "score_tokens", "prefill_chunk", "score_chunk", "bootstrap"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"quality.{key} must be positive, got {getattr(self, key)}")


@dataclass
class SpeedConfig:
    decode_tokens: int = 16
    warmup_tokens: int = 64

    def __post_init__(self):
        if self.decode_tokens < 2:
            raise ConfigError("speed.decode_tokens must be >= 2 (the first token is time to first token)")


@dataclass
class RunnerConfig:
    isolation: str = "process"  # process: one spawned process per run; inline: same process
    timeout_s: int = 3600
    rerun_failed: bool = False

    def __post_init__(self):
        if self.isolation not in ("process", "inline"):
            raise ConfigError(f"runner.isolation={self.isolation!r} is not 'process' or 'inline'")


@dataclass
class BenchConfig:
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    content: ContentConfig = MISSING
    suite_name: str = "default"
    seq_len: int = 512
    seed: int = 0
    batch_size: int = 1
    device: str = "auto"
    results_dir: str = "results"
    quality: QualityConfig = field(default_factory=QualityConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)

    def __post_init__(self):
        if self.seq_len <= 1:
            raise ConfigError(f"seq_len must be > 1, got {self.seq_len}")
        if self.model.max_seq_len is not None and self.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"seq_len={self.seq_len} exceeds what model {self.model.name!r} allows "
                f"(max_seq_len={self.model.max_seq_len})"
            )
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.quality.enabled and self.model.weights and self.quality.score_tokens >= self.seq_len:
            raise ConfigError(
                f"quality.score_tokens={self.quality.score_tokens} must be smaller than seq_len={self.seq_len}"
            )

    def run_fields(self) -> dict:
        """What defines a run's result: the config hash covers exactly this."""
        return {
            "model": _plain(self.model),
            "optim": _plain(self.optim),
            "content": self.content.name,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "quality": _plain(self.quality),
            "speed": _plain(self.speed),
            "device": self.device,
        }

    def config_hash(self) -> str:
        blob = json.dumps(self.run_fields(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(obj) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)


def to_bench(cfg) -> BenchConfig:
    """DictConfig from Hydra -> validated BenchConfig (runs every __post_init__)."""
    try:
        return OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf validation errors: wrong type, missing value
        raise ConfigError(f"invalid configuration: {str(exc).splitlines()[0]}") from exc


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=BenchConfig)
