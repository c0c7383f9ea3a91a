"""Documents: exact length, deterministic, and disjoint: no two documents of a cell share text."""

from pathlib import Path

import pytest

from ollm_bench.data import load_documents, source_items, token_hash
from ollm_bench.errors import DataError
from ollm_bench.models import ByteTokenizer

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"
needs_wikitext = pytest.mark.skipif(not (WIKITEXT / "test.txt").exists(),
                                    reason=f"WikiText-2 local copy not found at {WIKITEXT}")


@pytest.mark.parametrize("content", ["code", "prose", "structured", "repetitive"])
def test_documents_exact_length_deterministic_distinct(content):
    tok = ByteTokenizer()
    docs = load_documents(content, tok, 300, 3, seed=0)
    assert [len(d) for d in docs] == [300] * 3
    assert all(d.ids[0] == tok.bos_token_id for d in docs)
    assert docs == load_documents(content, tok, 300, 3, seed=0)
    assert len({d.hash for d in docs}) == 3 and all(d.hash == token_hash(d.ids) for d in docs)
    assert load_documents(content, tok, 300, 3, seed=1) != docs


def test_documents_are_consecutive_slices_of_one_stream():
    tok = ByteTokenizer()
    docs = load_documents("prose", tok, 257, 4)
    assert [d.stream_start for d in docs] == [0, 256, 512, 768]
    # Asking for more documents never changes the earlier ones (a cell can grow its n).
    assert load_documents("prose", tok, 257, 8)[:4] == docs


def test_repetitive_is_repetitive_and_prose_is_not():
    import zlib

    def ratio(text):
        return len(zlib.compress(text.encode())) / len(text.encode())

    assert ratio(source_items("repetitive")[0][:20000]) < 0.25 < ratio(source_items("prose")[0][:20000])


def test_impossible_requests_are_clear_errors():
    tok = ByteTokenizer()
    with pytest.raises(DataError, match="unknown content"):
        load_documents("poetry", tok, 10, 1)
    with pytest.raises(DataError, match="cannot supply 1 documents"):
        load_documents("structured", tok, 50_000_000, 1)
    with pytest.raises(DataError, match=r"enough for \d+"):
        load_documents("prose", tok, 100_000, 100)


def test_wikitext_without_a_copy_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("OLLM_BENCH_WIKITEXT", str(tmp_path))
    source_items.cache_clear()
    with pytest.raises(DataError, match="test.txt"):
        load_documents("wikitext", ByteTokenizer(), 100, 1)
    source_items.cache_clear()


@needs_wikitext
def test_wikitext_articles_and_calibration_split_are_disjoint():
    test, valid = source_items("wikitext", str(WIKITEXT)), source_items("wikitext", str(WIKITEXT), "valid")
    assert len(test) > 50 and len(valid) > 50
    assert all(a.startswith(" = ") and not a.startswith(" = = ") for a in test[:10])
    assert not set(test) & set(valid)


def _shingles(ids, k=64):
    return {tuple(ids[i : i + k]) for i in range(1, len(ids) - k + 1)}


@pytest.mark.integration
@pytest.mark.parametrize("content", ["code", "prose", "structured", "repetitive", "wikitext"])
@pytest.mark.parametrize("seq_len,n_docs", [(2048, 24), (8192, 12)])
def test_no_two_documents_of_a_cell_share_text_on_the_real_sources(gemma_tokenizer, content, seq_len, n_docs):
    """The cells the committed results use. Each document is its own consecutive slice of the
    content's token stream (rebuilt here from the source items), so no two share a source span; and
    at most a sliver of any document's 64-token runs appears in another (overlapping documents, as
    before, shared most of theirs; real code repeats a few lines of itself now and then)."""
    import random

    if content == "wikitext" and not (WIKITEXT / "test.txt").exists():
        pytest.skip(f"WikiText-2 local copy not found at {WIKITEXT}")
    path = str(WIKITEXT) if content == "wikitext" else None
    docs = load_documents(content, gemma_tokenizer, seq_len, n_docs, path=path)
    items = list(source_items(content, path))
    random.Random(0).shuffle(items)
    stream, need = [], n_docs * (seq_len - 1)
    for item in items:
        stream += gemma_tokenizer.encode(item + "\n\n", add_special_tokens=False)
        if len(stream) >= need:
            break
    for i, d in enumerate(docs):
        assert list(d.ids[1:]) == stream[i * (seq_len - 1) : (i + 1) * (seq_len - 1)]
    assert len({d.hash for d in docs}) == n_docs
    owner = {}
    for i, d in enumerate(docs):
        for sh in _shingles(d.ids):
            owner.setdefault(sh, set()).add(i)
    for i, d in enumerate(docs):
        mine = _shingles(d.ids)
        shared = sum(1 for sh in mine if len(owner[sh]) > 1)
        assert shared / len(mine) < 0.01, f"document {i} shares {shared} of {len(mine)} 64-token runs with others"


@pytest.fixture(scope="module")
def gemma_tokenizer():
    from transformers import AutoTokenizer

    from ollm_bench.models import packaged_model_dir

    return AutoTokenizer.from_pretrained(str(packaged_model_dir("gemma3_270m")))


def test_wikitext_without_a_copy_or_a_hub_fails_at_once_and_restores_online_mode(monkeypatch, tmp_path):
    """No local copy and no reachable hub: the clear error, without `datasets`' retries (it reads
    only its cache), and `datasets` is left in the mode it was in."""
    import datasets.config

    from ollm_bench import data

    monkeypatch.delenv("OLLM_BENCH_WIKITEXT", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # no cached copy either
    assert not data.hub_reachable(timeout_s=1)
    before = datasets.config.HF_HUB_OFFLINE
    source_items.cache_clear()
    with pytest.raises(DataError, match=r"set content.path \(or \$OLLM_BENCH_WIKITEXT\)"):
        load_documents("wikitext", ByteTokenizer(), 100, 1)
    assert datasets.config.HF_HUB_OFFLINE == before
    source_items.cache_clear()
