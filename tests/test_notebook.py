"""notebooks/analysis.ipynb runs headless: over real (tiny-model) results, over suites with no
usable rows, and over an empty results folder."""

import pytest

from tests.conftest import REPO, TINY, run_cli

NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def execute(results_dir, monkeypatch) -> str:
    """Run the notebook in a fresh `python3` kernel; returns every output's text, joined."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")

    monkeypatch.setenv("OLLM_RESULTS_DIR", str(results_dir))  # the kernel inherits this environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # timeout: a cell that hangs fails the test; how fast it runs is not what this test checks.
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            texts.append(out.get("text", ""))
            texts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
            if "image/png" in out.get("data", {}):
                texts.append("<png>")
    return "\n".join(texts)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A real tiny sweep (baseline + kv_int8), a suite with only a header, and one with no baseline."""
    from ollm_bench.run.store import COLUMNS, ResultStore

    root = tmp_path_factory.mktemp("results")
    run_cli("sweep", *TINY, "optim=baseline,kv_int8", f"results_dir={root}", check=0)
    (root / "empty").mkdir()
    (root / "empty" / "runs.csv").write_text(",".join(COLUMNS) + "\n")
    rows = ResultStore(root / "single" / "runs.csv").read()
    nobase = ResultStore(root / "nobase" / "runs.csv")
    for _, row in rows[rows.optim == "kv_int8"].iterrows():
        nobase.append({k: (None if v is None or v != v else v) for k, v in row.items()})
    return root


def test_notebook_shows_tables_and_plots(results, monkeypatch):
    text = execute(results, monkeypatch)
    assert "kv_int8" in text and "| model | content | len | optim |" in text  # the summary table
    assert "paired t-interval" in text  # each table names its interval method
    assert text.count("<png>") == 1  # quality vs KV bytes for the one suite with a baseline to compare with
    assert "### suite `nobase`" in text and "### suite `empty`" not in text  # no ok rows: nothing to show


def test_notebook_with_no_results(tmp_path, monkeypatch):
    assert "no results yet" in execute(tmp_path, monkeypatch)
