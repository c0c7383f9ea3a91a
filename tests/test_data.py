import pytest

from ollm_bench.data import load_documents, source_items
from ollm_bench.errors import DataError
from ollm_bench.models import ByteTokenizer


@pytest.mark.parametrize("content", ["code", "prose", "structured", "repetitive"])
def test_documents_exact_length_deterministic_distinct(content):
    tok = ByteTokenizer()
    docs = load_documents(content, tok, 300, 3, seed=0)
    assert [len(d) for d in docs] == [300] * 3
    assert all(d[0] == tok.bos_token_id for d in docs)
    assert docs == load_documents(content, tok, 300, 3, seed=0)
    assert len({tuple(d) for d in docs}) == 3
    assert load_documents(content, tok, 300, 3, seed=1) != docs


def test_repetitive_is_repetitive_and_prose_is_not():
    import zlib

    def ratio(text):
        return len(zlib.compress(text.encode())) / len(text.encode())

    assert ratio(source_items("repetitive")[0][:20000]) < 0.25 < ratio(source_items("prose")[0][:20000])


def test_impossible_requests_are_clear_errors():
    tok = ByteTokenizer()
    with pytest.raises(DataError, match="unknown content"):
        load_documents("poetry", tok, 10, 1)
    with pytest.raises(DataError, match="cannot supply"):
        load_documents("structured", tok, 50_000_000, 1)
    with pytest.raises(DataError, match="fewer than n_docs"):
        load_documents("structured", tok, 10, 99)
