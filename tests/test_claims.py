"""The claims machinery: verdict helpers, the claim list, one row per claim and scope, rendering and
the CLI. Each claim's rule is tested from hand-built rows in test_claims_{kv,speed,router}.py."""

import math

import pytest

from ollm_bench.cli import claims as claims_command
from ollm_bench.errors import ConfigError
from ollm_bench.report.claims import Evidence, evaluate, load_claims, rules_markdown
from ollm_bench.report.claims.evidence import RULES, all_cells, interval_verdict
from tests.claims_rows import quality_pair, write

CLAIMS = "conf/claims/ollm_enhanced.yaml"


def test_interval_and_cell_rules():
    assert interval_verdict(0.35, 0.6, 0.3) == "reproduced"
    assert interval_verdict(0.05, 0.2, 0.3) == "not reproduced"
    assert interval_verdict(0.2, 0.4, 0.3) == "inconclusive"
    assert all_cells(["reproduced", "reproduced"]) == "reproduced"
    assert all_cells(["reproduced", "inconclusive", "not reproduced"]) == "not reproduced"
    assert all_cells(["reproduced", "inconclusive"]) == "inconclusive"
    assert all_cells([]) == "inconclusive"


def test_evidence_never_carries_a_number_without_data():
    with pytest.raises(ValueError, match="no value"):
        Evidence("no data", 0.0)
    with pytest.raises(ValueError, match="unknown verdict"):
        Evidence("probably")
    assert Evidence("inconclusive", math.nan, low=math.inf).value is None


def test_claim_list_is_data_with_a_rule_each():
    claims = load_claims(CLAIMS)
    assert [c["id"] for c in claims] == [f"C{i}" for i in range(1, 17)]
    assert all(RULES[c["metric"]].__doc__ for c in claims)
    assert "C6** `kv_reduction_within_gate(optim=kv_mixed)`" in rules_markdown(claims)


def test_every_claim_says_no_data_on_empty_results(tmp_path):
    table = evaluate(load_claims(CLAIMS), tmp_path)
    assert list(table.id) == [f"C{i}" for i in range(1, 17)]
    assert set(table.verdict) == {"no data"} and table.value.isna().all()


def test_bad_claims_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("claims:\n  - {id: X, quote: q, metric: nonsense, threshold: 1}\n")
    with pytest.raises(ConfigError, match="unknown metric"):
        load_claims(bad)


def test_cli_writes_one_row_per_model_and_the_readme_block(tmp_path, capsys):
    rows = []
    for model, gate in (("gemma3_270m", "pass"), ("smollm2_135m", "fail")):
        rows += quality_pair(model, "kv_adaptive", "prose", 2048, gate)
    write(tmp_path, rows)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- claims:start -->\nstale\n<!-- claims:end -->\nafter\n")
    claims_command([f"results_dir={tmp_path}", f"readme={readme}"])
    text = (tmp_path / "claims.md").read_text()
    c14 = [line for line in text.splitlines() if line.startswith("| C14 |")]
    assert len(c14) == 2 and "Adaptive compression" in c14[0] and "Adaptive compression" not in c14[1]
    assert "| gemma3_270m |" in c14[0] and "**reproduced**" in c14[0] and "**not reproduced**" in c14[1]
    assert "| C1 | 30-50% reduction in memory fragmentation | 0.3 | — | — | **no data** |" in text
    assert "## Rules" in text and "- **C16**" in text
    block = readme.read_text()
    assert "stale" not in block and block.startswith("intro\n") and block.endswith("after\n") and "| C14 |" in block
