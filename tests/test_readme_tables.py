"""README result tables are generated from stored rows, never typed by hand."""

from pathlib import Path

from ollm_bench.report.readme_tables import main, tables
from ollm_bench.run.store import ResultStore
from tests.conftest import TINY, run_cli

REPO = Path(__file__).resolve().parent.parent


def test_tables_regenerate_from_stored_rows_models_side_by_side(tmp_path):
    results = tmp_path / "results"
    for model in ("tiny_random", "tiny_llama"):
        run_cli("sweep", *[a for a in TINY if not a.startswith("model=")], f"model={model}", "model.weights=true",
                "optim=baseline,kv_int8", f"results_dir={results}", "suite_name=default", "runner.isolation=inline",
                "seq_len=96", check=0)
    readme = tmp_path / "README.md"
    names = list(tables(results))
    readme.write_text("".join(f"## {n}\n<!-- {n}:start -->\nstale\n<!-- {n}:end -->\n" for n in names))
    main(["--results", str(results), "--readme", str(readme)])
    text = readme.read_text()
    assert "stale" not in text
    assert "| method | content | len | tiny_llama: Δppl [95% CI] |" in text  # one column group per model
    assert "| kv_int8 | prose | 96 |" in text and "tiny_random: Δppl" in text
    assert "No rows in results/kv_gpu yet." in text  # a suite without rows says so, never a number


def test_committed_readme_tables_are_current():
    text = (REPO / "README.md").read_text()
    for name, body in tables(REPO / "results").items():
        assert body in text, f"README's {name} is stale: run python -m ollm_bench.report.readme_tables"


def test_a_suite_of_variants_pairs_with_a_sibling_suites_baseline(tmp_path):
    """suite=ablation runs no baseline of its own: its report pairs each variant with the baseline
    another suite measured on the same cell and documents, and says where it came from."""
    from ollm_bench.report.tables import suite_summary, write_report
    from tests.claims_rows import quality_pair, write

    base, variant = quality_pair("gemma3_270m", "kv_mixed_no_window", "prose", 2048, "fail", suite="kv")
    variant["suite"] = "ablation"
    write(tmp_path, [base, variant])
    ablation = tmp_path / "ablation"
    summary, borrowed = suite_summary(ResultStore(ablation / "runs.csv").read(), ablation)
    assert list(borrowed.suite) == ["kv"]
    row = summary[summary.optim == "kv_mixed_no_window"].iloc[0]
    assert row.gate == "fail" and row.n_docs == 6
    write_report(ablation)
    assert "Baseline rows from suite(s) kv" in (ablation / "report.md").read_text()
    # Without the sibling there is nothing to pair with: no verdict is made up.
    (tmp_path / "kv" / "runs.csv").unlink()
    summary, borrowed = suite_summary(ResultStore(ablation / "runs.csv").read(), ablation)
    assert borrowed.empty and "fail" not in set(summary.get("gate", []))
