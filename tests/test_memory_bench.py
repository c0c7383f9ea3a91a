"""The GPU memory benchmark's --smoke run: every part runs (CUDA-only ones skipped), rows are sane,
a failing part becomes a row, and the entry point imports no hydra."""

import csv
import subprocess
import sys

import pytest
import torch

from ollm_bench.gpu import alloc_workloads, memory_bench


@pytest.fixture(scope="module")
def smoke_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory_bench")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny sizes: threads only add contention on a shared CPU
    try:
        assert memory_bench.main(["--smoke", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    with open(out / "memory_gpu.csv") as f:
        return list(csv.DictReader(f))


def test_smoke_runs_every_part_without_failures(smoke_rows):
    assert {r["part"] for r in smoke_rows} == set(memory_bench.PARTS)
    assert not [r for r in smoke_rows if r["status"] == "failed"], [r["error"] for r in smoke_rows if r["error"]]
    for row in smoke_rows:
        assert row["device"] and row["torch"] == torch.__version__


def test_smoke_rows_carry_real_measurements(smoke_rows):
    alloc = [r for r in smoke_rows if r["part"] == "alloc"]
    assert {r["method"] for r in alloc} == {"torch", "pool", "predictive"}
    for r in alloc:
        assert int(r["n"]) >= 3 and float(r["p10"]) > 0  # a measured latency (p10 <= median <= p90 by construction)
    decode = {(r["case"], r["method"]): r for r in smoke_rows if r["part"] == "decode"}
    for (case, method), r in decode.items():
        expected = "skipped" if method in ("arena_graph", "static_compile") else "ok"  # no CUDA here
        assert r["status"] == expected, (case, method, r["error"])
        if expected == "ok":
            assert int(r["n"]) >= 5 and float(r["median"]) > 0 and int(r["kv_bytes"]) > 0
    assert all(r["status"] == "skipped" for r in smoke_rows if r["part"] == "frag")


def test_a_failing_part_is_a_row_and_the_rest_runs(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("allocator exploded")

    monkeypatch.setattr(alloc_workloads, "alloc_latency", broken)
    memory_bench.main(["--smoke", "--parts", "alloc,c3", "--out", str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "memory_gpu.csv")))
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["part"] == "alloc" and "allocator exploded" in failed[0]["error"]
    assert any(r["part"] == "c3" and r["status"] == "ok" for r in rows)


def test_unknown_part_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown parts"):
        memory_bench.main(["--smoke", "--parts", "alloc,nope", "--out", str(tmp_path)])


def test_entry_point_imports_no_hydra():
    code = ("import sys, ollm_bench.gpu.memory_bench; "
            "bad = [m for m in ('hydra', 'omegaconf', 'pandas') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
