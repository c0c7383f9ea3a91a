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
    measures: ClassVar[str] = ""  # what a GPU scenario measures, for the one no-CUDA message
    optim_kind: ClassVar[str] = ""  # the kind of method (conf/optim `kind`) it measures, if only one
    model_from_conf: ClassVar[bool] = False  # builds its model from conf/model (random weights) only
    # A GPU scenario's dataclass has `allow_cpu: bool = False`: tests set it to run its logic on CPU
    # at tiny sizes (never evidence).

    def check(self, bench: BenchConfig) -> None:
        """Cross-field validation against the whole config (raise ConfigError)."""
        if self.optim_kind and bench.optim.kind != self.optim_kind:
            raise ConfigError(f"optim {bench.optim.name!r} is kind {bench.optim.kind!r}; scenario {self.name} "
                              f"measures conf/optim entries of kind {self.optim_kind}")
        if self.model_from_conf:
            from ..models import TINY_CONFIGS

            if bench.model.source != "random" and bench.model.source not in TINY_CONFIGS:
                raise ConfigError(f"scenario {self.name} builds its model from conf with random weights; model "
                                  f"{bench.model.name!r} is not one (use e.g. model=llama31_8b_noweights)")
        if self.needs_cuda and not getattr(self, "allow_cpu", False):
            self._check_cuda(bench)

    def _check_cuda(self, bench: BenchConfig) -> None:
        if bench.device == "cpu":
            raise ConfigError(f"scenario {self.name!r} measures on a CUDA GPU; device=cpu cannot run it")
        from ..run.environment import resolve_device

        if resolve_device(bench.device).type != "cuda":
            raise ConfigError(f"suite {bench.suite_name!r} measures {self.measures or self.name} on a CUDA GPU and "
                              "this machine has none (device resolves to cpu); run it on a GPU machine (README: GPU runs)")

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


def metric_row(metric: str, unit: str, values: list[float], **extra) -> dict:
    """The row columns of one named measurement: median, p10, p90 and n of `values`; `extra`
    (JSON) holds what explains it."""
    q = quantiles(values)
    return {"metric": metric, "metric_unit": unit, "metric_value": q["median"], "metric_p10": q["p10"],
            "metric_p90": q["p90"], "metric_n": q["n"], "extra": extra}
