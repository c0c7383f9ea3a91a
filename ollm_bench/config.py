"""Hydra structured-config schemas (ConfigStore), validated when turned into objects.

`to_bench(cfg)` instantiates these dataclasses, which runs `__post_init__`, then builds the
scenario (its own dataclass, chosen by `scenario._target_`) and lets it check the whole config:
impossible values are rejected there, before any run starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .errors import ConfigError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
# `random`: seeded random token ids, for speed/memory runs on no-weights models (no text needed).
CONTENT_TYPES = ("code", "prose", "structured", "repetitive", "wikitext", "random")
OPTIM_KINDS = ("kv_cache", "attention", "memory")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelConfig:
    name: str = MISSING
    # gemma3_270m / smollm2_135m (embedded), tiny / tiny_llama (random test models), random
    # (no-weights: `arch` shapes), or a hub id / local directory.
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
        if self.source.startswith((".", "/", "~")) and not Path(self.source).expanduser().is_dir():
            raise ConfigError(f"model {self.source!r}: no such local directory")


@dataclass
class OptimConfig:
    name: str = MISSING
    kind: str = "kv_cache"
    peer: bool = False
    method: Any = None  # {_target_: optim.<module>.<Class>, ...params}
    # Where parameters chosen from measured quality came from (a results/calibration/ file written
    # by `python -m ollm_bench calibrate`); recorded in every row of the method.
    calibration: Optional[str] = None

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
    path: Optional[str] = None  # a local copy of the corpus (wikitext), where one is needed
    # `test`: evaluated documents; `valid`: the calibration split (WikiText-2 valid.txt), where
    # anything chosen from measured quality is chosen, never on evaluated documents.
    split: str = "test"

    def __post_init__(self):
        if self.name not in CONTENT_TYPES:
            raise ConfigError(f"content {self.name!r} is not one of {CONTENT_TYPES}")
        if self.split not in ("test", "valid"):
            raise ConfigError(f"content.split={self.split!r} is not 'test' or 'valid'")
        if self.split == "valid" and self.name != "wikitext":
            raise ConfigError(f"content {self.name!r} has no calibration split; calibrate on content=wikitext "
                              "content.split=valid")


@dataclass
class RunnerConfig:
    isolation: str = "process"  # process: one spawned process per run; inline: same process
    timeout_s: int = 3600
    rerun_failed: bool = False
    # Quality cells longer than this run only where the method did not fail the gate at this length
    # on the same model and content (run/carry.py); not part of a run's identity.
    only_if_passed_at: Optional[int] = None

    def __post_init__(self):
        if self.isolation not in ("process", "inline"):
            raise ConfigError(f"runner.isolation={self.isolation!r} is not 'process' or 'inline'")
        if self.timeout_s <= 0:
            raise ConfigError(f"runner.timeout_s must be positive, got {self.timeout_s}")
        if self.only_if_passed_at is not None and self.only_if_passed_at <= 0:
            raise ConfigError(f"runner.only_if_passed_at must be a positive length, got {self.only_if_passed_at}")


@dataclass
class BenchConfig:
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    content: ContentConfig = MISSING
    # {_target_: ollm_bench.scenarios.<name>.<Scenario>, ...knobs}: what a run measures
    # (conf/scenario/: quality, decode, attention, memory).
    scenario: Any = None
    suite_name: str = "default"
    seq_len: int = 512
    seed: int = 0
    batch_size: int = 1
    device: str = "auto"
    results_dir: str = "results"
    runner: RunnerConfig = field(default_factory=RunnerConfig)

    def __post_init__(self):
        if self.seq_len <= 1:
            raise ConfigError(f"seq_len must be > 1, got {self.seq_len}")
        if self.model.max_seq_len is not None and self.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"seq_len={self.seq_len} exceeds the context of model {self.model.name!r} "
                f"(max_seq_len={self.model.max_seq_len})"
            )
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r} is not one of {DEVICES} (or cuda:N)")
        if not isinstance(self.scenario, dict) or "_target_" not in self.scenario:
            raise ConfigError("scenario needs _target_ naming its class (conf/scenario/*.yaml)")

    @property
    def scenario_name(self) -> str:
        return self.scenario["_target_"].rsplit(".", 2)[-2]

    def run_fields(self) -> dict:
        """What was asked for: the config part of a run's identity (run/identity.py adds the rest)."""
        return {
            "model": _plain(self.model),
            "optim": _plain(self.optim),
            "content": _plain(self.content),
            "scenario": dict(self.scenario),
            "seq_len": self.seq_len,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "device": self.device,
        }


def _plain(obj) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)


def digest(obj) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_bench_part(schema, raw, where: str):
    """Validate one config node (e.g. a method YAML) against its schema."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"invalid {where}: {str(exc).splitlines()[0]}") from exc


def to_bench(cfg) -> BenchConfig:
    """DictConfig from Hydra -> validated BenchConfig (runs every __post_init__ and the scenario's check)."""
    try:
        bench = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf validation errors: wrong type, missing value
        raise ConfigError(f"invalid configuration: {str(exc).splitlines()[0]}") from exc
    build_scenario(bench).check(bench)
    build_optim(bench)
    return bench


def build_optim(bench: BenchConfig):
    """The method, built once so its own validation (`__post_init__`) rejects bad parameters as bad
    input, before any run."""
    from hydra.utils import instantiate

    try:
        return instantiate(bench.optim.method)
    except Exception as exc:
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise ConfigError(f"optim {bench.optim.name!r}: {type(cause).__name__}: {cause}") from None


def build_scenario(bench: BenchConfig):
    from hydra.utils import instantiate

    try:
        return instantiate(bench.scenario)
    except Exception as exc:
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"invalid scenario config: {type(cause).__name__}: {cause}") from None


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=BenchConfig)
