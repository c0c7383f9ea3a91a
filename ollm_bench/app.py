"""The Hydra task function, at module level so launchers in other processes (joblib, ray,
submitit) can import it by reference."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import hydra

from .config import register_configs
from .errors import BenchError
from .run.runner import run_job

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
register_configs()
# conf/hydra/launcher/{joblib,submitit_slurm}.yaml set our defaults on the launcher plugins' schemas
# of the same name; Hydra 1.3 merges the two, as intended, but warns that such matching is deprecated.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def sweep_app(cfg):
    try:
        return run_job(cfg)
    except BenchError as exc:
        print(f"ollm_bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
