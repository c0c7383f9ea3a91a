"""Request kinds from text (optim/request_kind.py), and calibration rows kept apart from test rows."""

import re

import pytest

from ollm_bench.tasks.build import ROLLING_CONTENTS, _niah_prompt, build_cloze, build_niah, build_rolling, niah_needle
from optim.content_samples import essay_files, labeled
from optim.request_kind import detect, request_kind

ESSAY = open(essay_files()[3], encoding="utf-8").read()[:6000]


@pytest.mark.parametrize("tail, rule", [
    (niah_needle("number", "Aurora", "123456")[1], "qa_scaffold"),
    (niah_needle("city", "Ember", "Oslo")[1], "qa_scaffold"),
    ("\nQ: who is mentioned first?\nA:", "qa_scaffold"),
    ("\n\nAccording to the text, where did the founders first meet?", "back_reference"),
    ("\n\nBased on the passage above, who wrote the first version?", "back_reference"),
    (" What is the special magic number mentioned in the text above?", "back_reference"),
    ("\n\nWhat is the name of the city where the meeting took place?", "final_question"),
    ('\n\n"Which company did the author sell in 1998?"', "final_question"),
])
def test_questions_about_the_text_are_retrieval(tail, rule):
    assert detect(ESSAY + tail) == request_kind(ESSAY + tail)
    assert (detect(ESSAY + tail).kind, detect(ESSAY + tail).rule) == ("retrieval", rule)


def test_no_false_retrieval_on_documents_and_task_texts():
    """Code, prose, records and logs of the classifier's samples, every rolling and cloze document
    (test and calibration rows), and essay windows cut mid-paragraph: all continuation."""
    texts = [t for split in ("train", "test") for t, _ in labeled(split)]
    for split in ("test", "calibration"):
        texts += [r["text"] for c in ROLLING_CONTENTS for r in build_rolling(c, split)]
        texts += [r["context"] for r in build_cloze(split)]
    for path in essay_files():
        essay = open(path, encoding="utf-8").read()
        texts += [essay[max(0, end - 8000):end] for end in range(3000, len(essay), 2500)]
    flagged = [t[-200:] for t in texts if detect(t).kind == "retrieval"]
    assert len(texts) > 1000 and flagged == []
    assert detect("").kind == "continuation" and request_kind("plain", declared="retrieval").rule == "declared"


class WordTokenizer:
    """Whitespace 'tokens' with offsets: enough for build_niah's bookkeeping, no model files."""

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        out = {"input_ids": [0] * (len(spans) + bool(add_special_tokens))}
        return out | ({"offset_mapping": spans} if return_offsets_mapping else {})


def test_calibration_rows_share_no_text_with_test_rows():
    for test, cal, field in [(build_rolling("prose"), build_rolling("prose", "calibration"), "text"),
                             (build_cloze(), build_cloze("calibration"), "context")]:
        assert len(cal) >= 10 and not {r[field] for r in test} & {r[field] for r in cal}
        assert not {r["source"] for r in test} & {r["source"] for r in cal}
    tok = WordTokenizer()
    test, cal = build_niah("4k", tok), build_niah("4k", tok, split="calibration")
    assert [r["depth"] for r in cal] == [r["depth"] for r in test] and len(cal) == 10
    assert all(r["test_overlap_chars"] == 0 for r in cal)  # the essays leave room at 4k
    for row in test + cal:  # every needle prompt ends with its question and is detected as retrieval
        assert row["input"].endswith(" is") and detect(row["input"]).rule == "qa_scaffold"
    assert not {r["input"] for r in test} & {r["input"] for r in cal}
    assert _niah_prompt("One. Two.", "N.", 1.0, "?").startswith("One. Two. N.")
