"""Answer extractors: pure functions from a model's raw output to a normalised answer string.

Each extractor takes the generated text and returns the answer it finds, normalised so that an
exact string comparison with the equally normalised gold answer is meaningful, or None when it
finds no answer. They are registered by name in `EXTRACTORS`; a task spec names one.

- `number`: GSM8K style. The number after the last `####`, else after the last "answer is", else
  the last number in the text (a number word such as "three" when there is no digit at all).
  Commas, `$`, units and trailing zeros go: "$1,234.50" -> "1234.5", "-3" -> "-3", "3/4" -> "3/4".
- `boxed`: MATH style. The content of the last `\\boxed{...}` (nested braces kept), else after
  "answer is", else the last number; normalised by `normalize_math`.
- `choice`: a choice letter A-E: "(B)", "B.", "The answer is C", "answer: (d)" -> "B"/"C"/"D".
- `short`: a short free answer: first clause, lower-cased, articles and punctuation stripped,
  leading chatter ("the shape is", "it is") dropped, yes/no kept, number words as digits.
- `identity`: the stripped text, whitespace collapsed.

`is_equiv(pred, gold)` compares math answers: equal after `normalize_math`, or numerically equal
when both parse as numbers (integers, decimals, a/b, \\frac{a}{b}, negatives).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

Extractor = Callable[[str], "str | None"]
EXTRACTORS: dict[str, Extractor] = {}


def register(name: str) -> Callable[[Extractor], Extractor]:
    def add(fn: Extractor) -> Extractor:
        EXTRACTORS[name] = fn
        return fn

    return add


# --- numbers -------------------------------------------------------------------------------

NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
}
# A number as people write it: optional sign, thousands separators or plain digits, decimals,
# an optional "/denominator". The look-behind keeps "x2" or "3.4.5" pieces from counting.
_NUM = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|(?<![\w.])-?\.\d+"
_NUM_RE = re.compile(_NUM)
_WORD_RE = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)


def normalize_number(text: str) -> str | None:
    """'$1,234.50' -> '1234.5', '-0' -> '0', '6/8' -> '3/4', '12 apples' -> '12'; None if no number."""
    text = text.replace("$", "").replace("\u2212", "-")
    m = _NUM_RE.search(text)
    if m is None:
        return None
    s = re.sub(r"[,\s]", "", m.group(0))
    if "/" in s:
        num, den = s.split("/")
        if float(den) == 0:
            return s
        f = Fraction(num) / Fraction(den)
        return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
        if s.startswith("-."):
            s = "-0" + s[1:]
        elif s.startswith("."):
            s = "0" + s
    if s in ("-0", "", "-"):
        s = "0"
    return s


def _last_number(text: str) -> str | None:
    found = _NUM_RE.findall(text.replace("$", "").replace("\u2212", "-"))
    if found:
        return normalize_number(found[-1])
    words = _WORD_RE.findall(text)
    return str(NUMBER_WORDS[words[-1].lower()]) if words else None


_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*", re.IGNORECASE)


def _after_answer_is(text: str) -> str | None:
    """The text after the last 'answer is' / 'answer:', up to the end of its sentence."""
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():]
    return re.split(r"\n|\.(?:\s|$)", rest, maxsplit=1)[0]


@register("number")
def final_number(text: str) -> str | None:
    """GSM8K: the number after '####', else after 'The answer is', else the last number."""
    if "####" in text:
        found = normalize_number(text.rsplit("####", 1)[1])
        if found is not None:
            return found
    tail = _after_answer_is(text)
    if tail is not None:
        found = normalize_number(tail)
        if found is not None:
            return found
    return _last_number(text)


# --- MATH: \boxed{} and normalisation ------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} with balanced braces; '\\boxed 5' too."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*", text)]
    for m in reversed(starts):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1:j]
                j += 1
            continue  # unbalanced: try an earlier one
        word = re.match(r"[^\s$]+", text[i:])
        if word:
            return word.group(0)
    return None


def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{2} -> \\frac{1}{2}, \\frac{1}2 -> \\frac{1}{2}."""
    out, i = "", 0
    while True:
        j = s.find("\\frac", i)
        if j < 0:
            return out + s[i:]
        out += s[i:j] + "\\frac"
        i = j + len("\\frac")
        for _ in range(2):  # numerator, denominator
            if i < len(s) and s[i] == "{":
                depth, k = 0, i
                while k < len(s):
                    depth += {"{": 1, "}": -1}.get(s[k], 0)
                    if depth == 0:
                        break
                    k += 1
                out += s[i:k + 1]
                i = k + 1
            elif i < len(s):
                out += "{" + s[i] + "}"
                i += 1


def _strip_text_wrappers(s: str) -> str:
    r"""\text{...}: a trailing unit after a value goes ('5\text{ cm}' -> '5'); else unwrapped."""
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{\s*\}", "", s)
    unit = re.match(r"^(.*?\S)\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z][a-zA-Z\s.^{}0-9]*\}$", s)
    if unit and re.search(r"[\d}]$", unit.group(1)):
        s = unit.group(1)
    return re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)


_UNIT_WORDS = (
    "degrees", "degree", "cm", "centimeters", "meters", "metres", "m", "km", "inches", "inch",
    "feet", "foot", "units", "unit", "square", "sq", "cents", "dollars", "hours", "minutes",
    "seconds", "days", "mph", "pounds", "percent",
)


def normalize_math(answer: str | None) -> str | None:
    """MATH answer normalisation (after Hendrycks et al. and the Minerva recipe)."""
    if answer is None:
        return None
    s = answer.strip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = re.sub(r"\\[,;:> ]", "", s)  # LaTeX spacing commands
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\displaystyle", "")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\u00b0", "", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = _strip_text_wrappers(s)
    s = re.sub(r"\s+(?:" + "|".join(_UNIT_WORDS) + r")\^?\d?\.?$", "", s)
    s = s.strip().rstrip(".").strip()
    if re.fullmatch(r"[a-zA-Z]{1,2}\s*=\s*[^=]+", s):  # "x = 5" -> "5"
        s = s.split("=", 1)[1].strip()
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)  # \sqrt2 -> \sqrt{2}
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if re.fullmatch(r"-?\d+/\d+", s):  # a/b -> \frac{a}{b}
        a, b = s.split("/")
        s = f"-\\frac{{{a[1:]}}}{{{b}}}" if a.startswith("-") else f"\\frac{{{a}}}{{{b}}}"
    if re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|-?\.\d+", s):  # plain numbers
        s = normalize_number(s) or s
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)  # ".5" inside expressions -> "0.5"
    return s


def to_number(answer: str | None) -> Fraction | float | None:
    """An answer as a number if it is one (5, -2.5, 3/4, \\frac{3}{4}, -\\frac34); else None."""
    s = normalize_math(answer)
    if not s:
        return None
    sign = 1
    if s.startswith("-"):
        sign, s = -1, s[1:]
    m = re.fullmatch(r"\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    try:
        if m:
            den = Fraction(m.group(2))
            return None if den == 0 else sign * Fraction(m.group(1)) / den
        if re.fullmatch(r"\d+(?:\.\d+)?|\.\d+", s):
            return sign * Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def is_equiv(pred: str | None, gold: str | None) -> bool:
    """Math answers equal: same normalised string, or the same number (1e-6 relative)."""
    if pred is None or gold is None:
        return False
    a, b = normalize_math(pred), normalize_math(gold)
    if a == b:
        return True
    x, y = to_number(pred), to_number(gold)
    if x is None or y is None:
        return False
    # exact arithmetic: a rambling answer's 400-digit number must not overflow a float
    return abs(x - y) <= Fraction(1, 10**6) * max(1, abs(y))


@register("boxed")
def boxed_answer(text: str) -> str | None:
    """MATH: the last \\boxed{} (normalised), else after 'The answer is', else the last number."""
    found = last_boxed(text)
    if found is None:
        tail = _after_answer_is(text)
        if tail is not None and tail.strip():
            found = tail.strip().strip("$").strip()
    if found is None:
        found = _last_number(text)
    return normalize_math(found) if found is not None else None


# --- multiple-choice letters ---------------------------------------------------------------

_CHOICE_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)?\s*:?\s*\(?([A-Ea-e])\)?(?![\w])", re.IGNORECASE),
    re.compile(r"\(([A-E])\)"),
    re.compile(r"^\s*([A-E])(?:[.):]|\s*$)"),
    re.compile(r"(?<![\w'])([A-E])(?:[.)]|\s*$)"),
]


@register("choice")
def choice_letter(text: str) -> str | None:
    """'(B)', 'B.', 'The answer is C', 'answer: (d)' -> the upper-case letter; else None."""
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            # an explicit "answer is" wins wherever it sits; otherwise the first letter given
            return (found[-1] if pattern is _CHOICE_PATTERNS[0] else found[0]).upper()
    return None


# --- short free-form answers ---------------------------------------------------------------

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_CHATTER = re.compile(
    r"^(?:the answer is|answer is|answer|it is|it's|this is|that is|these are|"
    r"(?:(?:the|this|that|it|there)\b[\w\s]{0,30}?\b(?:is|are|was|were)))\b\s*:?\s*"
)


def normalize_short(text: str) -> str:
    """Lower-case; number words as digits; articles, punctuation and extra spaces removed."""
    s = text.lower().strip()
    s = _WORD_RE.sub(lambda m: str(NUMBER_WORDS[m.group(1).lower()]), s)
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
    s = re.sub(r"[^\w\s.-]|(?<!\d)\.|\.(?!\d)", " ", s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


@register("short")
def short_answer(text: str) -> str | None:
    """First clause of the output as a short answer: 'Yes, it is.' -> 'yes', 'A circle.' ->
    'circle', 'The shape is a rectangle.' -> 'rectangle', 'three' -> '3'."""
    first = re.split(r"\n|[.!?;,](?:\s|$)", text.strip(), maxsplit=1)[0].strip()
    if not first:
        return None
    lowered = first.lower()
    yesno = re.match(r"(yes|no)\b", lowered)
    if yesno:
        return yesno.group(1)
    lowered = _CHATTER.sub("", lowered)
    out = normalize_short(lowered)
    return out or None


@register("identity")
def identity(text: str) -> str | None:
    out = " ".join(text.split())
    return out or None
