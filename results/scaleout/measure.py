"""1 vs 2 Ray worker nodes on this machine: the same sweep of small tiny-model runs through
hydra/launcher=ray into a fresh store, wall time of the sweep command and rows stored.

    python results/scaleout/measure.py [--repeats 2] [--out results/scaleout/ray_1v2.csv]

Each repeat starts a loopback cluster (head without CPUs + N worker nodes of 1 CPU each, so at
most N runs at once), so cluster start-up is not in the sweep's wall time; the driver's own
start-up and its connection to Ray are.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.conftest import TINY  # noqa: E402  (the tiny random model: each run takes seconds)
from tests.ray_cluster import RAY_ENV, LocalRayCluster  # noqa: E402

GRID = ["optim=baseline,kv_int8", "content=prose,code,repetitive,structured"]  # 8 runs


def sweep(address: str, results: str) -> tuple[float, list[dict]]:
    cmd = [sys.executable, "-m", "ollm_bench", "sweep", *TINY, *GRID, "suite_name=t", f"results_dir={results}",
           "hydra/launcher=ray", f"hydra.launcher.address={address}"]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env={**os.environ, **RAY_ENV}, check=True, capture_output=True)
    wall = time.perf_counter() - start
    with open(Path(results) / "t" / "runs.csv") as f:
        return wall, list(csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "results/scaleout/ray_1v2.csv"))
    args = parser.parse_args()
    out = []
    for repeat in range(args.repeats):
        for workers in (1, 2):  # interleaved, so a change in the machine's load hits both
            load = os.getloadavg()[0]
            with LocalRayCluster(workers=workers, cpus_per_worker=1) as cluster, \
                    tempfile.TemporaryDirectory(prefix="ollm_scaleout_") as results:
                wall, rows = sweep(cluster.address, results)
            out.append({"workers": workers, "repeat": repeat, "grid_runs": 8, "wall_s": round(wall, 1),
                        "rows": len(rows), "ok_rows": sum(r["status"] == "ok" for r in rows),
                        "unique_configs": len({r["config_hash"] for r in rows}),
                        "run_wall_s_mean": round(sum(float(r["wall_s"]) for r in rows) / len(rows), 2),
                        "load_1m_before": round(load, 2)})
            print(out[-1], flush=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
