"""Content classifier: code / prose / structured / repetitive, from cheap text features.

Why: the attention router picks a mechanism per request, and what a request *is* matters more
than its length alone: templated logs are predictable from a short window, prose needs the
recent paragraphs, code refers back to definitions far away, records repeat a schema.

The model is transparent: 20 features computed in one pass over at most `MAX_CHARS` characters
(zlib compressibility, character classes, indentation, brackets, repeated line templates and
word 4-grams, line-length statistics), standardized with fixed means/scales, then a linear
softmax with fixed coefficients. The constants below were fitted by
`python -m optim.content_samples --fit` (multinomial logistic regression, L2, deterministic full-
batch gradient descent) on labeled samples from the training half of each source; the same
script reports held-out accuracy on other files and on text from other sources.
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


# ---- fitted constants (python -m optim.content_samples --fit) --------------------------------
MEANS = [0.3695, 0.5757, 0.07841, 0.19804, 0.04816, 0.01434, 0.03086, 0.03067, 0.40723, 0.18052, 0.2611, 0.22958, 0.05348, 3.98616, 0.39971, 0.14869, 0.20813, 0.97656, 0.12621, 0.43164]
SCALES = [0.11439, 0.19379, 0.14189, 0.08163, 0.03933, 0.01292, 0.05471, 0.03694, 0.42155, 0.37807, 0.46379, 0.33538, 0.09208, 0.59789, 0.19044, 0.31435, 0.13433, 4.03417, 0.30999, 0.35862]
WEIGHTS = {
    'code': [0.03005, 0.36215, -0.479, -0.10805, -0.00743, 0.29025, 0.10731, -0.27604, 0.37492, -0.25125, 0.06998, -0.49891, 0.15132, -0.54131, 0.22719, 0.07536, 0.16847, -0.25595, -0.15371, 0.90559],
    'prose': [0.59581, 0.31813, -0.24848, -0.07986, 0.2112, -0.38171, -0.19618, -0.17517, -0.03823, 0.41194, 0.29769, -0.35699, -0.31565, 0.28893, -0.41241, -0.18177, 0.41314, -0.00529, -0.16205, -0.97766],
    'structured': [-0.06191, -0.67489, 0.36327, 0.39891, -0.00728, 0.19381, 0.33994, 0.66882, -0.03196, -0.03089, -0.19932, 0.2143, -0.11927, 0.22777, 0.57962, 0.50211, -0.40795, 0.30983, 0.48171, 0.16333],
    'repetitive': [-0.56396, -0.00538, 0.3642, -0.211, -0.19648, -0.10236, -0.25106, -0.21761, -0.30472, -0.1298, -0.16835, 0.64161, 0.2836, 0.0246, -0.3944, -0.3957, -0.17365, -0.04858, -0.16594, -0.09126],
}
BIASES = {'code': 1.5072, 'prose': 0.40916, 'structured': -0.94154, 'repetitive': -0.97483}
# ---- end of fitted constants -----------------------------------------------------------------


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


__all__ = ["CLASSES", "FEATURES", "Classification", "classify", "features"]
