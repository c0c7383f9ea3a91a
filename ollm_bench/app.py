"""The Hydra task function, at module level so launchers in other processes (joblib, ray,
submitit) can import it by reference."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra

from .config import register_configs
from .errors import BenchError
from .runner import run_job

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
register_configs()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def sweep_app(cfg):
    try:
        return run_job(cfg)
    except BenchError as exc:
        print(f"ollm_bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
