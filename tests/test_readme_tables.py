"""README result tables are generated from stored rows, never typed by hand."""

from pathlib import Path

from ollm_bench.report.readme_tables import main, tables
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
