"""Checks before any run of a sweep starts (the first Hydra callback in conf/config.yaml).

- The results store can be appended to and read (a corrupt file stops the sweep here).
- hydra/launcher=ray: the cluster answers, some node can host one run, and every such node sees
  the store's directory as this machine does (a marker file written here) and can append to the
  store: results_dir must be on a filesystem all nodes mount at the same path.
- hydra/launcher=submitit_slurm: `sbatch` is on PATH and the partition exists.

Any problem is one `ollm_bench: error:` line and exit 2, before a job is launched or a row written.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..errors import BenchError, ConfigError, StoreError
from .runner import sweep_store
from .store import ResultStore

RAY_TARGET = "hydra_plugins.ollm_ray_launcher.ray_launcher.RayLauncher"
SLURM_TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


class Preflight(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check(config)
        except BenchError as exc:
            print(f"ollm_bench: error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)


def check(config: DictConfig) -> None:
    launcher = config.hydra.launcher
    target = launcher.get("_target_")
    if target == SLURM_TARGET:
        check_slurm(launcher)
    elif target == RAY_TARGET:
        _ray_call(lambda rl: rl.connect(launcher))  # an unreachable cluster: nothing created yet
    store = sweep_store(config)
    store.check_writable()
    store.read()
    if target == RAY_TARGET:
        check_ray_store(launcher, store)


def check_slurm(launcher: DictConfig) -> None:
    if shutil.which("sbatch") is None:
        raise ConfigError("hydra/launcher=submitit_slurm needs Slurm, but `sbatch` is not on PATH on this machine; "
                          "run the sweep on the cluster's login node, or use hydra/launcher=joblib or ray")
    partition = launcher.get("partition")
    if not partition or shutil.which("sinfo") is None:
        return
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"Slurm does not answer: `sinfo` failed ({exc})") from None
    if out.returncode != 0:
        raise ConfigError(f"Slurm does not answer: `sinfo` exited {out.returncode}: {out.stderr.strip()[:300]}")
    names = {name.rstrip("*") for name in out.stdout.split()}
    if partition not in names:
        raise ConfigError(f"Slurm partition {partition!r} does not exist (sinfo lists {', '.join(sorted(names))}); "
                          "set hydra.launcher.partition")


def _ray_call(fn):
    from hydra_plugins.ollm_ray_launcher import ray_launcher

    try:
        return fn(ray_launcher)
    except ray_launcher.RayLauncherError as exc:
        raise ConfigError(str(exc)) from None


def check_ray_store(launcher: DictConfig, store: ResultStore) -> None:
    token = uuid.uuid4().hex
    marker = store.path.parent / f".preflight-{token[:12]}"
    marker.write_text(token)
    try:
        answers = _ray_call(lambda rl: rl.run_on_hosts(launcher, store_probe, str(store.path), marker.name, token))
    finally:
        marker.unlink(missing_ok=True)
    bad = [f"node {node}: {problem}" for node, problem in answers.items() if problem]
    if bad:
        raise StoreError(f"the results store {store.path} is not usable from every Ray node that can host a run:\n  "
                         + "\n  ".join(bad))


def store_probe(store_path: str, marker_name: str, token: str) -> Optional[str]:
    """Runs on a Ray node: None if this node writes to the same store as the driver."""
    path = Path(store_path)
    try:
        seen = (path.parent / marker_name).read_text()
    except OSError:
        seen = None
    if seen != token:
        return (f"does not see {path.parent} as the driver does; put results_dir on a filesystem every node "
                "mounts at the same path")
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        return f"cannot append to {path}: {exc.strerror}"
    return None
