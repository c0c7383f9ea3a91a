"""What a claim's rule returns, and the verdict logic rules share.

A rule (one per claim, registered by name with `@rule`) takes the loaded rows, the claim's threshold
and its YAML args, and returns one `Evidence` per scope (a model for quality-based claims, else the
machine or the benchmark's model shapes). Every rule can say each of the four verdicts; "no data"
carries no number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NO_DATA = "reproduced", "not reproduced", "inconclusive", "no data"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NO_DATA)
RULES: dict = {}  # rule name (the YAML's `metric`) -> function(rows, threshold, **args) -> list[Evidence]


def rule(fn):
    RULES[fn.__name__] = fn
    return fn


@dataclass
class Evidence:
    verdict: str
    value: float | None = None
    low: float | None = None
    high: float | None = None
    interval: str = ""  # what [low, high] is: "paired t-interval over documents", "p10-p90 over repeats", ...
    scope: str = ""  # what the verdict is about: a model, or the machine/shapes of a GPU benchmark
    n: int = 0  # cells, repeats or rows behind the value
    device: str = ""
    detail: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}")
        if self.verdict == NO_DATA and self.value is not None:
            raise ValueError("a claim without data has no value")
        for name in ("value", "low", "high"):  # NaN is missing data, never a measurement
            x = getattr(self, name)
            if x is not None and not math.isfinite(x):
                setattr(self, name, None)


def no_data(reason: str, scope: str = "") -> Evidence:
    return Evidence(NO_DATA, scope=scope, detail=reason)


def interval_verdict(low: float, high: float, threshold: float) -> str:
    """Reproduced when the whole range reaches the threshold, not reproduced when all of it stays
    below, inconclusive when it straddles."""
    if low >= threshold:
        return REPRODUCED
    if high < threshold:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def all_cells(verdicts) -> str:
    """A claim stated without conditions must hold in every cell: one cell that fails refutes it,
    all cells reproducing confirms it, anything else is inconclusive."""
    verdicts = list(verdicts)
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return REPRODUCED if verdicts and all(v == REPRODUCED for v in verdicts) else INCONCLUSIVE


def devices(df) -> str:
    return ", ".join(sorted({str(d) for d in df.device.dropna()})) if "device" in df else ""


def pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.1f}%"
