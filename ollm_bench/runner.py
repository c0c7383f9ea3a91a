"""One Hydra job = one benchmark run: skip if done, else measure in a spawned process, append a row.

A spawned process per run (optimum-benchmark's choice) keeps memory numbers clean and turns a
crash, an OOM kill or a timeout into a `failed`/`oom` row while the sweep goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import subprocess
import tempfile
import traceback
import uuid
from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import OmegaConf

from .config import BenchConfig, to_bench
from .errors import BenchError, ConfigError
from .store import ResultStore

SWEEP_ID_ENV = "OLLM_BENCH_SWEEP_ID"


def store_for(bench: BenchConfig) -> ResultStore:
    return ResultStore(Path(to_absolute_path(bench.results_dir)) / bench.suite_name / "runs.csv")


def sweep_store(config) -> ResultStore:
    """The store of a composed sweep config, in the launching process (relative to its cwd)."""
    path = Path(config.results_dir)
    if not path.is_absolute():
        path = Path(config.hydra.runtime.cwd) / path
    return ResultStore(path / config.suite_name / "runs.csv")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict:
    from importlib.metadata import version

    return {"torch_version": version("torch"), "transformers_version": version("transformers")}


def _child(cfg_yaml: str, result_path: str) -> None:
    """Entry of the spawned process: measure, write the result as JSON, exit."""
    from .measure import timed_run

    bench = to_bench(OmegaConf.merge(OmegaConf.structured(BenchConfig), OmegaConf.create(cfg_yaml)))
    try:
        payload = {"ok": True, "row": timed_run(bench)}
    except BenchError as exc:  # bad input (config, data, model): no row, one clear error
        payload = {"ok": False, "bad_input": True, "error": str(exc)}
    except Exception as exc:  # any failure of the method under test becomes a failed row
        oom = "out of memory" in str(exc).lower() or isinstance(exc, MemoryError)
        payload = {"ok": False, "oom": oom, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=8)}
    Path(result_path).write_text(json.dumps(payload, default=str))


def _measure_isolated(cfg_yaml: str, timeout_s: int) -> dict:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="ollm_bench_") as tmp:
        result_path = os.path.join(tmp, "result.json")
        proc = ctx.Process(target=_child, args=(cfg_yaml, result_path))
        proc.start()
        proc.join(timeout_s)
        if proc.is_alive():
            proc.kill()
            proc.join()
            return {"ok": False, "error": f"timed out after {timeout_s} s"}
        if os.path.exists(result_path):
            return json.loads(Path(result_path).read_text())
        code = proc.exitcode
        hint = " (killed: out of memory?)" if code == -9 else ""
        return {"ok": False, "oom": code == -9, "error": f"run process died with exit code {code}{hint}"}


def _measure_inline(cfg_yaml: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="ollm_bench_") as tmp:
        result_path = os.path.join(tmp, "result.json")
        _child(cfg_yaml, result_path)
        return json.loads(Path(result_path).read_text())


def run_job(cfg) -> dict:
    """Hydra task function body. Returns the stored row (or the skipped marker)."""
    bench = to_bench(cfg)
    store = store_for(bench)
    store.check_writable()
    config_hash = bench.config_hash()
    label = f"{bench.model.name}/{bench.optim.name}/{bench.content.name}/{bench.seq_len}/seed{bench.seed}"
    if config_hash in store.done_hashes(bench.runner.rerun_failed):
        print(f"[ollm_bench] skip (done) {label}", flush=True)
        return {"status": "skipped", "config_hash": config_hash}
    cfg_yaml = OmegaConf.to_yaml(OmegaConf.structured(bench))
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if bench.runner.isolation == "process":
        result = _measure_isolated(cfg_yaml, bench.runner.timeout_s)
    else:
        result = _measure_inline(cfg_yaml)
    if result.get("bad_input"):
        raise ConfigError(f"{label}: {result['error']}")
    row = {
        "run_id": uuid.uuid4().hex[:12],
        "sweep_id": os.environ.get(SWEEP_ID_ENV, ""),
        "config_hash": config_hash,
        "suite": bench.suite_name,
        "model": bench.model.name,
        "optim": bench.optim.name,
        "optim_kind": bench.optim.kind,
        "peer": bench.optim.peer,
        "content": bench.content.name,
        "seq_len": bench.seq_len,
        "seed": bench.seed,
        "batch_size": bench.batch_size,
        "isolation": bench.runner.isolation,
        "git_commit": git_commit(),
        "started_at": started,
        "config_json": bench.run_fields(),
        **_versions(),
    }
    if result["ok"]:
        metrics = result["row"]
        row.update(metrics, status="ok")
        row["kv_ratio"] = metrics["kv_bytes"] / metrics["kv_bytes_16bit"]
    else:
        row.update(status="oom" if result.get("oom") else "failed", error=result["error"][:500])
    if not store.append_new(row, bench.runner.rerun_failed):  # another worker stored it meanwhile
        print(f"[ollm_bench] skip (stored meanwhile by another worker) {label}", flush=True)
        return {"status": "skipped", "config_hash": config_hash}
    msg = f"ppl={row['ppl']:.3f} kv_ratio={row['kv_ratio']:.3f}" if row.get("ppl") else row.get("error", "")
    print(f"[ollm_bench] {row['status']:6s} {label} {msg}", flush=True)
    return row


def new_sweep_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


__all__ = ["BenchError", "SWEEP_ID_ENV", "new_sweep_id", "run_job", "store_for", "sweep_store"]
