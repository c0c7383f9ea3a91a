"""A tiny random Gemma-3 with a real HF tokenizer: what lm-eval's HFLM and `ollm_cache` both load."""

from __future__ import annotations

from pathlib import Path


def byte_tokenizer():
    """A real HF fast tokenizer (HFLM needs one) over bytes: ids 3..258 + pad/eos/bos/unk, 260 in all,
    the tiny model's vocab. Like Gemma's, it prepends BOS by default."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    vocab.update({ch: 3 + i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    vocab["<unk>"] = 259
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def save_tiny_model(path: Path, max_positions: int = 4096) -> Path:
    """The tests' tiny Gemma-3 (peaked random weights) and the byte tokenizer, saved as a local
    model directory that `load_pretrained` and HFLM read offline."""
    from ollm_bench.models import build_random_model, tiny_gemma3_config

    config = tiny_gemma3_config(init_std=0.2)
    config.max_position_embeddings = max_positions
    build_random_model(config, seed=0).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path
