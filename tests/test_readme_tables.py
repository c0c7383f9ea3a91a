"""README result tables are generated from the committed results, never typed by hand."""

from pathlib import Path

from ollm_bench.report.readme_tables import TABLES, main

REPO = Path(__file__).resolve().parent.parent


def test_tables_regenerate_from_committed_results(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("".join(f"## {n}\n<!-- {n}:start -->\nstale\n<!-- {n}:end -->\n" for n in TABLES))
    main(["--results", str(REPO / "results"), "--readme", str(readme)])
    text = readme.read_text()
    assert "stale" not in text
    assert "| kv_mixed | code | 2048 |" in text and "| sdpa |" in text and "| attn_sliding | prose |" in text
    assert "| baseline | 1.00x | 1.00x |" in text  # GPU decode ratios are relative to the baseline row


def test_committed_readme_tables_are_current():
    text = (REPO / "README.md").read_text()
    for name, build in TABLES.items():
        assert build(REPO / "results") in text, f"README's {name} is stale: run python -m ollm_bench.report.readme_tables"
