"""Quality per byte against the peers: each verdict of the paired comparison, and no guessing."""

import pytest

from ollm_bench.report.peers import peer_comparison
from ollm_bench.report.quality import summarize
from ollm_bench.run.store import ResultStore
from tests.claims_rows import quality_pair, write


def _table(tmp_path, ours_gate, ours_ratio, peer_gate, peer_ratio, **peer_fields):
    base, mine = quality_pair("m", "kv_ours", "prose", 2048, ours_gate, ratio=ours_ratio)
    _, peer = quality_pair("m", "kv_peer", "prose", 2048, peer_gate, ratio=peer_ratio, peer=True, **peer_fields)
    write(tmp_path, [base, mine, peer])
    df = ResultStore(tmp_path / "kv" / "runs.csv").read()
    return peer_comparison(df, summarize(df))


@pytest.mark.parametrize("ours_gate, ours_ratio, peer_gate, verdict", [
    ("pass", 0.3, "fail", "better"),          # smaller and clearly lower perplexity
    ("fail", 0.3, "pass", "worse"),           # smaller but clearly higher perplexity
    ("pass", 0.4, "pass", "as good"),         # the same documents and scores: the interval spans 0
    ("pass", 0.5, "fail", "no method at these bytes"),  # ours holds more bytes than the peer
])
def test_each_verdict(tmp_path, ours_gate, ours_ratio, peer_gate, verdict):
    table = _table(tmp_path, ours_gate, ours_ratio, peer_gate, 0.4)
    assert table.verdict.tolist() == [verdict]
    if verdict != "no method at these bytes":
        assert table.ours.tolist() == ["kv_ours"] and table.n_docs.tolist() == [6]


def test_different_documents_are_not_paired(tmp_path):
    table = _table(tmp_path, "pass", 0.3, "fail", 0.4, doc_hashes=[f"other-{k}" for k in range(6)])
    assert table.verdict.tolist() == ["documents differ"]


def test_a_peer_storing_fp32_is_compared_at_its_16bit_size(tmp_path):
    """A peer holding 0.5x in fp32 tensors holds 0.25x in a 16-bit deployment: ours at 0.3x is bigger."""
    storage = {"tensors": {"keys": {"bytes": 250_000, "dtype": "float32"}, "values": {"bytes": 250_000, "dtype": "float32"}}}
    table = _table(tmp_path, "pass", 0.3, "fail", 0.5, kv_storage=storage)
    assert table.verdict.tolist() == ["no method at these bytes"] and table.peer_kv_ratio.tolist() == [0.25]


def test_every_configuration_of_ours_is_a_candidate_under_its_label(tmp_path):
    """An override row of ours (a shorter 16-bit window) holds fewer bytes than the peer where the
    configured method holds more: it is the candidate, named by what it changed."""
    from ollm_bench.methods import configured_params

    configured = configured_params("kv_k4v2")
    # The override ran first: the configured method's rows are the latest of kv_k4v2.
    _, short = quality_pair("m", "kv_k4v2", "prose", 2048, "pass", ratio=0.30,
                            config_json={"optim": {"method": configured | {"residual": 64}}})
    base, mine = quality_pair("m", "kv_k4v2", "prose", 2048, "pass", ratio=0.35,
                              config_json={"optim": {"method": configured}})
    _, peer = quality_pair("m", "kv_peer", "prose", 2048, "fail", ratio=0.32, peer=True)
    write(tmp_path, [base, mine, short, peer])
    df = ResultStore(tmp_path / "kv" / "runs.csv").read()
    table = peer_comparison(df, summarize(df))
    assert table.ours.tolist() == ["kv_k4v2(residual=64)"] and table.verdict.tolist() == ["better"]
    assert table.ours_kv_ratio.tolist() == [0.30]


def test_a_baseline_rerun_with_more_documents_still_pairs(tmp_path):
    """The baseline re-run on 64 documents (its first 6 are the method's 6, same hashes): the method
    pairs on its own 6 and gets the same interval as against the 6-document baseline; a method
    sharing no document with it is `documents differ`."""
    from ollm_bench.evaluate.stats import paired_rows

    base, mine = quality_pair("m", "kv_ours", "prose", 2048, "pass")
    _, other = quality_pair("m", "kv_other", "prose", 2048, "pass", doc_hashes=[f"x-{k}" for k in range(6)])
    longer = dict(base, run_id="long", config_hash="long", started_at="2025-01-02T00:00:00.000000", n_docs=64,
                  doc_hashes=[f"prose2048-{k}" for k in range(64)],
                  doc_nll=base["doc_nll"] + [100.0 * (2 + k % 5) for k in range(58)])
    write(tmp_path, [base, mine, other, longer])
    df = ResultStore(tmp_path / "kv" / "runs.csv").read()
    summary = summarize(df).set_index("optim")
    rows = df.set_index("run_id")
    expected = paired_rows(rows.loc[mine["run_id"]], rows.loc[base["run_id"]])
    assert summary.loc["baseline", "n_docs"] == 64  # the latest baseline row is the reference
    assert summary.loc["kv_ours", "n_docs"] == 6 and summary.loc["kv_ours", "gate"] == "pass"
    assert summary.loc["kv_ours", "ppl_delta_high"] == pytest.approx(expected.high)
    assert summary.loc["kv_other", "gate"] == "documents differ"


def test_the_table_and_the_plot_read_the_same_16bit_size_as_the_comparison(tmp_path, monkeypatch):
    """The summary's `kv_ratio_16bit` (the README table's and the Pareto plot's x) counts a peer's fp32
    tensors at 16 bits, as the comparison does; a row without fp32 tensors keeps its exact ratio."""
    from ollm_bench.report import plots

    storage = {"tensors": {"keys": {"bytes": 250_000, "dtype": "float32"}, "values": {"bytes": 250_000, "dtype": "float32"}}}
    base, mine = quality_pair("m", "kv_ours", "prose", 2048, "pass", ratio=0.3)
    _, peer = quality_pair("m", "kv_peer", "prose", 2048, "fail", ratio=0.5, peer=True, kv_storage=storage)
    write(tmp_path, [base, mine, peer])
    summary = summarize(ResultStore(tmp_path / "kv" / "runs.csv").read()).set_index("optim")
    assert summary.loc["kv_peer", "kv_ratio"] == pytest.approx(0.5)
    assert summary.loc["kv_peer", "kv_ratio_16bit"] == pytest.approx(0.25)
    assert summary.loc["kv_ours", "kv_ratio_16bit"] == pytest.approx(summary.loc["kv_ours", "kv_ratio"])
    drawn = {}
    real = plots.plt.Axes.errorbar

    def spy(ax, x, y, *args, **kwargs):
        drawn[kwargs["label"]] = x
        return real(ax, x, y, *args, **kwargs)

    monkeypatch.setattr(plots.plt.Axes, "errorbar", spy)
    assert plots.plot_quality_vs_bytes(summary.reset_index(), tmp_path / "p.png", 2048)
    assert drawn["kv_peer (peer)"] == pytest.approx(0.25) and drawn["kv_ours"] == pytest.approx(0.3)
