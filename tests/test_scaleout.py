"""Scale-out: a sweep over a Ray cluster on loopback (head + 2 worker nodes) that survives a node
killed mid-sweep and resumes across workers, and the launchers' bad input stopped before any run."""

import importlib.util
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import REPO, TINY
from tests.ray_cluster import RAY_ENV, LocalRayCluster, can_unshare_mounts, free_port

HAS_RAY = importlib.util.find_spec("ray") is not None


def ray_test(fn):
    return pytest.mark.ray(pytest.mark.skipif(not HAS_RAY, reason="ray is not installed")(fn))

GRID = ["optim=baseline,kv_int8", "content=prose,code,repetitive"]  # 6 runs


def sweep_cmd(results, *args):
    return [sys.executable, "-m", "ollm_bench", "sweep", *TINY, "suite_name=t", f"results_dir={results}",
            "runner.isolation=inline", *args]


def run(cmd, env=None, timeout=300):
    full_env = {**os.environ, **RAY_ENV, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_nothing_stored(results):
    store = results / "t" / "runs.csv"
    assert not store.exists() or store.stat().st_size == 0


@pytest.fixture(scope="module")
def cluster():
    with LocalRayCluster(workers=2, cpus_per_worker=1) as c:
        yield c


@ray_test
def test_ray_unreachable_address_is_one_error_before_any_run(tmp_path):
    proc = run(sweep_cmd(tmp_path, "hydra/launcher=ray", f"hydra.launcher.address=127.0.0.1:{free_port()}"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ollm_bench: error:")]
    assert len(errors) == 1 and "unreachable" in errors[0] and "ray start --head" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "t").exists()


def test_slurm_launcher_without_slurm_is_one_error_before_any_run(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run(sweep_cmd(tmp_path / "res", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"),
               env={"PATH": str(empty)})
    assert proc.returncode == 2 and "`sbatch` is not on PATH" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "res").exists()
    # Slurm there but the partition is not: sinfo (a stand-in here) lists what exists.
    for tool, body in {"sbatch": "exit 0", "sinfo": "printf 'cpu*\\ngpu-a100\\n'"}.items():
        (empty / tool).write_text(f"#!/bin/sh\n{body}\n")
        (empty / tool).chmod(0o755)
    proc = run(sweep_cmd(tmp_path / "res", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"),
               env={"PATH": f"{empty}:/usr/bin:/bin"})
    assert proc.returncode == 2 and "partition 'gpu' does not exist" in proc.stderr and "gpu-a100" in proc.stderr
    assert not (tmp_path / "res").exists()


@ray_test
def test_ray_store_a_node_cannot_reach_is_one_error_before_any_run(cluster, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    proc = run(sweep_cmd(blocker, "hydra/launcher=ray", f"hydra.launcher.address={cluster.address}"))
    assert proc.returncode == 2 and "not writable" in proc.stderr, proc.stderr[-3000:]
    if not can_unshare_mounts():
        pytest.skip("no private mount namespaces here for a node that does not share the store")
    shared = tmp_path / "shared"
    shared.mkdir()
    [lonely] = cluster.add_workers(1, private_dir=str(shared))
    try:
        proc = run(sweep_cmd(shared, "hydra/launcher=ray", f"hydra.launcher.address={cluster.address}"))
    finally:
        cluster.kill_worker(lonely)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ollm_bench: error:")]
    assert len(errors) == 1 and "not usable from every Ray node" in errors[0]
    assert proc.stderr.count("does not see") == 1  # the node with its own filesystem, not the two others
    assert_nothing_stored(shared)
    assert not list(shared.glob("t/.preflight-*"))


@ray_test
def test_ray_sweep_survives_a_killed_worker_node_and_resumes(cluster, tmp_path):
    cmd = sweep_cmd(tmp_path, *GRID, "hydra/launcher=ray", f"hydra.launcher.address={cluster.address}")
    env = {**os.environ, **RAY_ENV, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "sweep.log"
    with open(out, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    store = tmp_path / "t" / "runs.csv"
    victim = cluster.worker_sids[0]
    deadline = time.time() + 180
    # Kill worker node 0 (raylet, workers, the run they execute) while it runs a job, once a row is stored.
    while time.time() < deadline and proc.poll() is None:
        if store.exists() and store.read_text().count("\n") >= 2 and cluster.running_task(victim, "_execute"):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep ended before a worker could be killed mid-run"
    rows_before = pd.read_csv(store)
    cluster.kill_worker(0)
    assert proc.wait(timeout=240) == 0, out.read_text()[-4000:]
    df = pd.read_csv(store)
    # One row per config: the killed node's run was re-run by Ray on the node left, none twice.
    assert len(df) == 6 and df.config_hash.is_unique and set(df.status) == {"ok"}
    assert set(rows_before.run_id) <= set(df.run_id) and len(rows_before) < 6
    assert df.sweep_id.nunique() == 1 and df.sweep_id.notna().all()
    assert "sweep done: {'ok': 6}" in out.read_text()
    again = run(cmd)  # resume on the worker left: every config is done, nothing runs or is added
    assert again.returncode == 0 and "no new runs (all done before)" in again.stdout, again.stderr[-3000:]
    assert pd.read_csv(store).run_id.tolist() == df.run_id.tolist()
