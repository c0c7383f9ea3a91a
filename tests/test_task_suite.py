"""suite=quality's paired losses (shared with `lm-eval compare`): identical docs give zero loss
with an honest interval; a worse method fails the gate."""

import math

import pytest

from ollm_bench.errors import ConfigError
from ollm_bench.evaluate.paired import aggregate, paired_loss, per_doc
from ollm_bench.evaluate.stats import BINARY_CI_METHOD, CI_METHOD, paired_binary_interval


def test_per_doc_and_aggregate_match_lm_eval_conventions():
    samples = [{"doc_id": 0, "metrics": ["acc", "word_perplexity"], "acc": 1, "word_perplexity": (-10.0, 5)},
               {"doc_id": 1, "metrics": ["acc", "word_perplexity"], "acc": 0, "word_perplexity": (-20.0, 5)},
               {"doc_id": 0, "filter": "strict", "metrics": ["exact_match"], "exact_match": 1.0}]
    per = per_doc(samples)
    assert per["acc"] == {0: 1.0, 1: 0.0} and per["exact_match,strict"] == {0: 1.0}
    assert aggregate("acc", list(per["acc"].values())) == 0.5
    assert aggregate("word_perplexity", list(per["word_perplexity"].values())) == pytest.approx(math.exp(3.0))
    assert aggregate("perplexity", [-1.0, -3.0]) == pytest.approx(math.exp(2.0))


def test_paired_loss_zero_for_identical_and_fails_for_broken():
    base = {i: float(i % 2) for i in range(40)}
    same = paired_loss("acc", base, base)
    # No document changed, but 40 cannot rule out a change of z^2 / (n + z^2): honest, not [0, 0].
    assert (same.point, same.interval) == (0.0, BINARY_CI_METHOD)
    assert same.high == pytest.approx(-same.low) == pytest.approx(100 * 1.96 ** 2 / (40 + 1.96 ** 2), rel=1e-3)
    assert same.gate() == "inconclusive"
    broken = paired_loss("acc", {i: 0.0 for i in range(40)}, base)
    assert broken.point == pytest.approx(50.0) and broken.gate() == "fail"
    ppl_base = {i: [-100.0 - i, 50] for i in range(10)}
    ppl_worse = {i: [-110.0 - i * 1.01, 50] for i in range(10)}
    worse = paired_loss("word_perplexity", ppl_worse, ppl_base)
    assert worse.interval == CI_METHOD and worse.unit == "relative"
    assert worse.point == pytest.approx(math.exp(0.2 + 0.0002 * 4.5) - 1) and worse.low > 0.02 and worse.gate() == "fail"
    with pytest.raises(ConfigError, match="no common documents"):
        paired_loss("acc", {0: 1.0}, {1: 1.0})
    with pytest.raises(ConfigError, match="no paired rule"):
        paired_loss("f1", {0: 0.5}, {0: 0.25})


def test_binary_interval_is_tango_score():
    """McNemar's test is Tango's score test at 0, so the interval excludes 0 exactly when McNemar
    rejects; the example tables of Fagerland et al. 2014 (Bentur, Cavo) are pinned as regression values."""
    def pairs(lost, gained, same_right, same_wrong):
        ref = [1] * lost + [0] * gained + [1] * same_right + [0] * same_wrong
        method = [0] * lost + [1] * gained + [1] * same_right + [0] * same_wrong
        return ref, method

    assert paired_binary_interval(*pairs(7, 1, 1, 12))[1:] == pytest.approx((0.0260, 0.5172), abs=1e-4)
    assert paired_binary_interval(*pairs(16, 6, 59, 80))[1:] == pytest.approx((0.0054, 0.1240), abs=1e-4)
    for lost, gained in [(9, 2), (8, 2), (5, 0), (4, 0), (3, 3)]:
        mcnemar = abs(lost - gained) / math.sqrt(lost + gained)
        _, low, high = paired_binary_interval(*pairs(lost, gained, 20, 20))
        assert (low > 0 or high < 0) == (mcnemar > 1.959964)
    assert paired_binary_interval([1, 1], [0, 0])[2] == 1.0
    with pytest.raises(ValueError):
        paired_binary_interval([0.5], [1])


def _entry(optim, task, values, limit=4):
    return {"optim": optim, "task": task, "limit": limit, "per_doc": {"acc": dict(enumerate(values))}}


def test_samples_store_round_trips_and_table_pairs_with_baseline(tmp_path):
    from ollm_bench.evaluate.task_suite import read_samples, _table, _write_samples

    path = tmp_path / "samples.jsonl"
    entries = [_entry("baseline", "t", [1] * 6), _entry("opt", "t", [0] * 6), _entry("opt", "u", [1, 0])]
    _write_samples(path, entries)
    back = read_samples(path)
    assert [e["per_doc"]["acc"] for e in back] == [e["per_doc"]["acc"] for e in entries]  # int doc ids again
    table = _table(back, "cpu")
    opt_t = table[(table.optim == "opt") & (table.task == "t")].iloc[0]
    assert opt_t.loss == pytest.approx(100.0) and opt_t.gate == "fail" and opt_t.loss_ci_method == BINARY_CI_METHOD
    # No baseline for task u: the row is kept, with no verdict rather than a made-up one.
    assert math.isnan(table[table.task == "u"].iloc[0].loss)


def test_corrupt_samples_file_is_one_clear_error_and_left_alone(tmp_path):
    from ollm_bench.evaluate.task_suite import read_samples

    path = tmp_path / "samples.jsonl"
    path.write_text('{"optim": "baseline", "task": "t", "limit": 4, "per_doc": {}}\n{not json\n')
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="samples.jsonl:2: corrupt"):
        read_samples(path)
    assert path.read_bytes() == before


def test_task_context_budget_and_unknown_optim():
    from ollm_bench.evaluate.task_suite import task_max_length
    from ollm_bench.methods import build_scoring_method

    assert task_max_length("ollm_niah_16k") >= 16384 and task_max_length("ollm_rolling_prose") == 2048
    with pytest.raises(ConfigError, match="unknown optim 'nope'"):
        build_scoring_method("nope")
    router = build_scoring_method("attn_router")
    assert router.exploration == 0.0 and build_scoring_method("kvpress_snapkv").press == "snapkv"


def test_quality_markdown_and_readme_block(tmp_path):
    from ollm_bench.cli import replace_readme_block
    from ollm_bench.evaluate.task_suite import _table, quality_markdown

    body = quality_markdown(_table([_entry("baseline", "t", [1, 1, 1, 1]), _entry("opt", "t", [0, 0, 1, 1])], "cpu"))
    assert "| opt | t | acc | 4 | 0.500 | +50.0 pts" in body and "| baseline | t | acc | 4 | 1.000 |" in body
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- quality:start -->\nold\n<!-- quality:end -->\noutro\n")
    replace_readme_block(readme, "quality", body)
    text = readme.read_text()
    assert "old" not in text and body in text and text.startswith("intro") and text.endswith("outro\n")


def test_save_entry_keeps_results_written_by_another_run(tmp_path):
    from ollm_bench.evaluate.task_suite import read_samples, save_entry, _write_samples

    path = tmp_path / "samples.jsonl"
    _write_samples(path, [_entry("baseline", "t", [1, 1])])
    save_entry(path, _entry("a", "t", [1, 0]))  # another process added this meanwhile
    save_entry(path, _entry("b", "t", [0, 0]))
    save_entry(path, _entry("a", "t", [0, 1]))  # a rerun replaces its own entry only
    got = {(e["optim"], e["task"]): e["per_doc"]["acc"] for e in read_samples(path)}
    assert got == {("baseline", "t"): {0: 1, 1: 1}, ("b", "t"): {0: 0, 1: 0}, ("a", "t"): {0: 0, 1: 1}}


def test_only_the_projects_results_folder_updates_the_readme_table():
    from pathlib import Path

    from ollm_bench.cli import tasks_readme

    assert tasks_readme("", "results") == Path("README.md")
    assert tasks_readme("", "./results/") == Path("README.md")
    assert tasks_readme("", "results/router") is None  # a side run leaves the README alone
    assert tasks_readme("docs/x.md", "results/router") == Path("docs/x.md")


def test_results_of_a_retuned_method_are_marked_stale_not_dropped():
    """A task score belongs to the method's parameters and code when measured: after a method is
    re-tuned its old scores stay in the table, marked stale, and `tasks` measures it again."""
    from ollm_bench.evaluate.task_suite import _table, quality_markdown
    from ollm_bench.methods import method_fingerprint
    from ollm_bench.run.identity import method_fingerprint as of_params

    params = {"_target_": "optim.kv_adaptive.AdaptiveKV", "max_error": 0.05}
    assert of_params(params) == of_params(dict(params))
    assert of_params(params) != of_params(params | {"max_error": 0.2})
    assert method_fingerprint("kv_int8") and method_fingerprint("no_such_method") is None

    now = {"baseline": "b1", "opt": "o2", "old": "x"}
    entries = [_entry("baseline", "t", [1, 1, 1, 1]) | {"method_id": "b1"},
               _entry("opt", "t", [0, 0, 1, 1]) | {"method_id": "o1"},  # measured before a re-tune
               _entry("old", "t", [1, 1, 1, 1])]  # stored before fingerprints existed
    table = _table(entries, "cpu", now)
    assert table.set_index("optim").stale.to_dict() == {"baseline": False, "opt": True, "old": True}
    body = quality_markdown(table)
    assert "| opt | t | acc | 4 | 0.500 | +50.0 pts" in body and "(stale)" in body and "measures it again" in body
    fresh = quality_markdown(_table([entries[0], entries[1] | {"method_id": "o2"}], "cpu", now))
    assert "(stale)" not in fresh


def test_rebuild_runs_nothing_and_marks_what_changed(tmp_path, monkeypatch):
    """`tasks rebuild=true` rebuilds the table from stored scores without loading a model: a score
    with today's fingerprint stays clean, one from before fingerprints is marked stale."""
    import ollm_bench.models as models
    from ollm_bench.evaluate.task_suite import run_tasks, _write_samples
    from ollm_bench.methods import method_fingerprint

    monkeypatch.setattr(models, "load_pretrained", lambda *a, **k: pytest.fail("rebuild loaded a model"))
    out = tmp_path / "quality"
    out.mkdir()
    _write_samples(out / "samples.jsonl", [
        _entry("baseline", "ollm_niah_1k", [1, 1, 1, 1], limit=4) | {"method_id": method_fingerprint("baseline")},
        _entry("kv_int8", "ollm_niah_1k", [1, 0, 1, 1], limit=4)])
    table = run_tasks(["baseline", "kv_int8"], ["ollm_niah_1k"], 4, tmp_path, rebuild=True)
    assert table.set_index("optim").stale.to_dict() == {"baseline": False, "kv_int8": True}
    assert (out / "tasks.csv").exists() and len(table) == 2
