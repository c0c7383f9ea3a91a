"""One loader for every row a claim reads: `results/<suite>/runs.csv` through `ResultStore`, by suite
and scenario, plus the router experiment's JSON (the one output that is not a store row; its format
is documented in `ollm_bench/evaluate/router_eval.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ...errors import StoreError
from ...run.store import COLUMNS, ResultStore
from .. import quality

ROUTER_EXPERIMENT = Path("attention") / "router_learning.json"


class ResultRows:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._suites: dict[str, pd.DataFrame] = {}
        self._summaries: dict[str, pd.DataFrame] = {}
        self.problems: dict[str, str] = {}  # suite -> why its rows could not be read

    def suite(self, suite: str) -> pd.DataFrame:
        if suite not in self._suites:
            path = self.root / suite / "runs.csv"
            try:
                self._suites[suite] = ResultStore(path).read()
            except StoreError as exc:  # an unreadable store is reported by every claim that needs it
                self.problems[suite] = str(exc)
                self._suites[suite] = pd.DataFrame(columns=COLUMNS)
        return self._suites[suite]

    def rows(self, suite: str, scenario: str) -> pd.DataFrame:
        """ok rows of one scenario, oldest first (callers keep the latest of each config)."""
        df = self.suite(suite)
        return df[(df.status == "ok") & (df.scenario == scenario)].sort_values("started_at")

    def quality(self, suite: str) -> pd.DataFrame:
        """`report.quality.summarize` of the suite's quality rows (the configured methods only): one
        row per cell with its gate."""
        if suite not in self._summaries:
            df = self.rows(suite, "quality")
            s = quality.summarize(df) if len(df) else pd.DataFrame(
                columns=quality.KEY + ["optim", "label", "gate", "kv_ratio", "kv_mib"])
            # A claim is about the method as configured now: rows run with an override (ablations)
            # or before a calibration changed its YAML carry another label and are not read.
            self._summaries[suite] = s[s.label == s.optim]
        return self._summaries[suite]

    def where(self, suite: str, scenario: str) -> str:
        """Where a claim looked, and why nothing was there if the store could not be read."""
        problem = f" (unreadable: {self.problems[suite]})" if suite in self.problems else ""
        return f"results/{suite}/runs.csv scenario={scenario}{problem}"

    def router_experiment(self) -> dict | None:
        path = self.root / ROUTER_EXPERIMENT
        return json.loads(path.read_text()) if path.exists() else None


def latest(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The last stored row of each config (rows arrive oldest first)."""
    return df.drop_duplicates(subset=keys, keep="last")


def cell(r) -> str:
    return f"{r.content}/{int(r.seq_len)}"
