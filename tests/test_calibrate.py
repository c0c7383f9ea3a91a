"""Calibration chooses on the calibration split (WikiText-2 valid.txt) and records what it chose."""

from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"
pytestmark = pytest.mark.skipif(not (WIKITEXT / "valid.txt").exists(), reason=f"no WikiText-2 copy at {WIKITEXT}")


def test_calibration_runs_on_the_valid_split_and_picks_within_budget(cli, tmp_path):
    spec = {"optim": "kv_adaptive", "models": ["tiny_random"], "seq_len": 96, "n_docs": 3, "budget": 0.5,
            "overrides": [a for a in TINY if a.startswith(("model.", "scenario."))] + ["runner.isolation=inline"],
            "candidates": [{"max_error": 0.001}, {"max_error": 10.0}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = cli("calibrate", "optim=kv_adaptive", f"results_dir={tmp_path}", f"spec={path}", "write=false",
              env={"OLLM_BENCH_WIKITEXT": str(WIKITEXT)}, check=0, timeout=900)
    from ollm_bench.run.store import ResultStore

    df = ResultStore(tmp_path / "calibration" / "runs.csv").read()
    assert set(df.content) == {"wikitext"}
    assert all(r["content"]["split"] == "valid" for r in df.config_json)  # never the evaluated split
    assert sorted(df.optim) == ["baseline", "kv_adaptive", "kv_adaptive"]
    # max_error=10 takes the cheapest format everywhere; the budget is generous: it is chosen.
    assert "Chosen: `{'max_error': 10.0}`" in out.stdout
    assert (tmp_path / "calibration" / "kv_adaptive.md").exists()


def test_unknown_spec_is_one_clear_error(cli, tmp_path):
    proc = cli("calibrate", "optim=nope", f"results_dir={tmp_path}", check=2)
    assert "no calibration spec for optim 'nope'" in proc.stderr


def test_a_candidate_the_method_refuses_is_bad_input(cli, tmp_path):
    spec = {"optim": "kv_adaptive", "models": ["tiny_random"], "seq_len": 96, "n_docs": 3, "budget": 0.5,
            "overrides": [a for a in TINY if a.startswith(("model.", "scenario."))], "candidates": [{"max_error": 0.0}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = cli("calibrate", "optim=kv_adaptive", f"results_dir={tmp_path}", f"spec={path}", "write=false",
               env={"OLLM_BENCH_WIKITEXT": str(WIKITEXT)}, check=2, timeout=900)
    assert "max_error must be > 0" in proc.stderr


def test_per_layer_calibration_ranks_every_layer_on_the_valid_split_then_chooses(cli, tmp_path):
    spec = {"optim": "kv_layerwise", "models": ["tiny_random"], "seq_len": 96, "n_docs": 3, "budget": 5.0,
            "sensitivity": {"n_docs": 2}, "params": {"value": ["token", 4, 32], "residual": 8, "sinks": 0},
            "overrides": [a for a in TINY if a.startswith(("model.", "scenario."))] + ["runner.isolation=inline"],
            "candidates": [{"low_fraction": 0.25}, {"low_fraction": 1.0}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = cli("calibrate", "optim=kv_layerwise", f"results_dir={tmp_path}", f"spec={path}", "write=false",
              env={"OLLM_BENCH_WIKITEXT": str(WIKITEXT)}, check=0, timeout=900)
    from ollm_bench.run.store import ResultStore

    df = ResultStore(tmp_path / "calibration" / "runs.csv").read()
    assert all(r["content"]["split"] == "valid" for r in df.config_json)
    probes = [r["optim"]["method"]["probe_layers"] for r in df.config_json if r["optim"]["name"] == "kv_layerwise"]
    assert sorted(p for p in probes if p is not None) == [[0], [1], [2], [3]]  # the tiny model's 4 layers
    ranked = [r["optim"]["method"]["ranking"] for r in df.config_json if r["optim"]["name"] == "kv_layerwise"
              and r["optim"]["method"]["probe_layers"] is None]
    assert len(ranked) == 2 and ranked[0] == ranked[1]  # both candidates ran with the measured ranking
    (key, order), = ranked[0].items()
    assert key == "gemma3_text_4x1x32" and sorted(order) == [0, 1, 2, 3]
    assert "Stage 1, layer sensitivity" in out.stdout and "Chosen: `{'low_fraction': 1.0}`" in out.stdout
