"""Content classifier: code / prose / structured / repetitive, from cheap text features.

Why: the attention router picks a mechanism per request, and what a request *is* matters more
than its length alone: templated logs are predictable from a short window, prose needs the
recent paragraphs, code refers back to definitions far away, records repeat a schema.

The model is transparent: 20 features computed in one pass over at most `MAX_CHARS` characters
(zlib compressibility, character classes, indentation, brackets, repeated line templates and
word 4-grams, line-length statistics), standardized with fixed means/scales, then a linear
softmax. The means, scales, weights and biases are data, `content_classifier.json` beside this
file, loaded at import: scikit-learn's multinomial logistic regression fitted by
`python -m optim.content_samples --fit` (`optim/content_fit.py`) on labeled samples from the
training half of each source. The JSON records that command and the held-out accuracy on other
files and on text from other sources.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

CLASSES = ("code", "prose", "structured", "repetitive")
MAX_CHARS = 8000  # features stabilize well before this; keeps classification ~1 ms

FEATURES = (
    "zlib_ratio",  # compressed / raw bytes: low for repetitive text
    "alpha",  # fraction of letters
    "digit",  # fraction of digits: high in records and logs
    "space",  # fraction of blanks (spaces, tabs)
    "punct",  # fraction of other punctuation
    "bracket",  # ()[]{} per char: code and JSON
    "quote",  # quote chars per char: JSON keys, code strings
    "colon_comma",  # ':' and ',' per char: records
    "indented",  # fraction of non-empty lines starting with whitespace
    "sentence",  # '. ' followed by a capital, per line: prose
    "code_tokens",  # code keywords/operators per line
    "dup_templates",  # fraction of lines whose digit-normalized form occurred before
    "dup_4grams",  # fraction of word 4-grams seen before
    "line_len_log",  # log mean line length
    "line_len_cv",  # std / mean of line lengths: low for generated lines
    "field_regularity",  # fraction of lines with the most common count of , ; | tab separators
    "stopwords",  # fraction of words that are common English function words: prose, comments, licences
    "key_value",  # '": ' or '=' pairs per line: JSON keys, key=value logs
    "key_lines",  # fraction of lines that start with a quoted key and a colon: JSON/YAML-ish records
    "code_lines",  # fraction of lines shaped like statements (def/return/#/decorators, ending in : ; { ) ])
)

_STOPWORDS = frozenset(
    "the of and to a in is that it for as with be on not this or by are from at an which but have you "
    "was we can they if will their would all there one so more what when any such may shall".split()
)

_CODE_TOKENS = re.compile(
    r"\b(def|return|import|class|self|elif|lambda|None|True|False|raise|yield|function|const|var|public|void)\b|==|!=|->|\+=|=>|::"
)
_SENTENCE = re.compile(r"[a-z][.!?]\s+[A-Z]")
_DIGITS = re.compile(r"\d+")
_KEY_VALUE = re.compile(r"\b\w+=\S")
_CODE_LINE = re.compile(
    r"^\s*(#|@\w|def |class |return\b|import |from [\w.]+ import|elif |else:|try:|except\b|raise |yield\b|self\.)"
    r"|[:;{}()\[\]]\s*$|^\s*\w+(\.\w+)*\s*[+\-*/]?=\s*\S"
)
_KEY_LINE = re.compile(r"""^\s*[{\[]?\s*["'][^"']{1,60}["']\s*:""")


def features(text: str) -> list[float]:
    """The raw features of `FEATURES`, in order. Empty text raises ValueError."""
    text = text[:MAX_CHARS]
    if not text.strip():
        raise ValueError("cannot classify empty text")
    n = len(text)
    raw = text.encode("utf-8", "replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    nl = max(len(lines), 1)
    count = lambda chars: sum(text.count(c) for c in chars)  # noqa: E731
    alpha = sum(c.isalpha() for c in text)
    digit = sum(c.isdigit() for c in text)
    space = count(" \t")
    brackets, quotes, colon_comma = count("()[]{}"), count("\"'`"), count(":,")
    punct = sum(not (c.isalnum() or c.isspace()) for c in text) - brackets - quotes - colon_comma

    seen, dups = set(), 0
    for ln in lines:
        key = _DIGITS.sub("0", ln.strip())
        dups += key in seen
        seen.add(key)
    words = text.split()
    grams = [tuple(words[i : i + 4]) for i in range(max(len(words) - 3, 0))]
    gseen, gdups = set(), 0
    for g in grams:
        gdups += g in gseen
        gseen.add(g)

    lengths = [len(ln) for ln in lines] or [0]
    mean = sum(lengths) / len(lengths)
    std = math.sqrt(sum((x - mean) ** 2 for x in lengths) / len(lengths))
    seps = [sum(ln.count(s) for s in ",;|\t") for ln in lines]
    mode = max(set(seps), key=seps.count) if seps else 0
    regular = sum(s == mode for s in seps) / nl if mode > 0 else 0.0
    return [
        len(zlib.compress(raw, 6)) / max(len(raw), 1),
        alpha / n,
        digit / n,
        space / n,
        punct / n,
        brackets / n,
        quotes / n,
        colon_comma / n,
        sum(ln[:1] in (" ", "\t") for ln in lines) / nl,
        len(_SENTENCE.findall(text)) / nl,
        len(_CODE_TOKENS.findall(text)) / nl,
        dups / nl,
        gdups / max(len(grams), 1),
        math.log1p(mean),
        std / mean if mean else 0.0,
        regular,
        sum(w.lower() in _STOPWORDS for w in words) / max(len(words), 1),
        (text.count('": ') + len(_KEY_VALUE.findall(text))) / nl,
        sum(bool(_KEY_LINE.match(ln)) for ln in lines) / nl,
        sum(bool(_CODE_LINE.search(ln)) for ln in lines) / nl,
    ]


# ---- fitted model: data beside the code (optim/content_fit.py writes it) -------------------------
def load_model(path: str | None = None) -> dict:
    """The fitted model (content_classifier.json); raises if it was fitted on other classes or features."""
    from .content_fit import MODEL_PATH, read_model

    model = read_model(path or MODEL_PATH)
    if tuple(model["classes"]) != CLASSES or tuple(model["features"]) != FEATURES:
        raise ValueError(f"{path or MODEL_PATH} was fitted on other classes/features; refit: {model.get('command')}")
    return model


MODEL = load_model()
MEANS, SCALES, WEIGHTS, BIASES = MODEL["means"], MODEL["scales"], MODEL["weights"], MODEL["biases"]


@dataclass(frozen=True)
class Classification:
    label: str
    probabilities: dict[str, float]
    features: dict[str, float]

    def explain(self, top: int = 3) -> str:
        """The features that pushed hardest toward the chosen class (standardized x weight)."""
        w = WEIGHTS[self.label]
        contrib = sorted(
            ((w[i] * (self.features[f] - MEANS[i]) / SCALES[i], f) for i, f in enumerate(FEATURES)), reverse=True
        )
        parts = ", ".join(f"{f}={self.features[f]:.3g} ({c:+.2f})" for c, f in contrib[:top])
        return f"{self.label} (p={self.probabilities[self.label]:.2f}): {parts}"


def softmax_scores(x: list[float], means, scales, weights, biases) -> dict[str, float]:
    z = [(v - m) / s for v, m, s in zip(x, means, scales)]
    logits = {c: biases[c] + sum(wi * zi for wi, zi in zip(weights[c], z)) for c in CLASSES}
    top = max(logits.values())
    exp = {c: math.exp(v - top) for c, v in logits.items()}
    total = sum(exp.values())
    return {c: v / total for c, v in exp.items()}


def classify(text: str) -> Classification:
    """Label `text` as one of `CLASSES`, with probabilities and the features used."""
    x = features(text)
    probs = softmax_scores(x, MEANS, SCALES, WEIGHTS, BIASES)
    label = max(probs, key=probs.get)
    return Classification(label, probs, dict(zip(FEATURES, x)))


__all__ = ["CLASSES", "FEATURES", "MODEL", "Classification", "classify", "features", "load_model", "softmax_scores"]
