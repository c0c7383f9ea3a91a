"""Markdown for `results/claims.md` and the README block: one row per claim and scope (model, or
the machine/shapes of a GPU benchmark), the measured value with what its range is, the verdict,
and the evidence; then each rule, from its docstring."""

from __future__ import annotations

import inspect
import math

import pandas as pd

from .evidence import RULES


def _num(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def measured(t) -> str:
    if _num(t.value) == "":
        return "—"
    text = _num(t.value)
    if _num(t.low) != "" and _num(t.high) != "":
        text += f" [{_num(t.low)}, {_num(t.high)}]"
    return text + (f" ({t.interval})" if t.interval else "")


def claims_markdown(table: pd.DataFrame) -> str:
    lines = ["| id | claim | threshold | scope | measured [range] (what the range is) | verdict | evidence (device) |",
             "|---|---|---|---|---|---|---|"]
    previous = None
    for t in table.itertuples():
        quote = "" if t.id == previous else t.claim
        previous = t.id
        device = f" ({t.device})" if t.device else ""
        lines.append(f"| {t.id} | {quote} | {t.threshold:g} | {t.scope or '—'} | {measured(t)} | **{t.verdict}** | "
                     f"{t.evidence}{device} |".replace("\n", " "))
    return "\n".join(lines)


def rules_markdown(claims: list[dict]) -> str:
    """Each claim's rule, in the words of the function that applies it."""
    lines = []
    for c in claims:
        doc = " ".join(inspect.getdoc(RULES[c["metric"]]).split())
        args = ", ".join(f"{k}={v}" for k, v in c.get("args", {}).items())
        lines.append(f"- **{c['id']}** `{c['metric']}({args})`, threshold {c['threshold']:g}: {doc}")
    return "\n".join(lines)
