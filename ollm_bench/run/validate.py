"""Command-line overrides checked before a sweep starts: a bad one is one clear error and exit 2.

Hydra itself reports an unknown config option or key only once the sweep is under way, with exit
code 1 (the code that means "some runs failed"). Here every value of every swept key is composed
once, with the others at their first value, and validated the way a run validates its config
(`config.to_bench`), so bad input never reaches a run and never touches the store.

`model=` also takes a local checkpoint directory or a hub id (`org/name`): such a value is turned
into `model=local model.source=<value> model.name=<last path part>` (conf/model/local.yaml).
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from .. import config as cfg_mod
from ..errors import ConfigError


def _known(group: str) -> set[str]:
    return {p.stem for p in (Path(cfg_mod.CONF_DIR) / group).glob("*.yaml")}


def rewrite_model_paths(args: list[str]) -> list[str]:
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if key == "model" and sep and "," not in value and value not in _known("model") and (
                "/" in value or value.startswith((".", "~"))):
            name = Path(value.rstrip("/")).name or value
            out += ["model=local", f"model.source={value}", f"model.name={name}"]
        else:
            out.append(arg)
    return out


def _choices(parser, key: str, value: str) -> list[str]:
    parsed = parser.parse_override(f"{key}={value}")
    if parsed.is_sweep_override():
        return list(islice(parsed.sweep_string_iterator(), 64))
    return [parsed.get_value_element_as_str()]


def validate_sweep(args: list[str]) -> None:
    """Compose and validate each swept value once; raise ConfigError with Hydra's message."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    cfg_mod.register_configs()
    parser = OverridesParser.create()
    overrides = [a for a in args if not a.startswith(("hydra.", "hydra/", "--"))]
    try:
        parser.parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"cannot parse the overrides: {str(exc).splitlines()[0]}") from None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=cfg_mod.CONF_DIR, version_base="1.3"):
            plain = [o for o in overrides if not parser.parse_override(o).is_sweep_override()]
            try:
                base = compose(config_name="config", overrides=plain, return_hydra_config=True)
            except HydraException as exc:
                raise ConfigError(str(exc).splitlines()[0]) from None
            raw = base.hydra.sweeper.get("params")
            params = dict(OmegaConf.to_container(raw, resolve=False)) if raw else {}
            # A delete (`~key`) or add (`+key=v`) that sweeps nothing keeps its prefix and its order
            # (`~k` then `+k=v` replaces a map that a plain `k=v` would merge into).
            fixed = [o for o in overrides if o.startswith(("+", "~")) and not parser.parse_override(o).is_sweep_override()]
            for o in overrides:
                if o in fixed:
                    continue
                key, _, value = o.partition("=")
                params[key.lstrip("+~")] = value
            params = {k: _choices(parser, k, str(v)) for k, v in params.items()}
            first = fixed + [f"{k}={v[0]}" for k, v in params.items()]
            # The first value of every key together: its errors come from no one swept value (e.g.
            # seq_len against the model's context), and the messages name their own field.
            try:
                cfg_mod.to_bench(compose(config_name="config", overrides=first))
            except HydraException as exc:
                raise ConfigError(str(exc).splitlines()[0]) from None
            seen = {tuple(first)}
            for key, values in params.items():
                for value in values[1:]:
                    combo = [o for o in first if not o.startswith(f"{key}=")] + [f"{key}={value}"]
                    if tuple(combo) in seen:
                        continue
                    seen.add(tuple(combo))
                    try:
                        composed = compose(config_name="config", overrides=combo)
                    except HydraException as exc:
                        raise ConfigError(f"{key}={value}: {str(exc).splitlines()[0]}") from None
                    try:
                        cfg_mod.to_bench(composed)
                    except ConfigError as exc:
                        raise ConfigError(f"{key}={value}: {exc}") from None
    finally:
        GlobalHydra.instance().clear()
