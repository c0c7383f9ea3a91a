"""KV claims (C6, C7, C8, C10, C11, C14, C15) from hand-built rows in the real schema: each rule
reaches each verdict, says "no data" without a number when rows are missing, and judges each
model on its own rows."""

import pytest

from ollm_bench.report.claims import evaluate
from tests.claims_rows import claim, decode_row, quality_pair, verdicts, write

M, M2 = "gemma3_270m", "smollm2_135m"
GRID = [("code", 2048), ("prose", 2048), ("code", 8192), ("prose", 8192)]


def cells(optim, gates, ratio=0.4, model=M, grid=GRID, **fields):
    """Quality rows of `optim` on every grid cell; `gates` gives each cell's gate (default pass)."""
    rows = []
    for (content, seq_len), gate in zip(grid, gates):
        rows += quality_pair(model, optim, content, seq_len, gate, ratio, **fields)
    return rows


ALL_PASS = ["pass"] * 4


@pytest.mark.parametrize("gates,ratio,expected", [
    (ALL_PASS, 0.4, "reproduced"),  # 2.5x everywhere, quality held everywhere
    (["pass", "pass", "fail", "pass"], 0.4, "not reproduced"),  # one cell loses > 2 %
    (ALL_PASS, 0.6, "not reproduced"),  # quality held, but 1.67x < 2x
    (["pass", "inconclusive", "pass", "pass"], 0.4, "inconclusive"),
])
def test_c6_reduction_within_gate(tmp_path, gates, ratio, expected):
    write(tmp_path, cells("kv_mixed", gates, ratio))
    assert verdicts(tmp_path, claim("C6")) == {M: expected}


def test_c6_judges_each_model_and_names_failing_cells(tmp_path):
    write(tmp_path, cells("kv_mixed", ALL_PASS) + cells("kv_mixed", ["pass", "fail", "pass", "pass"], model=M2))
    table = evaluate([claim("C6")], tmp_path).set_index("scope")
    assert table.verdict.to_dict() == {M: "reproduced", M2: "not reproduced"}
    assert table.loc[M, "value"] == pytest.approx(2.5)
    assert "fail: prose/2048" in table.loc[M2, "evidence"]


@pytest.mark.parametrize("gates,expected", [
    (ALL_PASS, "reproduced"),
    (["pass", "fail", "inconclusive", "pass"], "not reproduced"),
    (["pass", "inconclusive", "pass", "pass"], "inconclusive"),
])
def test_c14_gate_everywhere(tmp_path, gates, expected):
    write(tmp_path, cells("kv_adaptive", gates))
    table = evaluate([claim("C14")], tmp_path)
    assert list(table.verdict) == [expected]
    assert table.value[0] == pytest.approx(gates.count("pass") / 4)
    assert "worst upper bound" in table.evidence[0]


@pytest.mark.parametrize("adaptive_ratio,gates,expected", [
    (0.32, ALL_PASS, "reproduced"),  # 20 % fewer bytes than kv_mixed's 0.4
    (0.38, ALL_PASS, "not reproduced"),  # 5 %
    (0.32, ["pass", "fail", "pass", "pass"], "not reproduced"),  # bytes saved by losing quality do not count
    (0.32, ["pass", "inconclusive", "pass", "pass"], "inconclusive"),
])
def test_c8_saving_vs_mixed(tmp_path, adaptive_ratio, gates, expected):
    write(tmp_path, cells("kv_mixed", ALL_PASS) + cells("kv_adaptive", gates, adaptive_ratio))
    assert verdicts(tmp_path, claim("C8")) == {M: expected}


@pytest.mark.parametrize("rep_ratio,rep_gate,expected", [
    (0.3, "pass", "reproduced"),  # other contents 0.4: +33 %
    (0.38, "pass", "not reproduced"),  # +5 %
    (0.3, "fail", "not reproduced"),
    (0.3, "inconclusive", "inconclusive"),
])
def test_c10_repetitive_advantage(tmp_path, rep_ratio, rep_gate, expected):
    rows = cells("kv_pattern", ALL_PASS, 0.4)
    for seq_len in (2048, 8192):
        rows += quality_pair(M, "kv_pattern", "repetitive", seq_len, rep_gate, rep_ratio)
    write(tmp_path, rows)
    assert verdicts(tmp_path, claim("C10")) == {M: expected}


CONFORMS = {"tensors": {"v_store.codes": {"dtype": "float8_e4m3fn", "bytes": 8}}, "payload_bits": {"key": [4], "value": [8]}}


@pytest.mark.parametrize("storage,expected", [
    (CONFORMS, "reproduced"),
    ({**CONFORMS, "payload_bits": {"key": [4], "value": [4]}}, "not reproduced"),
    ({**CONFORMS, "tensors": {"v_store.codes": {"dtype": "uint8", "bytes": 8}}}, "not reproduced"),
    (None, "inconclusive"),  # a row stored without its storage report
])
def test_c7_storage_bits_from_rows(tmp_path, storage, expected):
    write(tmp_path, cells("kv_mixed", ALL_PASS[:3], kv_storage=CONFORMS)
          + quality_pair(M, "kv_mixed", "prose", 8192, "pass", kv_storage=storage))
    assert verdicts(tmp_path, claim("C7")) == {M: expected}


def tiers(*bits_per_layer):
    """bits_by_age rows: one list of bits per element per layer, newest tier first."""
    return {"bits_by_age": [{"layer": layer, "tier": f"t{i}", "bits": b, "age_from": 64 * i, "age_to": 64 * (i + 1),
                             "tokens": 64, "bytes": 1, "bits_per_element": b}
                            for layer, bits in enumerate(bits_per_layer) for i, b in enumerate(bits)]}


@pytest.mark.parametrize("longest,expected", [
    (tiers([16, 8.5, 4.5], [16, 8.5]), "reproduced"),
    (tiers([16, 8.5, 4.5], [16, 4.5, 8.5]), "not reproduced"),  # layer 1 stores older tokens in more bits
    (tiers([16, 16]), "not reproduced"),  # two tiers, no compression with age
    (tiers([16, 8.5], [16]), "inconclusive"),  # layer 1 holds one tier: too short a context
    ({}, "inconclusive"),
])
def test_c11_bits_fall_with_age_at_the_longest_length(tmp_path, longest, expected):
    # The shorter length rises with age: only the longest stored length is read.
    write(tmp_path, quality_pair(M, "kv_temporal", "prose", 2048, "pass", kv_storage=tiers([4, 16]))
          + quality_pair(M, "kv_temporal", "prose", 8192, "pass", kv_storage=longest))
    assert verdicts(tmp_path, claim("C11")) == {M: expected}


def c15_rows(gates, saved_at_8192=2.5e9, contexts=(8192, 32768)):
    rows = cells("kv_mixed", gates)
    for ctx in contexts:
        rows.append(decode_row("kv_mixed", ctx, 1, 1.0, kv_bytes_16bit=4e9 * ctx / 8192,
                               kv_bytes=(4e9 - saved_at_8192) * ctx / 8192))
        rows.append(decode_row("kv_mixed", ctx, 8, 1.0, kv_bytes_16bit=4e10, kv_bytes=1e9))  # never read: batch 8
    return rows


@pytest.mark.parametrize("gates,saved,contexts,expected,says", [
    (ALL_PASS, 2.5e9, (8192, 32768), "reproduced", "2.50 GB at 8192 tokens (measured at 8192)"),
    (ALL_PASS, 1.5e9, (8192, 32768), "not reproduced", "1.50 GB at 8192"),  # 32k would save 6 GB: not read
    (["pass", "pass", "fail", "pass"], 2.5e9, (8192,), "not reproduced", "scaled linearly from 8192"),
    (["pass", "pass", "inconclusive", "pass"], 2.5e9, (8192,), "inconclusive", "quality undecided at 8192"),
    (["fail", "pass", "fail", "pass"], 2.5e9, (8192,), "not reproduced", "no length where kv_mixed passes"),
])
def test_c15_gb_saved_where_quality_holds(tmp_path, gates, saved, contexts, expected, says):
    write(tmp_path, c15_rows(gates, saved, contexts))
    table = evaluate([claim("C15")], tmp_path)
    assert list(table.verdict) == [expected] and says in table.evidence[0]


@pytest.mark.parametrize("id_", ["C6", "C7", "C8", "C10", "C11", "C14", "C15"])
def test_no_rows_no_number(tmp_path, id_):
    write(tmp_path, cells("kv_int8", ALL_PASS))  # rows exist, none of the claim's method
    table = evaluate([claim(id_)], tmp_path)
    assert list(table.verdict) == ["no data"] and table.value.isna().all()


def test_rows_of_another_configuration_are_labelled_and_not_read(tmp_path):
    """kv_adaptive rows measured with max_error 0.2 (its YAML says 0.05 now: a calibration changed
    it) are shown as `kv_adaptive(max_error=0.2)` and never decide C14."""
    from ollm_bench.report.quality import summarize
    from ollm_bench.run.store import ResultStore

    old = {"config_json": {"optim": {"method": {"_target_": "optim.kv_adaptive.AdaptiveKV", "max_error": 0.2}}}}
    write(tmp_path, cells("kv_adaptive", ["fail"] * 4, **old))
    assert list(evaluate([claim("C14")], tmp_path).verdict) == ["no data"]
    labels = set(summarize(ResultStore(tmp_path / "kv" / "runs.csv").read()).label)
    assert "kv_adaptive(max_error=0.2)" in labels


def test_the_configured_variant_keeps_its_plain_name(tmp_path):
    """Rows of the YAML's configuration beside rows of an older one: the current rows are shown as
    `kv_adaptive` (what claims read), the older as `kv_adaptive(max_error=0.2)`."""
    from ollm_bench.methods import configured_params
    from ollm_bench.report.quality import summarize
    from ollm_bench.run.store import ResultStore

    old = {"config_json": {"optim": {"method": {"_target_": "optim.kv_adaptive.AdaptiveKV", "max_error": 0.2}}}}
    now = {"config_json": {"optim": {"method": configured_params("kv_adaptive")}}}
    write(tmp_path, cells("kv_adaptive", ["fail"] * 4, **old) + cells("kv_adaptive", ALL_PASS, **now))
    labels = set(summarize(ResultStore(tmp_path / "kv" / "runs.csv").read()).label)
    assert {"kv_adaptive", "kv_adaptive(max_error=0.2)"} <= labels
