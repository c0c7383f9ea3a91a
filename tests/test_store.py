"""The append-only store: round trip, concurrency, and corrupt files reported, never rewritten."""

import multiprocessing as mp

import pytest

from ollm_bench.errors import StoreError
from ollm_bench.store import COLUMNS, ResultStore


def row(i, status="ok"):
    return {"run_id": f"r{i}", "config_hash": f"h{i}", "suite": "t", "optim": "baseline", "status": status,
            "kv_bytes": 100 + i, "prefill_tok_s": 1.5, "doc_nll": [1.0, 2.0], "seq_len": 8}


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


def test_concurrent_appends_lose_nothing(tmp_path):
    path = tmp_path / "runs.csv"
    procs = [mp.get_context("fork").Process(target=_writer, args=(path, k * 100)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    df = ResultStore(path).read()
    assert len(df) == 100 and df.run_id.is_unique


def test_unwritable_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="not writable"):
        ResultStore(blocker / "sub" / "runs.csv").check_writable()
