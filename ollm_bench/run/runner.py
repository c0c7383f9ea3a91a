"""One Hydra job = one benchmark run: skip if done, else measure in a spawned process, append a row.

A spawned process per run (optimum-benchmark's choice) keeps memory numbers clean and turns a
crash, an OOM kill or a timeout into a `failed`/`oom` row while the sweep goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import signal
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import OmegaConf

from ..config import BenchConfig, build_scenario, to_bench
from ..errors import BenchError, ConfigError
from .environment import command_line, git_state, versions
from .carry import failed_at_shorter
from .identity import config_hash, run_identity
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


def exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> threading.Thread:
    """End this process when `parent_pid` is gone (its children are handed to another parent).
    A sweep stopped by SIGTERM or SIGKILL cannot kill its run process itself, and an orphaned
    run would hold the CPU or GPU for the rest of its cell while the next sweep measures."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(3)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def _child(cfg_yaml: str, result_path: str, parent_pid: int | None = None) -> None:
    """Entry of the spawned process: measure, write the result as JSON, exit."""
    if parent_pid is not None:
        exit_with_parent(parent_pid)
    bench = to_bench(OmegaConf.merge(OmegaConf.structured(BenchConfig), OmegaConf.create(cfg_yaml)))
    try:
        t0 = time.perf_counter()
        row = build_scenario(bench).run(bench)
        row["wall_s"] = round(time.perf_counter() - t0, 3)
        payload = {"ok": True, "row": row}
    except BenchError as exc:  # bad input (config, data, model): no row, one clear error
        payload = {"ok": False, "bad_input": True, "error": str(exc)}
    except Exception as exc:  # any failure of the method under test becomes a failed row
        oom = "out of memory" in str(exc).lower() or isinstance(exc, MemoryError)
        payload = {"ok": False, "oom": oom, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=8)}
    Path(result_path).write_text(json.dumps(payload, default=str))


OOM_EVENTS = os.environ.get("OLLM_BENCH_OOM_EVENTS", "/sys/fs/cgroup/memory.events")


def _oom_kills() -> int | None:
    """The cgroup's count of processes the kernel killed for memory (None where not readable)."""
    try:
        with open(OOM_EVENTS) as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("oom_kill "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _measure_isolated(cfg_yaml: str, timeout_s: int) -> dict:
    ctx = mp.get_context("spawn")
    kills_before = _oom_kills()
    with tempfile.TemporaryDirectory(prefix="ollm_bench_") as tmp:
        result_path = os.path.join(tmp, "result.json")
        proc = ctx.Process(target=_child, args=(cfg_yaml, result_path, os.getpid()))
        proc.start()
        proc.join(timeout_s)
        if proc.is_alive():
            proc.kill()
            proc.join()
            return {"ok": False, "error": f"timed out after {timeout_s} s"}
        if os.path.exists(result_path):
            return json.loads(Path(result_path).read_text())
        code = proc.exitcode
        # Out of memory only when the kernel's OOM killer says so (its cgroup counter went up);
        # any other death, SIGKILL by hand included, is a failure.
        kills_after = _oom_kills()
        oom = code == -signal.SIGKILL and None not in (kills_before, kills_after) and kills_after > kills_before
        hint = " (killed by the kernel's OOM killer)" if oom else (
            " (killed by SIGKILL)" if code == -signal.SIGKILL else "")
        return {"ok": False, "oom": oom, "error": f"run process died with exit code {code}{hint}"}


def _measure_inline(cfg_yaml: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="ollm_bench_") as tmp:
        result_path = os.path.join(tmp, "result.json")
        _child(cfg_yaml, result_path)
        return json.loads(Path(result_path).read_text())


def run_job(cfg) -> dict:
    """Hydra task function body. Returns the stored row (or the skipped marker)."""
    bench = to_bench(cfg)
    store = store_for(bench)
    try:
        return _run_job(bench, store)
    finally:
        from .progress import tick

        tick(store.path, os.environ.get(SWEEP_ID_ENV, ""), bench.optim.name)


def _run_job(bench: BenchConfig, store: ResultStore) -> dict:
    store.check_writable()
    identity = run_identity(bench)
    chash = config_hash(identity)
    label = f"{bench.model.name}/{bench.optim.name}/{bench.content.name}/{bench.seq_len}/b{bench.batch_size}/seed{bench.seed}"
    if chash in store.done_hashes(bench.runner.rerun_failed):
        print(f"[ollm_bench] skip (done on this machine and code) {label}", flush=True)
        return {"status": "skipped", "config_hash": chash}
    reused = _reuse_from_sibling_suites(store, chash, bench)
    if reused is not None:
        print(f"[ollm_bench] reused {label} from suite {reused['extra']['reused_from']['suite']} "
              "(same config, machine and code)", flush=True)
        return reused
    cfg_yaml = OmegaConf.to_yaml(OmegaConf.structured(bench))
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    commit, dirty = git_state()  # the checkout the measuring process starts from
    not_carried = failed_at_shorter(store, bench, identity["config"]["optim"].get("method", {}))
    if not_carried:
        result = {"ok": True, "row": {"status": "skipped", "error": not_carried}}
    elif bench.runner.isolation == "process":
        result = _measure_isolated(cfg_yaml, bench.runner.timeout_s)
    else:
        result = _measure_inline(cfg_yaml)
    if result.get("bad_input"):
        raise ConfigError(f"{label}: {result['error']}")
    libs = versions()
    row = {
        "run_id": uuid.uuid4().hex[:12],
        "sweep_id": os.environ.get(SWEEP_ID_ENV, ""),
        "config_hash": chash,
        "suite": bench.suite_name,
        "scenario": bench.scenario_name,
        "model": bench.model.name,
        "optim": bench.optim.name,
        "optim_kind": bench.optim.kind,
        "peer": bench.optim.peer,
        "content": bench.content.name,
        "seq_len": bench.seq_len,
        "seed": bench.seed,
        "batch_size": bench.batch_size,
        "isolation": bench.runner.isolation,
        "device": identity["device_name"],
        "torch_version": libs.get("torch"),
        "transformers_version": libs.get("transformers"),
        "versions": libs,
        "git_commit": commit,
        "git_dirty": dirty,
        "command": command_line(),
        "started_at": started,
        "identity_json": {k: v for k, v in identity.items() if k != "config"},
        "config_json": identity["config"],
    }
    if result["ok"]:
        metrics = result["row"]
        row.update(metrics)
        row["status"] = metrics.get("status", "ok")  # a scenario may say `skipped` (with the reason in `error`)
        if metrics.get("kv_bytes") is not None and metrics.get("kv_bytes_16bit"):
            row["kv_ratio"] = metrics["kv_bytes"] / metrics["kv_bytes_16bit"]
    else:
        row.update(status="oom" if result.get("oom") else "failed", error=result["error"][:500])
    if not store.append_new(row, bench.runner.rerun_failed):  # another worker stored it meanwhile
        print(f"[ollm_bench] skip (stored meanwhile by another worker) {label}", flush=True)
        return {"status": "skipped", "config_hash": chash}
    print(f"[ollm_bench] {row['status']:6s} {label} {_summary(row)}", flush=True)
    return row


def _reuse_from_sibling_suites(store: ResultStore, chash: str, bench: BenchConfig) -> dict | None:
    """The same config measured on this machine with this code for another suite of the same
    results folder (suites share cells: every suite has baseline rows) is the same measurement:
    copy its row into this suite's store, saying where it came from, instead of measuring again."""
    for other in sorted(store.path.parent.parent.glob("*/runs.csv")):
        if other == store.path:
            continue
        try:
            df = ResultStore(other).read()
        except BenchError:
            continue  # another suite's damaged store is that suite's problem
        hits = df[(df.config_hash == chash) & (df.status == "ok")]
        if hits.empty:
            continue
        src = hits.iloc[-1].to_dict()
        row = {k: (None if _missing(v) else v) for k, v in src.items()}
        extra = dict(row.get("extra") or {})
        extra["reused_from"] = {"suite": src["suite"], "run_id": src["run_id"], "sweep_id": src["sweep_id"]}
        row.update(run_id=uuid.uuid4().hex[:12], sweep_id=os.environ.get(SWEEP_ID_ENV, ""), suite=bench.suite_name,
                   extra=extra)
        return row if store.append_new(row, bench.runner.rerun_failed) else {"status": "skipped", "config_hash": chash}
    return None


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _summary(row: dict) -> str:
    if row["status"] != "ok":
        return row.get("error", "")
    parts = []
    if row.get("ppl") is not None:
        parts.append(f"ppl={row['ppl']:.3f}")
    if row.get("kv_ratio") is not None:
        parts.append(f"kv_ratio={row['kv_ratio']:.3f}")
    if row.get("step_ms") is not None:
        parts.append(f"step={row['step_ms']:.3f} ms bw_fraction={row.get('bw_fraction') or float('nan'):.2f}")
    if row.get("metric") is not None:
        parts.append(f"{row['metric']}={row['metric_value']:.4g} {row.get('metric_unit') or ''}")
    return " ".join(parts)


def new_sweep_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


__all__ = ["BenchError", "SWEEP_ID_ENV", "new_sweep_id", "run_job", "store_for", "sweep_store"]
