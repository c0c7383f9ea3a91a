"""Build the offline lm-eval tasks' JSONL from the offline corpora of `ollm_bench.data`.

`python -m ollm_bench.tasks.build [--force] [TASK ...]` writes `ollm_bench/tasks/data/<task>.jsonl`
(or under $OLLM_BENCH_TASK_DATA);
the task loader (`loader.py`) calls the same code on first use, so nobody has to run it by hand.
The files are not committed: they are a pure function of the corpora (and, for NIAH, of the
Gemma-3 tokenizer), every choice below is seeded, and `data/build_info.json` records what built them.

Construction (also in README.md here):

* `ollm_rolling_<content>` (code, prose, structured, repetitive): each source item (in the
  seed-0 shuffled order `data.load_documents` uses) is cut at line ends into consecutive segments
  of at least `ROLLING_DOC_CHARS` characters; documents are taken round-robin over items
  (segment 0 of every item, then segment 1, ...) until `ROLLING_DOCS`, so every source item is
  represented before any item repeats. Scored as wikitext is: word/byte perplexity, bits per byte.
* `ollm_cloze_prose`: LAMBADA-style last-word prediction over the Paul Graham essays. A sentence
  is a target when its last word (letters only, >= 4 long, not a stop word) occurs earlier in the
  passage (the up to `CLOZE_CONTEXT_CHARS` characters of whole sentences before it) but nowhere
  else in the target sentence itself: the word is then recoverable from the long context, not
  from local syntax. At most `CLOZE_PER_ESSAY` targets per essay, at least `CLOZE_GAP_CHARS`
  apart; final punctuation is dropped as in LAMBADA. Metrics: accuracy (greedy) and perplexity.
* `ollm_niah_<1k|4k|8k|16k>`: needle in a haystack of essays. For each depth in `NIAH_DEPTHS` and
  each needle kind (a random 6-digit number; a city) one prompt: the haystack (essays from a
  seeded start) cut so that the whole prompt is at most the length in Gemma-3 tokens, the needle
  sentence inserted at the sentence end nearest to that depth, and a question whose answer
  prefix ends the prompt. Scored by greedy generation and exact match (whitespace ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from pathlib import Path

from ..data import source_items
from ..errors import DataError

DATA_ENV = "OLLM_BENCH_TASK_DATA"  # another folder for the JSONL (read-only installs, tests)


def data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or Path(__file__).resolve().parent / "data")


SEED = 0
ROLLING_CONTENTS = ("code", "prose", "structured", "repetitive")
ROLLING_DOCS = 24
ROLLING_DOC_CHARS = 4000
CLOZE_CONTEXT_CHARS = 1500
CLOZE_MIN_CONTEXT_CHARS = 600
CLOZE_PER_ESSAY = 3
CLOZE_GAP_CHARS = 4000
NIAH_LENGTHS = {"1k": 1024, "4k": 4096, "8k": 8192, "16k": 16384}
NIAH_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
CALIBRATION_MIN_ROWS = 10
CALIBRATION = "_calibration"  # task-name suffix of the calibration variant (rows never in the test data)

STOPWORDS = set("""
about above after again against also because been before being below between both could does doing down
during each even ever from further have having here into itself just know like made make many more most much
must only other over same should some such than that their them then there these they thing things think this
those through time under until very want well were what when where which while will with would your yours
""".split())
CITIES = ["Lisbon", "Nairobi", "Oslo", "Montreal", "Kyoto", "Santiago", "Reykjavik", "Marrakesh", "Tallinn",
          "Hanoi", "Porto", "Valparaiso", "Edinburgh", "Krakow", "Tbilisi", "Cusco", "Zanzibar", "Bergen"]
KEYS = ["Aurora", "Basalt", "Cobalt", "Driftwood", "Ember", "Falcon", "Glacier", "Harbor", "Indigo", "Juniper",
        "Kestrel", "Lantern", "Meridian", "Nimbus", "Obsidian", "Pinnacle", "Quartz", "Riverstone"]


def _shuffled(content: str) -> list[str]:
    items = list(source_items(content))
    order = list(range(len(items)))
    random.Random(SEED).shuffle(order)  # the order data.load_documents uses for seed 0
    return [items[i] for i in order]


def _segments(text: str, min_chars: int) -> list[str]:
    """Consecutive pieces of `text`, cut at line ends, each at least `min_chars` long (tail dropped)."""
    out, piece = [], []
    size = 0
    for line in text.splitlines(keepends=True):
        piece.append(line)
        size += len(line)
        if size >= min_chars:
            chunk = "".join(piece).strip("\n")
            if chunk.strip():
                out.append(chunk)
            piece, size = [], 0
    return out


def build_rolling(content: str, split: str = "test") -> list[dict]:
    """The test rows are the first ROLLING_DOCS of the round-robin; calibration rows the next ones."""
    per_item = [_segments(item, ROLLING_DOC_CHARS) for item in _shuffled(content)]
    rows = []
    for seg in range(max(map(len, per_item))):
        for i, segments in enumerate(per_item):
            if seg < len(segments) and len(rows) < 2 * ROLLING_DOCS:
                rows.append({"text": segments[seg], "source": f"{content}:item{i}:seg{seg}"})
    test, calibration = rows[:ROLLING_DOCS], rows[ROLLING_DOCS:]
    if len(test) < ROLLING_DOCS or (split == "calibration" and len(calibration) < CALIBRATION_MIN_ROWS):
        raise DataError(f"content {content!r} yields only {len(rows)} rolling documents, need {ROLLING_DOCS} "
                        f"(+ {CALIBRATION_MIN_ROWS} for calibration)")
    return test if split == "test" else calibration


_SENT_END = re.compile(r"(?<=[.!?])\s+")
_LAST_WORD = re.compile(r"(?<= )([A-Za-z]+)[.!?]$")  # a space before it: the target is " word"


def build_cloze(split: str = "test") -> list[dict]:
    """Test rows: the first CLOZE_PER_ESSAY targets of each essay; calibration rows: the next
    CLOZE_PER_ESSAY (CLOZE_GAP_CHARS further on, so no passage shares text with a test passage)."""
    skip = 0 if split == "test" else CLOZE_PER_ESSAY
    rows = []
    for e, essay in enumerate(source_items("prose")):
        text = re.sub(r"[ \t]+", " ", essay)
        starts = [0] + [m.end() for m in _SENT_END.finditer(text)]
        taken, last_at = 0, -CLOZE_GAP_CHARS
        for k in range(1, len(starts) - 1):
            s0, s1 = starts[k], starts[k + 1]
            sentence = text[s0:s1].rstrip()
            m = _LAST_WORD.search(sentence)
            if not m or s0 - last_at < CLOZE_GAP_CHARS or s0 < CLOZE_MIN_CONTEXT_CHARS:
                continue
            word = m.group(1)
            if len(word) < 4 or word.lower() in STOPWORDS:
                continue
            # The passage starts at the first sentence start within CLOZE_CONTEXT_CHARS before the target.
            begin = next(p for p in starts if p >= s0 - CLOZE_CONTEXT_CHARS)
            before = text[begin:s0]
            pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
            in_sentence = len(pattern.findall(sentence[: m.start(1)]))
            if not pattern.search(before) or in_sentence or len(before) < CLOZE_MIN_CONTEXT_CHARS:
                continue
            if taken >= skip:
                rows.append({"context": text[begin : s0 + m.start(1)].rstrip(" "), "target": " " + word,
                             "source": f"prose:essay{e}:char{s0}"})
            taken, last_at = taken + 1, s0
            if taken == skip + CLOZE_PER_ESSAY:
                break
    if len(rows) < (50 if split == "test" else CALIBRATION_MIN_ROWS):
        raise DataError(f"the essays yield only {len(rows)} cloze passages")
    return rows


def _gemma_tokenizer():
    from transformers import AutoTokenizer

    from ..models import packaged_model_dir

    return AutoTokenizer.from_pretrained(str(packaged_model_dir("gemma3_270m")))


def _niah_prompt(haystack: str, needle: str, depth: float, question: str) -> str:
    """`haystack` with `needle` at the sentence end nearest `depth`, then the question."""
    if depth >= 1.0:
        at = len(haystack)
    else:
        ends = [0] + [m.start() + 1 for m in re.finditer(r"[.!?](?=\s)", haystack)]
        at = min(ends, key=lambda p: abs(p - depth * len(haystack)))
    return f"{haystack[:at].rstrip()} {needle} {haystack[at:].lstrip()}".strip() + question


def niah_needle(kind: str, key: str, answer: str) -> tuple[str, str]:
    """(needle sentence, question ending in the answer prefix) of a NIAH prompt."""
    if kind == "number":
        return (f"The special magic number for {key} is {answer}.",
                f"\n\nQuestion: What is the special magic number for {key} mentioned in the text above?"
                f"\nAnswer: The special magic number for {key} is")
    return (f"The secret meeting place for {key} is {answer}.",
            f"\n\nQuestion: Where is the secret meeting place for {key} mentioned in the text above?"
            f"\nAnswer: The secret meeting place for {key} is")


class _Haystacks:
    """The shuffled essays, doubled (so a late start still finds enough text), tokenized once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        essays = _shuffled("prose")
        self.n_essays = len(essays)
        self.corpus = "\n\n".join(essays * 2)
        self.period = len("\n\n".join(essays)) + 2  # where the second copy starts
        self.offsets = tokenizer(self.corpus, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        starts, pos = [], 0
        for essay in essays:
            starts.append(pos)
            pos += len(essay) + 2
        self.first_token = []  # index of each essay's first token
        j = 0
        for t, (a, _) in enumerate(self.offsets):
            while j < len(starts) and starts[j] <= a:
                self.first_token.append(t)
                j += 1

    def span(self, first: int, n: int) -> tuple[int, int]:
        return self.offsets[first][0], self.offsets[first + n - 1][1]

    def overlap(self, span: tuple[int, int], others: list[tuple[int, int]]) -> int:
        """Characters `span` shares with `others`, as positions in the single (undoubled) corpus."""
        def pieces(s):
            lo = s[0] % self.period
            hi = lo + s[1] - s[0]
            return [(lo, min(hi, self.period))] + ([(0, hi - self.period)] if hi > self.period else [])
        return sum(max(0, min(x1, y1) - max(x0, y0)) for o in others for x0, x1 in pieces(span) for y0, y1 in pieces(o))


def build_niah(length_name: str, tokenizer=None, split: str = "test") -> list[dict]:
    """Test rows, or calibration rows: another seed (other keys, answers and haystack starts), each
    haystack the one of 200 seeded draws that shares the least text with the test prompts of the
    same length (none while the essays leave room; the overlap is recorded per row as
    `test_overlap_chars`)."""
    hay = _Haystacks(tokenizer or _gemma_tokenizer())
    if split == "test":
        return [r for r, _ in _niah_rows(hay, length_name, random.Random(f"niah-{length_name}"))]
    avoid = [span for _, span in _niah_rows(hay, length_name, random.Random(f"niah-{length_name}"))]
    rows = _niah_rows(hay, length_name, random.Random(f"niah-{length_name}{CALIBRATION}"), avoid)
    return [r | {"test_overlap_chars": hay.overlap(span, avoid)} for r, span in rows]


def _niah_rows(hay: _Haystacks, length_name: str, rng: random.Random, avoid=None) -> list[tuple[dict, tuple]]:
    budget, tokenizer = NIAH_LENGTHS[length_name], hay.tokenizer
    rows = []
    for d, depth in enumerate(NIAH_DEPTHS):
        for kind in ("number", "city"):
            key = rng.choice(KEYS)
            answer = f"{rng.randrange(100_000, 1_000_000)}" if kind == "number" else rng.choice(CITIES)
            needle, question = niah_needle(kind, key, answer)
            first = hay.first_token[rng.randrange(hay.n_essays)]
            n_hay = budget - len(tokenizer(needle + question, add_special_tokens=False)["input_ids"]) - 4
            if avoid:
                draws = [first] + [hay.first_token[rng.randrange(hay.n_essays)] for _ in range(199)]
                first = min(draws, key=lambda f: hay.overlap(hay.span(f, n_hay), avoid))
            while True:  # shrink until the whole prompt (with BOS) fits the budget
                haystack = hay.corpus[slice(*hay.span(first, n_hay))]
                haystack = haystack[: max(m.end() for m in re.finditer(r"[.!?](?=\s)", haystack))]  # whole sentences
                prompt = _niah_prompt(haystack, needle, depth, question)
                n_tokens = len(tokenizer(prompt)["input_ids"])
                if n_tokens <= budget:
                    break
                n_hay -= n_tokens - budget
            rows.append(({"input": prompt, "answer": answer, "kind": kind, "depth": depth, "length": budget,
                          "n_tokens": n_tokens, "source": f"prose:token{first}:d{d}"}, hay.span(first, n_hay)))
    return rows


BUILDERS = {}
for _split, _suffix in (("test", ""), ("calibration", CALIBRATION)):
    BUILDERS.update({f"ollm_rolling_{c}{_suffix}": (lambda c=c, s=_split: build_rolling(c, s)) for c in ROLLING_CONTENTS})
    BUILDERS[f"ollm_cloze_prose{_suffix}"] = lambda s=_split: build_cloze(s)
    BUILDERS.update({f"ollm_niah_{n}{_suffix}": (lambda n=n, s=_split: build_niah(n, split=s)) for n in NIAH_LENGTHS})


def data_path(task: str) -> Path:
    return data_dir() / f"{task}.jsonl"


def write_task(task: str, force: bool = False) -> Path:
    """Build `task`'s JSONL unless it exists; the write is atomic (a killed build leaves no half file)."""
    if task not in BUILDERS:
        raise DataError(f"no builder for task {task!r}; known: {sorted(BUILDERS)}")
    path = data_path(task)
    if path.exists() and not force:
        return path
    rows = BUILDERS[task]()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.partial")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    _record(task, rows)
    return path


def _record(task: str, rows: list[dict]) -> None:
    import platform

    info_path = data_dir() / "build_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[task] = {"rows": len(rows), "python": platform.python_version(), "seed": SEED}
    info_path.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="build the offline lm-eval tasks' JSONL")
    parser.add_argument("tasks", nargs="*", help=f"default: all of {sorted(BUILDERS)}")
    parser.add_argument("--force", action="store_true", help="rebuild files that exist")
    args = parser.parse_args(argv)
    for task in args.tasks or sorted(BUILDERS):
        path = write_task(task, force=args.force)
        n = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"{task}: {n} rows, {path.stat().st_size / 1024:.0f} KiB -> {path}")


if __name__ == "__main__":
    main()
