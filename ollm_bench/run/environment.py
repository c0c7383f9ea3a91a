"""Where and with what a run ran: device, library versions, code version, command line.

Every row carries these (CPU and GPU alike), and the machine-dependent part enters the row's
identity (run/identity.py), so rows from another machine or library version never count as done.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..errors import ConfigError

COMMAND_ENV = "OLLM_BENCH_COMMAND"
REPO = Path(__file__).resolve().parents[2]
# Libraries whose version can change a measured number; recorded in every row.
TRACKED = ("torch", "transformers", "triton", "kvpress", "optimum-quanto", "lm-eval", "numpy")


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} asked for, but CUDA is not available on this machine")
    return torch.device(name)


@lru_cache(maxsize=None)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {_cpu_model()} x{torch.get_num_threads()} threads"


@lru_cache(maxsize=None)
def versions() -> dict:
    out = {}
    for name in TRACKED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    out["python"] = platform.python_version()
    return out


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> tuple[str, bool | None]:
    """(commit, dirty): the checkout's HEAD and whether tracked code differs from it. Rows written
    from a dirty tree say so; the method code that was measured is in the identity regardless.
    Read again for every run (not cached): a long sweep outlives commits made while it runs."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "optim", "ollm_bench", "conf")
    return commit, (None if status is None else bool(status))


def command_line() -> str:
    return os.environ.get(COMMAND_ENV, "")
