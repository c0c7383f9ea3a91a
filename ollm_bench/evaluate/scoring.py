"""Quality with the optimization in the loop: documents are scored the way generation runs.

The context goes through the optimized cache by chunked prefill; the scored tail is fed in chunks
too, so every scored token is predicted from keys/values the cache stored (and, for methods that
compress on write, from their compressed form). For the plain cache this equals one-shot scoring
within float tolerance (tests/test_quality.py proves it), and a broken cache moves it.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import torch


def _cache_kwarg(model) -> str:
    # transformers >= 5.2x renamed `past_key_values` to `cache`; the GPU box runs an older 5.x.
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward(model, ids: torch.Tensor, cache, logits_to_keep: int = 0) -> torch.Tensor:
    """One forward through `cache`; returns logits for the last `logits_to_keep` positions (0 = all)."""
    kwargs = {_cache_kwarg(model): cache, "use_cache": True, "logits_to_keep": logits_to_keep}
    return model(input_ids=ids, **kwargs).logits


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class DocumentPass:
    """What one pass over a batch of documents measured."""

    nll: list[float] = field(default_factory=list)  # summed NLL per document (nats)
    n_scored: int = 0  # scored tokens per document
    prefill_s: float = math.nan  # context prefill wall time (includes the first-token logits)
    prefill_tokens: int = 0
    decode_step_s: list[float] = field(default_factory=list)


@torch.inference_mode()
def prefill(model, ids: torch.Tensor, cache, chunk: int) -> torch.Tensor:
    """Chunked prefill of `ids` into `cache`; returns the logits of the last position.

    A cache with `one_shot_prefill = True` (kvpress presses, which compress once at the end of
    the prefill) gets the whole context in one forward.
    """
    if getattr(cache, "one_shot_prefill", False):
        chunk = ids.shape[1]
    logits = None
    for start in range(0, ids.shape[1], chunk):
        logits = forward(model, ids[:, start : start + chunk], cache, logits_to_keep=1)
    return logits[:, -1]


@torch.inference_mode()
def score_tail(model, ids: torch.Tensor, cache, first_logits: torch.Tensor, chunk: int):
    """Summed NLL per row of `ids`, each token predicted from the cache built so far.

    `first_logits` are the logits that predict `ids[:, 0]` (from the end of the prefill). Returns
    (nll per row, logits after the last token).
    """
    nll = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
    prev = first_logits
    for start in range(0, ids.shape[1], chunk):
        piece = ids[:, start : start + chunk]
        logits = forward(model, piece, cache, logits_to_keep=0)
        # Predictions for `piece`: the logit before it, then all but the last of this chunk.
        preds = torch.cat([prev[:, None, :], logits[:, :-1]], dim=1).float()
        logp = torch.log_softmax(preds, dim=-1).gather(-1, piece[..., None]).squeeze(-1)
        nll -= logp.double().sum(dim=1)
        prev = logits[:, -1]
    return nll, prev


@torch.inference_mode()
def decode(model, cache, first_logits: torch.Tensor, steps: int) -> list[float]:
    """Greedy decode `steps` tokens from `cache`; per-step wall times (the first step included)."""
    device = first_logits.device
    token = first_logits.argmax(-1, keepdim=True)
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        logits = forward(model, token, cache, logits_to_keep=1)
        token = logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def run_pass(model, make_cache, ids: torch.Tensor, score_tokens: int, prefill_chunk: int, score_chunk: int,
             decode_tokens: int, on_prefilled=None) -> DocumentPass:
    """Prefill the context, score the last `score_tokens` tokens (0: none), then decode.

    `on_prefilled(cache)` is called once the cache holds all `ids` (KV bytes are read there).
    """
    out = DocumentPass()
    cache = make_cache()
    context = ids[:, : ids.shape[1] - score_tokens] if score_tokens else ids
    _sync(ids.device)
    t0 = time.perf_counter()
    last = prefill(model, context, cache, prefill_chunk)
    _sync(ids.device)
    out.prefill_s = time.perf_counter() - t0
    out.prefill_tokens = context.shape[1] * ids.shape[0]
    if score_tokens:
        nll, last = score_tail(model, ids[:, context.shape[1] :], cache, last, score_chunk)
        out.nll = [float(x) for x in nll]
        out.n_scored = score_tokens
    if on_prefilled is not None:
        on_prefilled(cache)
    if decode_tokens:
        out.decode_step_s = decode(model, cache, last, decode_tokens)
    return out
