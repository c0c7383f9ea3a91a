"""The regression gate: identical reruns pass, injected regressions fail, bad references are errors."""

import shutil

import pandas as pd
import pytest

from tests.conftest import TINY

GRID = [*TINY, "optim=baseline,kv_int8", "content=prose", "runner.isolation=inline", "suite_name=g"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from tests.conftest import run_cli

    ref = tmp_path_factory.mktemp("reference")
    run_cli("sweep", *GRID, f"results_dir={ref}", check=0)
    return ref


def gate(cli, reference, *extra, check=None):
    return cli("gate", f"--reference={reference}", *GRID, *extra, check=check)


def test_identical_reruns_pass(cli, reference):
    for _ in range(2):
        assert "gate passed: 2 runs" in gate(cli, reference, check=0).stdout


def test_broken_optimization_fails_the_gate(cli, reference):
    proc = gate(cli, reference, "optim.method._target_=tests.broken_caches.ZeroValuesKV", check=1)
    assert "perplexity" in proc.stderr and "baseline" in proc.stderr


def test_larger_cache_fails_the_gate(cli, reference):
    # kv_int8's name, a full-precision cache behind it: same config key, 4x the bytes.
    proc = cli("gate", f"--reference={reference}", *[a for a in GRID if not a.startswith("optim=")],
               "optim=kv_int8", "optim.method._target_=optim.base.FullPrecisionKV", check=1)
    assert "KV bytes" in proc.stderr and "missing" in proc.stderr  # the baseline row was not run either


def test_bad_references(cli, reference, tmp_path):
    assert "no reference rows" in cli("gate", f"reference={tmp_path}").stderr
    other = tmp_path / "other"
    shutil.copytree(reference, other)
    csv = other / "g" / "runs.csv"
    csv.write_text(csv.read_text().replace("tiny_random", "other_model"))
    proc = gate(cli, other, "run=false", f"results_dir={reference}")
    assert proc.returncode == 2 and "another model" in proc.stderr
    no_base = tmp_path / "nobase"
    (no_base / "g").mkdir(parents=True)
    lines = (reference / "g" / "runs.csv").read_text().splitlines(keepends=True)
    (no_base / "g" / "runs.csv").write_text("".join([lines[0]] + [l for l in lines[1:] if ",baseline," not in l]))
    proc = gate(cli, no_base, "run=false", f"results_dir={reference}")
    assert proc.returncode == 2 and "no baseline rows" in proc.stderr


def test_a_leak_of_future_tokens_is_flagged(cli, reference):
    proc = gate(cli, reference, "optim.method._target_=tests.broken_caches.LeakyAttention", check=1)
    assert "perplexity" in proc.stderr and "baseline" in proc.stderr


def test_lower_perplexity_is_a_regression_too(reference):
    """A change that lowers perplexity beyond noise (what a leak into a real model's cache does:
    the answer is already there) fails the gate as surely as a rise: the gate is two-sided."""
    import pandas as pd

    from ollm_bench.report.gate import compare
    from ollm_bench.run.store import ResultStore

    ref = ResultStore(reference / "g" / "runs.csv").read()
    better = ref.copy()
    better["doc_nll"] = better.doc_nll.map(lambda nll: [x * 0.95 for x in nll])
    result = compare(better, ref)
    assert not result.passed and all("better" in r for r in result.regressions)
    same = compare(pd.concat([ref]), ref)
    assert same.passed and same.checked == 2


def test_another_cpu_model_is_compared_by_interval_only(reference):
    """Across CPU models a lossy cache rounds differently (per document up to ~1 %), so a row whose
    CPU model the reference lacks skips the per-document rule; a leak-sized change still fails,
    and with its own CPU model in the reference the strict rules apply again."""
    import math

    from ollm_bench.report.gate import compare
    from ollm_bench.run.store import ResultStore

    ref = ResultStore(reference / "g" / "runs.csv").read()
    assert ref.device.str.startswith("cpu").all()
    n_tok = ref.scored_tokens.iloc[0]

    def moved(df, device, factors):  # per-document perplexity multiplied by `factors`
        out = df.copy()
        out["device"] = device
        out["doc_nll"] = [[x + n_tok * math.log(f) for x, f in zip(nll, factors)] for nll in out.doc_nll]
        return out

    n = len(ref.doc_nll.iloc[0])
    wobble = [1.03] + [1.0] * (n - 1)  # one document +3 %: a per-document move, not a mean shift
    other = moved(ref, "cpu: Other CPU x2 threads", wobble)
    assert not compare(moved(ref, ref.device.iloc[0], wobble), ref).passed  # same CPU model: flagged
    result = compare(other, ref)
    assert result.passed and len(result.cross_device) == 2
    leak = compare(moved(ref, "cpu: Other CPU x2 threads", [0.9] * n), ref)
    assert not leak.passed and all("better" in r for r in leak.regressions)
    both = pd.concat([ref, other])  # the reference now holds the other CPU model's rows too
    strict = compare(other, both)
    assert strict.passed and not strict.cross_device
    assert not compare(moved(other, other.device.iloc[0], wobble), both).passed
