"""Hydra callback: a progress bar with ETA over the sweep grid, and a summary at the end.

Jobs may run in other processes or on other machines (joblib, Ray, Slurm), where the bar does not
live; so every finished job, stored or skipped, appends one line to a small ticker file beside the
store (`.progress-<sweep id>`, on the filesystem the workers share), and a thread of the launching
process moves the bar by the ticker's line count.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

FAILED_RUNS: list[str] = []  # filled at multirun end; the CLI exits non-zero when it is not empty
LAST_SWEEP: dict = {}  # suite folder and this machine's device names, for the table the CLI prints


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


def ticker_path(store_path: Path, sweep_id: str) -> Path:
    return Path(store_path).parent / f".progress-{sweep_id or 'nosweep'}"


def tick(store_path: Path, sweep_id: str, label: str) -> None:
    """Called by a finished job (in whatever process runs it): one line per job."""
    try:
        with open(ticker_path(store_path, sweep_id), "a") as fh:
            fh.write(label + "\n")
    except OSError:
        pass  # progress is a convenience: a read-only store location must not sink the run


class SweepProgress(Callback):
    def __init__(self) -> None:
        self.bar = None
        self.pid = os.getpid()
        self._stop = None
        self._ticker = None

    def __getstate__(self) -> dict:
        # Launchers ship callbacks to worker processes; a live bar and thread do not survive pickling.
        return {"bar": None, "pid": self.pid, "_stop": None, "_ticker": None}

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self._sync()

    def _sync(self) -> None:
        try:
            done = sum(1 for _ in open(self._ticker))
        except OSError:
            return
        if self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from tqdm.auto import tqdm

        try:
            total = grid_size(config)
        except Exception:  # an exotic sweeper syntax: show a bar without a total rather than fail
            total = None
        self.bar = tqdm(total=total, desc=f"sweep {config.get('suite_name', '')}", unit="run", dynamic_ncols=True)
        from .runner import SWEEP_ID_ENV, sweep_store

        self._ticker = ticker_path(sweep_store(config).path, os.environ.get(SWEEP_ID_ENV, ""))
        self._ticker.unlink(missing_ok=True)
        self._stop = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.bar is not None and os.getpid() == self.pid:
            self._stop.set()
            self._sync()
            self.bar.close()
            self._ticker.unlink(missing_ok=True)
        from .runner import SWEEP_ID_ENV, sweep_store

        store = sweep_store(config)
        df = store.read()
        mine = df[df.sweep_id == os.environ.get(SWEEP_ID_ENV, "")]
        counts = Counter(mine.status)
        print(f"[ollm_bench] sweep done: {dict(counts) or 'no new runs (all done before)'} -> {store.path.parent}")
        from .environment import device_name, resolve_device

        try:
            here = {device_name(resolve_device(str(config.device)))}
        except Exception:  # a GPU suite on a CPU machine has no device here; its rows say where they ran
            here = set()
        LAST_SWEEP.update(suite_dir=store.path.parent, devices=set(mine.device.dropna()) | here)
        bad = mine[mine.status != "ok"]
        for _, r in bad.iterrows():
            FAILED_RUNS.append(f"{r.optim}/{r.content}/{r.seq_len}: {r.status}: {r.error}")
