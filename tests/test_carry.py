"""runner.only_if_passed_at: a method that fails the gate at the shorter length is not carried to the
longer one (a `skipped` row says why); a method that held there runs, and so does the baseline."""

from ollm_bench.run.store import ResultStore
from tests.conftest import TINY

BASE = [*TINY, "content=prose", "runner.isolation=inline", "suite_name=c"]
BROKEN = "optim.method._target_=tests.broken_caches.ZeroValuesKV"  # zero values: perplexity far worse


def test_failing_method_is_not_carried_and_says_why(cli, tmp_path):
    out = f"results_dir={tmp_path}"
    cli("sweep", *BASE, out, "optim=baseline,kv_mixed", check=0)
    cli("sweep", *BASE, out, "optim=kv_int8", BROKEN, check=0)  # a broken cache under kv_int8's name
    longer = [a for a in BASE if not a.startswith("seq_len=")] + ["seq_len=128", "runner.only_if_passed_at=96"]
    cli("sweep", *longer, out, "optim=baseline,kv_mixed", check=0)
    proc = cli("sweep", *longer, out, "optim=kv_int8", BROKEN, check=None)
    rows = ResultStore(tmp_path / "c" / "runs.csv").read()
    at_128 = rows[rows.seq_len == 128].set_index("optim")
    assert at_128.loc["baseline", "status"] == "ok" and at_128.loc["kv_mixed", "status"] == "ok"
    assert at_128.loc["kv_int8", "status"] == "skipped"
    reason = at_128.loc["kv_int8", "error"]
    assert reason.startswith("not carried to 128: fails the 2% gate at 96 on prose (Δppl +") and "n=3" in reason
    assert "not carried" in proc.stdout
    # Without the option the same cell runs (the skip is not part of the run's identity; rerun_failed re-runs it).
    cli("sweep", *longer[:-1], out, "optim=kv_int8", BROKEN, "runner.rerun_failed=true", check=None)
    rows = ResultStore(tmp_path / "c" / "runs.csv").read()
    assert rows[(rows.seq_len == 128) & (rows.optim == "kv_int8")].status.iloc[-1] == "ok"
