"""Hydra callback: a progress bar with ETA over the sweep grid, and a summary at the end."""

from __future__ import annotations

import math
import os
from collections import Counter

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

FAILED_RUNS: list[str] = []  # filled at multirun end; the CLI exits non-zero when it is not empty


def grid_size(config: DictConfig) -> int:
    """Jobs the basic sweeper will launch: product of the sweep params, command line included."""
    raw = config.hydra.sweeper.get("params")
    params = dict(OmegaConf.to_container(raw, resolve=False)) if raw else {}
    for override in config.hydra.overrides.task:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    parser = OverridesParser.create()
    sizes = []
    for key, value in params.items():
        parsed = parser.parse_override(f"{key}={value}")
        sizes.append(len(list(parsed.sweep_string_iterator())) if parsed.is_sweep_override() else 1)
    return math.prod(sizes)


class SweepProgress(Callback):
    def __init__(self) -> None:
        self.bar = None
        self.pid = os.getpid()

    def __getstate__(self) -> dict:
        # Launchers ship callbacks to worker processes; a live tqdm bar does not survive pickling.
        return {"bar": None, "pid": self.pid}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from tqdm.auto import tqdm

        try:
            total = grid_size(config)
        except Exception:  # an exotic sweeper syntax: show a bar without a total rather than fail
            total = None
        self.bar = tqdm(total=total, desc=f"sweep {config.get('suite_name', '')}", unit="run", dynamic_ncols=True)

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        # Launchers that run jobs in other processes (joblib, ray) call this there: no bar to move.
        if self.bar is not None and os.getpid() == self.pid:
            self.bar.update(1)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.bar is not None and os.getpid() == self.pid:
            self.bar.close()
        from .runner import SWEEP_ID_ENV, sweep_store

        store = sweep_store(config)
        df = store.read()
        mine = df[df.sweep_id == os.environ.get(SWEEP_ID_ENV, "")]
        counts = Counter(mine.status)
        print(f"[ollm_bench] sweep done: {dict(counts) or 'no new runs (all done before)'} -> {store.path.parent}")
        bad = mine[mine.status != "ok"]
        for _, r in bad.iterrows():
            FAILED_RUNS.append(f"{r.optim}/{r.content}/{r.seq_len}: {r.status}: {r.error}")
