"""Claims are computed from rows: a verdict follows the data, and missing data says so."""

import pandas as pd
import pytest

from ollm_bench.report.claims import Evidence, Results, alloc_speedup, evaluate, load_claims
from ollm_bench.errors import ConfigError


def test_verdict_rule():
    assert Evidence(0.5, 0.35, 0.6).verdict(0.3) == "reproduced"
    assert Evidence(0.1, 0.05, 0.2).verdict(0.3) == "not reproduced"
    assert Evidence(0.3, 0.2, 0.4).verdict(0.3) == "inconclusive"
    assert Evidence(None).verdict(0.3) == "no data"


def _alloc_rows(pool_us):
    rows = []
    for case in ("a", "b"):
        rows.append({"part": "alloc", "case": case, "method": "torch", "status": "ok", "median": 10.0, "n": 30,
                     "device": "gpu"})
        rows.append({"part": "alloc", "case": case, "method": "pool", "status": "ok", "median": pool_us, "n": 30,
                     "device": "gpu"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("pool_us,verdict", [(5.0, "reproduced"), (12.0, "not reproduced")])
def test_alloc_claim_follows_the_data(tmp_path, pool_us, verdict):
    (tmp_path / "memory").mkdir()
    _alloc_rows(pool_us).to_csv(tmp_path / "memory" / "memory_gpu.csv", index=False)
    assert alloc_speedup(Results(tmp_path), method="pool").verdict(0.2) == verdict


def test_every_claim_evaluates_on_empty_results(tmp_path):
    table = evaluate(load_claims("conf/claims/ollm_enhanced.yaml"), tmp_path)
    assert list(table.id) == [f"C{i}" for i in range(1, 17)]
    no_storage_claims = table[table.id != "C7"]  # C7 inspects the cache's storage itself
    assert set(no_storage_claims.verdict) == {"no data"}
    assert table.set_index("id").loc["C7", "verdict"] == "reproduced"


def test_bad_claims_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("claims:\n  - {id: X, quote: q, metric: nonsense, threshold: 1}\n")
    with pytest.raises(ConfigError, match="unknown metric"):
        load_claims(bad)
