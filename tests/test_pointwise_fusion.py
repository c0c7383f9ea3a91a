"""optim.pointwise_fusion: the decode step's norms, MLPs and rotary embedding compiled from the
model's own code give the same logits, compile once per class (not per layer), and leave the model
as it was once the block ends."""

import shutil

import torch
import torch._dynamo.utils as dynamo_utils
import transformers.models.llama.modeling_llama as modeling_llama
from transformers import LlamaConfig

from ollm_bench.models import build_random_model
from optim.pointwise_fusion import fused_pointwise


# Inductor's CPU code needs a C++ compiler; without one the patching is still checked (the fusion
# itself is measured on the GPU).
BACKEND = "inductor" if any(shutil.which(c) for c in ("g++", "c++", "clang++")) else "aot_eager"


def test_fused_step_matches_and_the_model_is_restored():
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    model = build_random_model(config).eval()
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    rotary = modeling_llama.apply_rotary_pos_emb
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    with torch.no_grad():
        ref = model(ids).logits
        with fused_pointwise(model, backend=BACKEND) as fused:
            assert modeling_llama.apply_rotary_pos_emb is not rotary
            out = model(ids).logits
        after = model(ids).logits
    assert sorted(fused) == ["LlamaMLP", "LlamaRMSNorm", "modeling_llama.apply_rotary_pos_emb"]
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    # one graph per fused function, whatever the number of layers (3 layers, 7 norms, 3 MLPs)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 3
    assert modeling_llama.apply_rotary_pos_emb is rotary
    assert all("forward" not in vars(m) for m in model.modules())
    assert torch.equal(after, ref)
