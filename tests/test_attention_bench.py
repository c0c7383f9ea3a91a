"""The standalone GPU attention benchmark runs end to end at smoke sizes on CPU and writes its CSV."""

import pandas as pd

from ollm_bench.gpu.attention_bench import MECHANISMS, main


def test_smoke_writes_csv(tmp_path):
    path = main(["--out", str(tmp_path), "--smoke", "--repeats", "2"])
    df = pd.read_csv(path)
    assert (df["status"] == "ok").all(), df[df["status"] != "ok"][["mechanism", "error"]]
    assert set(MECHANISMS) | {"sdpa", "flex_causal"} <= set(df["mechanism"])
    assert {"kernel", "model"} == set(df["part"]) and {"prefill", "decode"} == set(df["phase"])
    assert {"device", "torch", "transformers", "median_ms", "p25_ms", "p75_ms", "speedup_vs_sdpa"} <= set(df.columns)
    assert (df["device"] == "cpu").all() and (df.loc[df.mechanism == "sdpa", "speedup_vs_sdpa"] == 1).all()
