"""What every scenario shares: the contract and the run context.

A scenario (in the spirit of optimum-benchmark's) is a small dataclass chosen by config
(`scenario._target_`, files in `conf/scenario/`): its fields are its knobs, `__post_init__` rejects
impossible values, `check(bench)` rejects impossible combinations with the rest of the config, and
`run(bench) -> dict` measures one config and returns the metric columns of its row (names from
`run/store.COLUMNS`). The runner gives every scenario the same process isolation, identity,
resume, failure rows and provenance, so a CPU quality run and a GPU decode-speed run land in one
store with one schema.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import ClassVar

from ..config import BenchConfig
from ..errors import ConfigError


@dataclass
class Scenario:
    name: ClassVar[str] = ""
    needs_cuda: ClassVar[bool] = False

    def check(self, bench: BenchConfig) -> None:
        """Cross-field validation against the whole config (raise ConfigError)."""
        if self.needs_cuda and bench.device == "cpu":
            raise ConfigError(f"scenario {self.name!r} measures on a CUDA GPU; device=cpu cannot run it")

    def run(self, bench: BenchConfig) -> dict:
        raise NotImplementedError


def positive(obj, *names: str) -> None:
    for key in names:
        if getattr(obj, key) <= 0:
            raise ConfigError(f"scenario.{key} must be positive, got {getattr(obj, key)}")


def median_spread(values: list[float]) -> tuple[float, float]:
    """Median and full range (max - min) over repeats."""
    if not values:
        return math.nan, math.nan
    return statistics.median(values), max(values) - min(values)


def quantiles(values: list[float]) -> dict:
    """Median, p10 and p90 (inclusive method) of repeated measurements."""
    xs = sorted(values)
    if len(xs) == 1:
        return {"median": xs[0], "p10": xs[0], "p90": xs[0], "n": 1}
    dec = statistics.quantiles(xs, n=10, method="inclusive")
    return {"median": statistics.median(xs), "p10": dec[0], "p90": dec[8], "n": len(xs)}
