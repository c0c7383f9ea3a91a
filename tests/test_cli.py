"""End-to-end CLI on the tiny model: sweep, skip-if-done, report, failures and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd

from tests.conftest import REPO, TINY


def rows(results, suite="t"):
    # An abbreviated commit can be all digits (4743343), which pandas would read as an integer.
    return pd.read_csv(results / suite / "runs.csv", dtype={"git_commit": str})


def test_sweep_skip_and_report(cli, tmp_path):
    args = ["sweep", *TINY, "optim=baseline,kv_int8", "content=prose,code", f"results_dir={tmp_path}",
            "suite_name=t", "runner.isolation=inline"]
    first = cli(*args, check=0)
    assert "| tiny_random | code | 96 | kv_int8 |" in first.stdout  # the sweep ends by printing its table
    df = rows(tmp_path)
    assert len(df) == 4 and set(df.status) == {"ok"} and df.config_hash.is_unique
    assert (df.git_commit.str.len() >= 7).all() and df.command.str.contains("optim=baseline,kv_int8").all()
    assert set(df.scenario) == {"quality"} and df.doc_hashes.map(json.loads).map(len).eq(3).all()
    int8 = df[df.optim == "kv_int8"]
    assert (int8.kv_ratio < 0.6).all() and (df[df.optim == "baseline"].kv_ratio == 2.0).all()
    again = cli(*args, check=0)
    assert again.stdout.count("skip (done on this machine and code)") == 4 and len(rows(tmp_path)) == 4
    cli("report", "suite=t", f"results_dir={tmp_path}", check=0)
    report = (tmp_path / "t" / "report.md").read_text()
    assert "kv_int8" in report and "Δppl" in report
    assert (tmp_path / "t" / "quality_vs_kv_bytes_96.png").stat().st_size > 1000


def test_crash_and_kill_become_rows_and_sweep_goes_on(cli, tmp_path):
    events = tmp_path / "memory.events"
    events.write_text("oom 0\noom_kill 0\n")
    targets = ("tests.broken_caches.CrashingKV,tests.broken_caches.KilledKV,tests.broken_caches.OomKilledKV,"
               "optim.base.FullPrecisionKV")
    proc = cli("sweep", *TINY, f"optim.method._target_={targets}", f"results_dir={tmp_path}", "suite_name=t",
               env={"OLLM_BENCH_OOM_EVENTS": str(events)}, check=1)
    df = rows(tmp_path)
    assert sorted(df.status) == ["failed", "failed", "ok", "oom"]
    errors = " | ".join(df.error.dropna())
    assert "deliberate crash" in errors
    assert "exit code -9 (killed by SIGKILL)" in errors  # a kill by hand is not called out of memory
    assert "exit code -9 (killed by the kernel's OOM killer)" in df[df.status == "oom"].error.iloc[0]
    assert "3 run(s) did not succeed" in proc.stderr


def test_nan_metric_is_a_failed_row_not_a_number(cli, tmp_path):
    proc = cli("sweep", *TINY, "optim.method._target_=tests.broken_caches.NaNValuesKV", f"results_dir={tmp_path}",
               "suite_name=t", "runner.isolation=inline", check=1)
    df = rows(tmp_path)
    assert list(df.status) == ["failed"] and "non-finite" in df.error[0] and df.ppl.isna().all()
    assert "did not succeed" in proc.stderr


def test_bad_inputs_fail_clearly_and_keep_rows(cli, tmp_path):
    cli("sweep", *TINY, f"results_dir={tmp_path}", "suite_name=t", "runner.isolation=inline", check=0)
    store = tmp_path / "t" / "runs.csv"
    before = store.read_bytes()
    unknown = cli("sweep", *TINY, "optim=nope", f"results_dir={tmp_path}")
    assert unknown.returncode != 0 and "optim/nope" in unknown.stderr
    unknown_content = cli("sweep", *TINY, "content=poetry", f"results_dir={tmp_path}")
    assert unknown_content.returncode != 0 and "content/poetry" in unknown_content.stderr
    too_long = cli("sweep", *TINY, "seq_len=100000", f"results_dir={tmp_path}", "suite_name=t")
    assert too_long.returncode == 2 and "exceeds" in too_long.stderr
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    unwritable = cli("sweep", *TINY, f"results_dir={blocker}", "suite_name=t")
    assert unwritable.returncode == 2 and "not writable" in unwritable.stderr
    missing_model = cli("sweep", *TINY, "model.source=/nonexistent/model", f"results_dir={tmp_path}", "suite_name=t",
                        "runner.isolation=inline", "seq_len=97")
    assert missing_model.returncode == 2 and "/nonexistent/model" in missing_model.stderr
    assert store.read_bytes() == before
    store.write_bytes(before[:-5])  # truncated by a crash or a bad copy
    corrupt = cli("sweep", *TINY, f"results_dir={tmp_path}", "suite_name=t", "seed=3")
    assert corrupt.returncode == 2 and "truncated" in corrupt.stderr
    assert store.read_bytes() == before[:-5]
    bad_report = cli("report", "suite=t", f"results_dir={tmp_path}")
    assert bad_report.returncode == 2 and "truncated" in bad_report.stderr


def test_sequence_longer_than_the_models_context_is_one_clear_error(cli, tmp_path):
    """Checked from the config alone (model.max_seq_len), before any model is loaded or row written."""
    proc = cli("sweep", "model=smollm2_135m", "seq_len=16384", f"results_dir={tmp_path}")
    assert proc.returncode == 2 and not any(tmp_path.iterdir())
    assert proc.stderr.strip().splitlines() == [
        "ollm_bench: error: seq_len=16384 exceeds the context of model 'smollm2_135m' (max_seq_len=8192)"]


def test_help_cfg_and_unknown_command(cli):
    assert "sweep" in cli("--help", check=0).stdout
    assert "seq_len:" in cli("sweep", "--cfg", "job", check=0).stdout
    assert cli("frobnicate").returncode == 2


def test_joblib_launcher(cli, tmp_path):
    cli("sweep", *TINY, "optim=baseline,kv_int8", f"results_dir={tmp_path}", "suite_name=t",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "runner.isolation=inline", check=0)
    assert sorted(rows(tmp_path).optim) == ["baseline", "kv_int8"]


def test_kill_9_mid_sweep_resumes_without_loss_or_duplicates(tmp_path):
    args = [sys.executable, "-m", "ollm_bench", "sweep", *TINY, "optim=baseline,kv_int8",
            "content=prose,code,repetitive", f"results_dir={tmp_path}", "suite_name=t", "runner.isolation=inline"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    store = tmp_path / "t" / "runs.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not (store.exists() and store.read_text().count("\n") >= 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = rows(tmp_path)
    assert 1 <= len(done_before) < 6
    subprocess.run(args, cwd=REPO, env=env, check=True, capture_output=True)
    df = rows(tmp_path)
    assert len(df) == 6 and df.config_hash.is_unique and set(df.status) == {"ok"}
    assert set(done_before.run_id) <= set(df.run_id)


def test_a_cell_measured_for_another_suite_is_reused_not_remeasured(cli, tmp_path):
    args = [*TINY, "optim=baseline", "content=prose", f"results_dir={tmp_path}", "runner.isolation=inline"]
    cli("sweep", *args, "suite_name=a", check=0)
    second = cli("sweep", *args, "suite_name=b", check=0)
    assert "reused tiny_random/baseline/prose" in second.stdout
    a, b = rows(tmp_path, "a"), rows(tmp_path, "b")
    assert a.config_hash.tolist() == b.config_hash.tolist() and a.ppl.tolist() == b.ppl.tolist()
    assert b.suite.tolist() == ["b"] and '"suite": "a"' in b.extra[0]


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper that may never come in a container)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in fh)
    except FileNotFoundError:
        return False


def test_a_run_process_ends_when_its_sweep_is_killed(tmp_path):
    """A sweep killed with SIGKILL cannot stop its run process; the run process must notice and end
    (runner.exit_with_parent) instead of measuring on beside the next sweep."""
    pidfile = tmp_path / "child.pid"
    child = ("import os, sys, time\nfrom ollm_bench.run.runner import exit_with_parent\n"
             "exit_with_parent(os.getppid(), poll_s=0.1)\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(300)")
    parent = (f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {child!r}, {str(pidfile)!r}])\n"
              "time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO)
    deadline = time.time() + 60
    while time.time() < deadline and not (pidfile.exists() and pidfile.read_text()):
        time.sleep(0.1)
    child_pid = int(pidfile.read_text())
    assert _alive(child_pid)
    proc.kill()
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _alive(child_pid):
        time.sleep(0.1)
    assert not _alive(child_pid)
