"""The one registry of methods: `conf/optim/<name>.yaml`.

A method exists when its YAML exists; the sweep (through Hydra), the lm-eval model, the task suite
and every scenario build it from there, so nothing else lists method names. `optim/` holds the
classes; the YAML names one with `method._target_` and sets its parameters.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from .config import CONF_DIR, OptimConfig, to_bench_part
from .errors import ConfigError

OPTIM_DIR = Path(CONF_DIR) / "optim"


def optim_names() -> list[str]:
    return sorted(p.stem for p in OPTIM_DIR.glob("*.yaml"))


def optim_config(name: str) -> OptimConfig:
    """The validated config of method `name` (its YAML merged onto the schema)."""
    if name not in optim_names():
        raise ConfigError(f"unknown optim {name!r}; known: {', '.join(optim_names())}")
    raw = OmegaConf.load(OPTIM_DIR / f"{name}.yaml")
    return to_bench_part(OptimConfig, raw, f"conf/optim/{name}.yaml")


def configured_params(name: str) -> dict | None:
    """Method `name`'s parameters in its YAML now (None: no such method any more)."""
    return dict(optim_config(name).method) if name in optim_names() else None


def method_fingerprint(name: str) -> str | None:
    """Digest of method `name`'s configured parameters and code (None: no such method any more)."""
    from .run.identity import method_fingerprint as fingerprint

    params = configured_params(name)
    return None if params is None else fingerprint(params)


def build_method(name: str, **overrides):
    """An instance of method `name` with its configured parameters (`overrides` replace some)."""
    from hydra.utils import instantiate

    params = dict(optim_config(name).method) | overrides
    try:
        return instantiate(params)
    except Exception as exc:  # a bad parameter in the YAML or the overrides: one clear line
        cause = exc.__cause__ or exc
        raise ConfigError(f"optim {name!r} cannot be built: {type(cause).__name__}: {cause}") from None


def build_scoring_method(name: str):
    """`build_method(name)` for quality scoring: a router is judged on what it learned, so it does
    not explore there, and every request kind needs measured proof."""
    method = build_method(name)
    if hasattr(method, "exploration"):
        method.exploration = 0.0
    if hasattr(method, "proven_only"):
        method.proven_only = True
    return method


def make_cache_fn(method, config):
    """`() -> fresh Cache` for a method: its own cache, or transformers' plain cache for methods
    that only hook the model (attention mechanisms)."""
    from optim import FullPrecisionKV

    owner = method if hasattr(method, "make_cache") else FullPrecisionKV()
    return lambda: owner.make_cache(config)
