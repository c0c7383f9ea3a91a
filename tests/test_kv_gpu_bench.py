"""The GPU KV benchmark script runs end to end on CPU with --smoke and writes a complete CSV."""

import math

import pandas as pd

from ollm_bench.gpu import kv_bench


def test_smoke_run_writes_csv(tmp_path):
    kv_bench.main(["--out", str(tmp_path), "--smoke", "--methods", "baseline", "kv_mixed", "kv_adaptive"])
    df = pd.read_csv(tmp_path / "kv_gpu.csv")
    assert len(df) == 2 * 2 * 3 and set(df["status"]) == {"ok"}
    assert {"device", "torch", "transformers", "layers_used", "layers_real", "prefill_tok_s", "decode_tok_s",
            "kv_bytes", "kv_ratio", "update_ms_per_layer", "attention_ms_per_layer", "n_repeats"} <= set(df.columns)
    # A real timing: every repeat finite and positive (min <= median <= max holds by construction).
    assert (df["decode_tok_s_min"] > 0).all() and df["decode_tok_s_max"].map(math.isfinite).all()
    base = df[df.method == "baseline"]
    assert (base["kv_ratio"] > 1.9).all()  # fp32 on CPU: twice the 16-bit reference
    assert (df[df.method == "kv_mixed"]["kv_ratio"] < 0.7).all()


def test_cache_argument_detection_and_bad_method():
    import pytest

    with pytest.raises(SystemExit):
        kv_bench.parse(["--out", "x", "--methods", "nope"])
    assert kv_bench.parse(["--out", "x"]).repeats >= 5
