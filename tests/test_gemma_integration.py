"""Integration on the real embedded Gemma-3-270M (converted once into the user cache dir)."""

import pytest
import torch

from ollm_bench.data import load_documents
from ollm_bench.evaluate.scoring import prefill, run_pass, score_tail
from ollm_bench.methods import build_method
from tests.broken_caches import ZeroValuesKV
from tests.conftest import TINY

pytestmark = pytest.mark.integration

EIFFEL = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. Locally nicknamed "
    '"La dame de fer" (French for "Iron Lady"), it was constructed as the centrepiece of the 1889 World\'s Fair.'
)


@pytest.fixture(scope="module")
def gemma():
    from ollm_bench.models import load_pretrained

    torch.set_num_threads(2)
    return load_pretrained("gemma3_270m")


def test_known_text_perplexity(gemma):
    # A loader that only "works" can still be wrong (transformers 5.2's GGUF tokenizer: no BOS, ppl 1308).
    ids = gemma.tokenizer(EIFFEL, return_tensors="pt").input_ids
    assert ids[0, 0].item() == gemma.tokenizer.bos_token_id
    with torch.inference_mode():
        ppl = gemma.model(ids, labels=ids).loss.exp().item()
    assert 4.0 < ppl < 15.0, ppl


def test_chunked_equals_one_shot_across_sliding_window(gemma):
    ids = torch.tensor([d.ids for d in load_documents("prose", gemma.tokenizer, 700, 1)])
    cache = build_method("baseline").make_cache(gemma.model.config)
    last = prefill(gemma.model, ids[:, :600], cache, 256)
    nll, _ = score_tail(gemma.model, ids[:, 600:], cache, last, 50)
    with torch.inference_mode():
        logits = gemma.model(input_ids=ids).logits.float()
    ref = -torch.log_softmax(logits[:, 599:-1], -1).gather(-1, ids[:, 600:, None]).sum()
    torch.testing.assert_close(nll.sum().float(), ref, rtol=2e-4, atol=1e-2)


def test_int8_in_loop_small_loss_and_broken_cache_large_loss(gemma):
    ids = torch.tensor([d.ids for d in load_documents("prose", gemma.tokenizer, 768, 1)])

    def ppl(method):
        res = run_pass(gemma.model, lambda: method.make_cache(gemma.model.config), ids, 256, 256, 64, 0)
        return float(torch.tensor(res.nll[0] / 256).exp())

    base, int8, broken = ppl(build_method("baseline")), ppl(build_method("kv_int8")), ppl(ZeroValuesKV())
    assert int8 != base and abs(int8 / base - 1) < 0.02, (base, int8)
    assert broken / base > 1.5, (base, broken)


def test_cli_run_on_real_model(cli, tmp_path):
    args = [a for a in TINY if not a.startswith(("model", "seq_len", "scenario.score_tokens"))]
    cli("sweep", *args, "model=gemma3_270m", "seq_len=256", "scenario.score_tokens=64", "optim=kv_int8",
        "content=structured", f"results_dir={tmp_path}", "suite_name=t", "runner.isolation=inline", check=0)
    import pandas as pd

    row = pd.read_csv(tmp_path / "t" / "runs.csv").iloc[0]
    assert row.status == "ok" and 1.0 < row.ppl < 100 and 0.49 < row.kv_ratio < 0.52
