"""lm-eval with the optimization in the loop (docs/methodology.md, "Quality with the optimization in the loop").

lm-eval's own `HFLM` scores a request with one cache-less forward, so a KV-cache method never
touches its numbers. `CacheInLoopLM` scores the way generation runs, reusing `ollm_bench.evaluate.scoring`:

* `loglikelihood`: the context is prefilled in chunks into a *fresh* cache from `make_cache`, and
  the continuation is fed in chunks by `score_tail`, each token predicted from that cache;
* `loglikelihood_rolling`: lm-eval's rolling windows (the same ones HFLM builds), each scored as a
  `loglikelihood` request through its own fresh cache;
* `generate_until`: greedy decoding through the cache until a stop string, EOS or `max_gen_toks`.

Tokenization, truncation and windowing mirror HFLM on purpose (same `tok_encode` rules, same
left truncation to `max_length + 1`), so for the baseline cache the scores equal HFLM's within
float tolerance (tests/test_lm_eval_model.py proves it) and any difference for another method is
the method's. Batch size is 1: every request gets its own cache, as a serving system would.

Registered with lm-eval as `ollm_cache`; lm-eval builds it from `--model_args` (a dict from its
CLI, a string from `simple_evaluate`): `model=<gemma3_270m | local dir | hub id>,optim=<conf/optim
name>[,dtype=,max_length=,prefill_chunk=,score_chunk=,max_gen_toks=,add_bos_token=]`, e.g.
`python -m ollm_bench lm-eval run --model ollm_cache --model_args model=gemma3_270m,optim=kv_int8 ...`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm import tqdm

from ..errors import ConfigError
from .scoring import forward, prefill, score_tail

DEFAULT_MAX_LENGTH = 2048  # HFLM's fallback when neither config nor tokenizer states a length
# `--model_args` keys: what to load and which method, then CacheInLoopLM's own knobs.
MODEL_ARGS = ("model", "optim", "dtype", "max_length", "prefill_chunk", "score_chunk", "max_gen_toks", "add_bos_token")
log = logging.getLogger(__name__)


class _ArgmaxTap:
    """Stands in for the model inside `score_tail` and keeps each chunk's argmax tokens.

    lm-eval's `is_greedy` needs the argmax at every scored position; tapping the very logits
    `score_tail` computes gives it without a second forward and without copying `score_tail`.
    """

    def __init__(self, model):
        self.model = model
        self.forward = model.forward  # `quality.forward` inspects its signature for the cache kwarg
        self.argmax: list[torch.Tensor] = []

    def __call__(self, **kwargs):
        out = self.model(**kwargs)
        self.argmax.append(out.logits[0].argmax(-1))
        return out


@register_model("ollm_cache")
class CacheInLoopLM(TemplateLM):
    """An lm-eval `LM` whose every score passes through `make_cache(config)`'s cache.

    `route(model, context_text=, seq_len=)`, when given, is called before every request with that
    request's context (an attention mechanism attaches for it; a content-aware router picks per
    request, as a server would). `for_method` wires both from a method of the registry.
    """

    def __init__(self, model, tokenizer, make_cache: Callable, route: Callable | None = None,
                 max_length: int | None = None, prefill_chunk: int = 512, score_chunk: int = 64,
                 max_gen_toks: int = 256, add_bos_token: bool | None = None, name: str = "ollm_cache"):
        super().__init__()
        if prefill_chunk < 1 or score_chunk < 1:
            raise ConfigError(f"prefill_chunk and score_chunk must be >= 1 (got {prefill_chunk}, {score_chunk})")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.make_cache = make_cache
        self.prefill_chunk, self.score_chunk = int(prefill_chunk), int(score_chunk)
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token
        self.name = name
        self._max_length = int(max_length) if max_length else None
        self.route = route
        self.method, self.request_kind, self.router_choices = None, None, Counter()  # set by `for_method`

    @classmethod
    def for_method(cls, model, tokenizer, method, request_kind: str | None = None, **kwargs) -> "CacheInLoopLM":
        """Score through `method` (an instance from `ollm_bench.methods`): its cache, or the plain one
        for methods that only hook the model; a method with `attach` (attention mechanisms, the
        router, kvpress hooks) attaches per request. `request_kind` is what a task declares its
        requests to be (e.g. "retrieval"), for a router. Call `detach()` when done."""
        from ..methods import make_cache_fn

        lm = cls(model, tokenizer, lambda config: make_cache_fn(method, config)(), **kwargs)
        lm.method, lm.request_kind = method, request_kind
        if hasattr(method, "attach"):
            lm.route = lm._attach_for_request
        return lm

    def _attach_for_request(self, model, context_text=None, seq_len=None) -> None:
        # Plain mechanisms get no length: a window longer than a short request is full attention
        # there, not the configuration error it is for a sweep. The router sees both.
        if hasattr(self.method, "choose"):
            self.method.attach(model, context_text=context_text, seq_len=seq_len, kind=self.request_kind)
        else:
            self.method.attach(model, context_text=context_text)
        if getattr(self.method, "last", None):
            self.router_choices[self.method.last["choice"]] += 1

    def detach(self) -> None:
        if hasattr(self.method, "detach"):
            self.method.detach(self.model)

    # --- what lm-eval asks of a TemplateLM -------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # Same rule as HFLM: BOS conditions an empty context, EOS when there is no BOS.
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        if self._max_length:
            return self._max_length
        hf_tok = self.tokenizer if hasattr(self.tokenizer, "model_max_length") else None
        return resolve_max_length(self.model.config, hf_tok, default=DEFAULT_MAX_LENGTH)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        # HFLM's rules: an explicit flag wins, then `add_bos_token`, then the tokenizer's default;
        # a string that already starts with the BOS text gets no second BOS.
        if add_special_tokens is not None:
            special = {"add_special_tokens": add_special_tokens}
        elif self.add_bos_token is not None:
            special = {"add_special_tokens": self.add_bos_token}
        else:
            special = {}
        if add_special_tokens is None and has_bos_prefix(string, self.tok_decode([self.prefix_token_id], False)):
            special["add_special_tokens"] = False
        ids = list(self.tokenizer.encode(string, **special))
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        try:
            return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)
        except TypeError:  # ollm_bench's ByteTokenizer has no special-token option (it never decodes them)
            return self.tokenizer.decode(tokens)

    # --- scoring through the cache ---------------------------------------------------------------

    def _new_cache(self, request: list[int], to_generate: int = 0):
        """`request`: the tokens this cache will hold (context and scored continuation), plus up to
        `to_generate` more: a rolling window has a 1-token context but 2k scored tokens, and
        attention runs over all of them, so the router sees the whole request."""
        if self.route is not None:
            self.route(self.model, context_text=self.tok_decode(request), seq_len=len(request) + to_generate)
        return self.make_cache(self.model.config)

    def _score(self, prefix: list[int], tail: list[int]) -> tuple[float, bool]:
        """(log-likelihood of `tail` after `prefix`, whether greedy decoding yields `tail`)."""
        device = self.device
        cache = self._new_cache(prefix + tail)
        last = prefill(self.model, torch.tensor([prefix], device=device), cache, self.prefill_chunk)
        tap = _ArgmaxTap(self.model)
        target = torch.tensor([tail], device=device)
        nll, _ = score_tail(tap, target, cache, last, self.score_chunk)
        # Predictions for the tail: the prefill's last logits, then every tail position but the last.
        greedy = torch.cat([last.argmax(-1), *tap.argmax])[: len(tail)]
        return -float(nll[0]), bool((greedy == target[0]).all())

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        out = []
        for key, context_enc, continuation_enc in tqdm(requests, disable=disable_tqdm, desc="loglikelihood"):
            if not context_enc or not continuation_enc:
                raise ConfigError(f"loglikelihood request with an empty context or continuation: {key!r}")
            if len(continuation_enc) > self.max_length:
                raise ConfigError(f"continuation of {len(continuation_enc)} tokens exceeds max_length {self.max_length}")
            # HFLM's left truncation: keep the last max_length + 1 tokens (inputs are all but the last).
            whole = (context_enc + continuation_enc)[-(self.max_length + 1):]
            n = len(continuation_enc)
            result = self._score(whole[:-n], whole[-n:])
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (string,) in tqdm([req.args for req in requests], disable=disable_tqdm, desc="loglikelihood_rolling"):
            # The same disjoint windows HFLM scores (context_len=1), each through a fresh cache.
            windows = [
                (None, *make_disjoint_window(w))
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1,
                )
            ]
            total = sum(ll for ll, _ in self._loglikelihood_tokens(windows, disable_tqdm=True))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    @torch.inference_mode()
    def _greedy(self, context_enc: list[int], until: list[str], max_gen_toks: int) -> str:
        stop_ids = {self.eot_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        stop_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        cache = self._new_cache(context_enc, to_generate=max_gen_toks)
        logits = prefill(self.model, torch.tensor([context_enc], device=self.device), cache, self.prefill_chunk)
        generated: list[int] = []
        for _ in range(max_gen_toks):
            token = int(logits.argmax(-1))
            if token in stop_ids:
                break
            generated.append(token)
            if any(s and s in self.tok_decode(generated) for s in until):
                break
            logits = forward(self.model, torch.tensor([[token]], device=self.device), cache, logits_to_keep=1)[:, -1]
        return self.tok_decode(generated)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        out = []
        for context, gen_kwargs in tqdm([req.args for req in requests], disable=disable_tqdm, desc="generate_until"):
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            if kwargs.get("do_sample"):
                raise ConfigError("ollm_cache decodes greedily only; the task asks for do_sample=True")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_gen_toks = int(kwargs.pop("max_gen_toks"))
            if max_gen_toks >= self.max_length:
                raise ConfigError(f"max_gen_toks {max_gen_toks} leaves no room for context (max_length {self.max_length})")
            context_enc = self.tok_encode(context, left_truncate_len=self.max_length - max_gen_toks)
            text = postprocess_generated_text(self._greedy(context_enc, until, max_gen_toks), stop=until,
                                              think_end_token=None)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out

    # --- construction from lm-eval's `--model_args` ------------------------------------------------

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "CacheInLoopLM":
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @staticmethod
    def check_model_args(arg_dict: dict | None) -> dict:
        """MODEL_ARGS with model, optim and dtype filled in; an unknown key, optim or dtype is a
        `ConfigError` here, before anything loads (a missing model is one in `load_pretrained`)."""
        from ..methods import optim_names
        from ..models import DTYPE_BY_NAME

        args = dict(arg_dict or {})
        unknown = sorted(set(args) - set(MODEL_ARGS))
        if unknown:
            raise ConfigError(f"unknown ollm_cache model_args {unknown}; known: {', '.join(MODEL_ARGS)}")
        args.update({key: str(args.get(key, default)) for key, default in
                     (("model", "gemma3_270m"), ("optim", "baseline"), ("dtype", "float32"))})
        if args["optim"] not in optim_names():
            raise ConfigError(f"unknown optim {args['optim']!r} for ollm_cache; choose one of {', '.join(optim_names())}")
        if args["dtype"] not in DTYPE_BY_NAME:
            raise ConfigError(f"unknown dtype {args['dtype']!r} for ollm_cache; choose one of {', '.join(DTYPE_BY_NAME)}")
        return args

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "CacheInLoopLM":
        """`arg_dict`: MODEL_ARGS (model defaults to gemma3_270m, optim to baseline);
        `additional_config`: lm-eval's own `--device` and `--batch_size`."""
        from ..methods import build_scoring_method
        from ..models import DTYPE_BY_NAME, load_pretrained

        args = cls.check_model_args(arg_dict)
        extra = additional_config or {}
        if str(extra.get("batch_size") or 1) != "1":
            log.warning("ollm_cache scores one request at a time, each through its own cache: batch_size %s "
                        "has no effect", extra["batch_size"])
        source, optim, dtype = args.pop("model"), args.pop("optim"), args.pop("dtype")
        method = build_scoring_method(optim)
        loaded = load_pretrained(source, dtype=DTYPE_BY_NAME[dtype])
        model = loaded.model.to(_device(extra.get("device")))
        return cls.for_method(model, loaded.tokenizer, method, name=f"{source}/{optim}", **args)


def _device(requested: str | None) -> torch.device:
    """lm-eval's `--device` (its default is cuda:0); the CPU where CUDA is missing, as HFLM does."""
    if not requested:
        return torch.device("cpu")
    if str(requested).startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available: using the CPU", requested)
        return torch.device("cpu")
    try:
        return torch.device(requested)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {requested!r} for ollm_cache: {str(exc).splitlines()[0]}") from None


__all__ = ["CacheInLoopLM"]
