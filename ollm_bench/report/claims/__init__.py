"""Verdicts for the report's claims, computed from stored rows (never typed by hand).

`conf/claims/*.yaml` lists the claims as data (id, quote, threshold, rule name in `metric`, its
args). Each rule is one function (`@rule`, modules below) from the loaded rows (`rows.ResultRows`)
to one `Evidence` per scope; `evaluate` runs them and `render` writes the table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from ...errors import ConfigError
from . import attention, decode, kv, memory, router, storage  # noqa: F401  (each registers its rules)
from .evidence import RULES, Evidence, no_data
from .render import claims_markdown, rules_markdown
from .rows import ResultRows


def load_claims(path: Path) -> list[dict]:
    try:
        claims = yaml.safe_load(Path(path).read_text())["claims"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read claims file {path}: {exc}") from None
    for c in claims:
        if c.get("metric") not in RULES:
            raise ConfigError(f"claim {c.get('id')}: unknown metric {c.get('metric')!r}; known: {sorted(RULES)}")
    return claims


def evaluate(claims: list[dict], results_root: Path) -> pd.DataFrame:
    """One row per claim and scope."""
    rows, out = ResultRows(results_root), []
    for c in claims:
        for ev in RULES[c["metric"]](rows, c["threshold"], **c.get("args", {})):
            out.append({"id": c["id"], "claim": c["quote"], "threshold": c["threshold"], "scope": ev.scope,
                        "value": ev.value, "low": ev.low, "high": ev.high, "interval": ev.interval, "n": ev.n,
                        "device": ev.device, "verdict": ev.verdict, "evidence": ev.detail})
    return pd.DataFrame(out)


__all__ = ["Evidence", "ResultRows", "claims_markdown", "evaluate", "load_claims", "no_data", "rules_markdown"]
