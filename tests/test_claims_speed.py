"""Allocator (C1-C5), decode (C9) and attention (C12, C13) claims from hand-built rows in the real
schema: each rule reaches each verdict from the data, and says "no data" without a number."""

import pytest

from ollm_bench.report.claims import evaluate
from tests.claims_rows import claim, decode_row, metric_row, quality_pair, verdicts, write

GPU = "NVIDIA H100"
# (median, p10, p90) of a lower-is-better metric of the method, against a reference at 0.5 [0.45, 0.55]
REDUCTION = {"reproduced": (0.2, 0.19, 0.21), "not reproduced": (0.45, 0.44, 0.46), "inconclusive": (0.33, 0.25, 0.40)}
MEMORY = {"C1": ("fragmentation", "tensor_pool", "torch_caching"), "C3": ("alloc_time_per_step_us", "tensor_pool", "torch_caching"),
          "C4": ("fragmentation", "tensor_pool", "torch_expandable")}
OUTCOMES = ["reproduced", "not reproduced", "inconclusive"]


def mem(optim, metric, values):
    return metric_row("memory_gpu", "memory", optim, metric, *values, device=GPU)


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("id_", sorted(MEMORY))
def test_reduction_claims(tmp_path, id_, outcome):
    metric, method, against = MEMORY[id_]
    write(tmp_path, [mem(against, metric, (0.5, 0.45, 0.55)), mem(method, metric, REDUCTION[outcome]),
                     mem("predictive_memory", metric, (0.01, 0.01, 0.01))])  # another method's rows are not read
    assert verdicts(tmp_path, claim(id_)) == {GPU: outcome}


# latency per mix of the method (median, p10, p90), against the reference's 10 us [9.5, 10.5] on both mixes
MIXES = {"reproduced": [(7, 6.8, 7.2), (7, 6.8, 7.2)],
         "not reproduced": [(7, 6.8, 7.2), (12, 11.8, 12.2)],  # one mix slower: allocation is not faster in general
         "inconclusive": [(7, 6.8, 7.2), (8.3, 7.5, 9.0)]}


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("id_,method", [("C2", "tensor_pool"), ("C5", "predictive_memory")])
def test_alloc_speedup_worst_mix_decides(tmp_path, id_, method, outcome):
    rows = []
    for mix, values in zip(("kv_blocks", "mixed"), MIXES[outcome]):
        rows += [mem("torch_caching", f"alloc_us/{mix}", (10, 9.5, 10.5)), mem(method, f"alloc_us/{mix}", values)]
    write(tmp_path, rows)
    table = evaluate([claim(id_)], tmp_path)
    assert list(table.verdict) == [outcome] and "kv_blocks" in table.evidence[0]


def decode_cells(mixed_ms, spread=0.2, kernel="torch"):
    rows = []
    for (ctx, batch), ms in zip([(8192, 1), (32768, 1)], mixed_ms):
        rows += [decode_row("baseline", ctx, batch, 10.0, 0.2), decode_row("kv_mixed", ctx, batch, ms, spread, kernel)]
        rows += [decode_row("baseline", ctx, batch, 10.0, mode="eager"), decode_row("kv_mixed", ctx, batch, 1.0, mode="eager")]
    return rows


@pytest.mark.parametrize("rows,expected", [
    (decode_cells([8.0, 8.0]), "reproduced"),
    (decode_cells([8.0, 11.0]), "not reproduced"),  # slower at 32k; the fast eager rows are never read
    (decode_cells([8.7, 8.7], spread=0.5), "inconclusive"),
    (decode_cells([11.0, 11.0]) + [decode_row("kv_mixed", c, 1, 8.0, 0.2, "triton") for c in (8192, 32768)],
     "reproduced"),  # the triton kernel's rows are preferred over the slower torch ones
])
def test_c9_decode_speedup(tmp_path, rows, expected):
    write(tmp_path, rows)
    table = evaluate([claim("C9")], tmp_path)
    assert list(table.verdict) == [expected] and list(table.scope) == ["llama31_8b_noweights"]
    assert ("(triton)" in table.evidence[0]) == any(r.get("kernel") == "triton" for r in rows)


def test_c9_reads_the_fused_graph_step_where_it_was_measured(tmp_path):
    """Rows of a graph step captured with fused pointwise kernels form their own mode: C9 reads them
    when the method has any, never pairing them with an unfused baseline."""
    fused = {"extra": {"fused_pointwise": ["LlamaRMSNorm"]}}
    rows = decode_cells([8.0, 8.0])  # plain graph rows: +25 %
    rows += [r for c in (8192, 32768) for r in (decode_row("baseline", c, 1, 6.0, 0.1, **fused),
                                                 decode_row("kv_mixed", c, 1, 7.0, 0.1, "triton", **fused))]
    write(tmp_path, rows)
    table = evaluate([claim("C9")], tmp_path)
    assert list(table.verdict) == ["not reproduced"] and "graph+fused mode" in table.evidence[0]


M, M2 = "gemma3_270m", "smollm2_135m"
CELLS = [("code", 2048), ("prose", 2048)]
TIMES = {"attn_full": (10, 9.8, 10.2), "attn_sliding": (5, 4.9, 5.1), "attn_sparse": (7, 6.9, 7.1),
         "attn_multiscale": (9.5, 9.4, 9.6)}


def attention_rows(gates: dict, model=M, times=TIMES):
    """`gates`: mechanism -> gate per CELLS entry; GPU timings at 32k for every timed mechanism."""
    rows = [metric_row("attention_gpu", "attention", o, "kernel_prefill_ms", *t, seq_len=32768, device=GPU,
                       model="llama31_8b_noweights") for o, t in times.items()]
    for optim, per_cell in gates.items():
        for (content, seq_len), gate in zip(CELLS, per_cell):
            rows += quality_pair(model, optim, content, seq_len, gate, ratio=1.0, suite="attention")
    return rows


@pytest.mark.parametrize("gates,expected,value", [
    ({"attn_sliding": ["pass", "pass"], "attn_sparse": ["pass", "pass"]}, "reproduced", 1.0),  # fastest allowed
    ({"attn_sliding": ["pass", "fail"], "attn_sparse": ["fail", "pass"]}, "not reproduced", None),  # none allowed
    ({"attn_sliding": ["fail", "pass"], "attn_sparse": ["fail", "fail"], "attn_multiscale": ["pass", "pass"]},
     "not reproduced", 10 / 9.5 - 1),
    # attn_sparse is timed (+43 %) but has no quality rows: it might be allowed, so no verdict yet.
    ({"attn_sliding": ["fail", "pass"], "attn_multiscale": ["pass", "pass"]}, "inconclusive", 10 / 9.5 - 1),
    ({"attn_sliding": ["pass", "inconclusive"], "attn_sparse": ["fail", "pass"]}, "inconclusive", None),
])
def test_c12_fastest_mechanism_that_keeps_quality(tmp_path, gates, expected, value):
    write(tmp_path, attention_rows(gates))
    table = evaluate([claim("C12")], tmp_path)
    assert list(table.verdict) == [expected]
    assert table.value[0] == pytest.approx(value) if value is not None else table.value.isna().all()


@pytest.mark.parametrize("gates,expected", [
    ({"attn_sliding": ["pass", "fail"], "attn_sparse": ["fail", "pass"]}, "reproduced"),  # each content has one
    ({"attn_sliding": ["pass", "fail"], "attn_sparse": ["pass", "fail"]}, "not reproduced"),  # prose has none
    ({"attn_sliding": ["pass", "inconclusive"], "attn_sparse": ["pass", "fail"]}, "inconclusive"),
])
def test_c13_per_content(tmp_path, gates, expected):
    write(tmp_path, attention_rows(gates))
    assert verdicts(tmp_path, claim("C13")) == {M: expected}


def test_attention_claims_per_model(tmp_path):
    fails = {m: ["fail", "pass"] for m in ("attn_sliding", "attn_sparse", "attn_multiscale")}
    write(tmp_path, attention_rows({"attn_sliding": ["pass", "pass"]}) + attention_rows(fails, model=M2, times={}))
    assert verdicts(tmp_path, claim("C12")) == {M: "reproduced", M2: "not reproduced"}


def test_a_mechanism_measured_on_some_cells_only_is_not_yet_allowed(tmp_path):
    """attn_sliding passes code but was never run on prose: it is not a pass on every cell, so the
    claim waits (inconclusive) instead of crediting its speed."""
    rows = attention_rows({"attn_sliding": ["pass", "pass"]}, times={})
    rows += [r for r in attention_rows({"attn_sliding": ["pass", "pass"]}, model=M2) if r.get("content") != "prose"]
    rows += attention_rows({"attn_multiscale": ["pass", "pass"], "attn_sparse": ["fail", "fail"]}, model=M2, times={})
    write(tmp_path, rows)
    got = evaluate([claim("C12")], tmp_path)
    assert verdicts(tmp_path, claim("C12"))[M2] == "inconclusive"
    assert "attn_sliding undecided" in got[got.scope == M2].evidence.iloc[0]


@pytest.mark.parametrize("id_", ["C1", "C2", "C3", "C4", "C5", "C9", "C12", "C13"])
def test_no_rows_no_number(tmp_path, id_):
    write(tmp_path, [mem("torch_caching", "fragmentation", (0.5, 0.45, 0.55)), decode_row("baseline", 8192, 1, 10.0)])
    table = evaluate([claim(id_)], tmp_path)
    assert list(table.verdict) == ["no data"] and table.value.isna().all()


def test_a_row_run_with_an_override_is_labelled_and_not_the_configured_method(tmp_path):
    """kv_mixed measured with residual=128 (not its YAML's 0) is shown as `kv_mixed(residual=128)` and
    never decides C9, which is about the method as configured."""
    from ollm_bench.report.readme_tables import kv_gpu_table

    override = {"config_json": {"optim": {"method": {"_target_": "optim.kv_mixed.MixedPrecisionKV", "residual": 128}}}}
    rows = decode_cells([11.0, 11.0]) + [decode_row("kv_mixed", c, 1, 8.0, 0.2, "triton", **override)
                                         for c in (8192, 32768)]
    write(tmp_path, rows)
    assert list(evaluate([claim("C9")], tmp_path).verdict) == ["not reproduced"]
    table = kv_gpu_table(tmp_path)
    assert "| kv_mixed(residual=128) | triton |" in table and "| kv_mixed | torch |" in table
