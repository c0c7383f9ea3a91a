"""The append-only store: round trip, concurrency, and corrupt files reported, never rewritten."""

import multiprocessing as mp

import pytest

from ollm_bench.errors import StoreError
from ollm_bench.run.store import COLUMNS, ResultStore


def row(i, status="ok"):
    return {"run_id": f"r{i}", "config_hash": f"h{i}", "suite": "t", "scenario": "quality", "device": "cpu: test",
            "optim": "baseline", "status": status, "kv_bytes": 100 + i, "prefill_tok_s": 1.5, "doc_nll": [1.0, 2.0],
            "seq_len": 8}


def test_round_trip_and_done_hashes(tmp_path):
    store = ResultStore(tmp_path / "runs.csv")
    store.append(row(1))
    store.append(row(2, status="failed"))
    df = store.read()
    assert list(df.columns) == COLUMNS and len(df) == 2
    assert df.doc_nll[0] == [1.0, 2.0] and df.kv_bytes[0] == 101
    assert store.done_hashes() == {"h1", "h2"}
    assert store.done_hashes(rerun_failed=True) == {"h1"}


def test_refuses_non_finite_and_unknown_columns(tmp_path):
    store = ResultStore(tmp_path / "runs.csv")
    with pytest.raises(StoreError, match="non-finite"):
        store.append(row(1) | {"ppl": float("nan")})
    with pytest.raises(StoreError, match="does not know"):
        store.append(row(1) | {"bogus": 1})
    assert not (tmp_path / "runs.csv").exists() or store.read().empty


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:-7], "truncated"),
    (lambda b: b + b"a,b,c\n", "expected"),
    (lambda b: b.replace(b"run_id", b"runid", 1), "schema"),
])
def test_corrupt_file_is_reported_and_left_untouched(tmp_path, damage, match):
    path = tmp_path / "runs.csv"
    store = ResultStore(path)
    store.append(row(1))
    path.write_bytes(damage(path.read_bytes()))
    before = path.read_bytes()
    with pytest.raises(StoreError, match=match):
        store.read()
    if match == "truncated":
        with pytest.raises(StoreError, match="partial row"):
            store.append(row(2))
    assert path.read_bytes() == before


def _writer(path, start):
    store = ResultStore(path)
    for i in range(start, start + 25):
        store.append(row(i))


def _in_processes(target, argsets):
    procs = [mp.get_context("fork").Process(target=target, args=args) for args in argsets]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


def test_concurrent_appends_lose_nothing(tmp_path):
    path = tmp_path / "runs.csv"
    _in_processes(_writer, [(path, k * 100) for k in range(4)])
    df = ResultStore(path).read()
    assert len(df) == 100 and df.run_id.is_unique


def test_unwritable_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="not writable"):
        ResultStore(blocker / "sub" / "runs.csv").check_writable()


def _racer(path, start, barrier):
    store = ResultStore(path)
    barrier.wait()
    for i in range(20):  # every writer finishes the same 20 configs, at the same moment
        store.append_new(row(i) | {"run_id": f"w{start}-{i}"})


def test_workers_finishing_the_same_config_store_it_once(tmp_path):
    path = tmp_path / "runs.csv"
    barrier = mp.get_context("fork").Barrier(4)
    _in_processes(_racer, [(path, k, barrier) for k in range(4)])
    df = ResultStore(path).read()
    assert len(df) == 20 and df.config_hash.is_unique


def test_append_new_follows_the_rerun_rule(tmp_path):
    store = ResultStore(tmp_path / "runs.csv")
    assert store.append_new(row(1, status="failed"))
    assert not store.append_new(row(1))  # a failed row counts as done unless failed runs are re-run
    assert store.append_new(row(1), rerun_failed=True)
    assert not store.append_new(row(1), rerun_failed=True)
    assert list(store.read().status) == ["failed", "ok"]
