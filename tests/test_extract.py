"""Answer extractors on real-format answers: one parametrized case per table row."""

from __future__ import annotations

import pytest

from layercut.evaluation.extract import (
    EXTRACTORS,
    is_equiv,
    last_boxed,
    normalize_math,
    normalize_number,
    to_number,
)

# (extractor, model or gold text, expected extraction)
EXTRACT_TABLE = [
    # GSM8K gold solutions (test set, calculator marks removed) and model outputs
    ("number", ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day "
                "at the farmer\u2019s market.\n#### 18"), "18"),
    ("number", ("It takes 2/2=1 bolt of white fiber\nSo the total amount of fabric is 2+1=3 bolts "
                "of fabric\n#### 3"), "3"),
    ("number", ("The cost of the house and repairs came out to 80,000+50,000=$130,000\nHe "
                "increased the value of the house by 80,000*1.5=120,000\nSo the new value of the "
                "house is 120,000+80,000=$200,000\nSo he made a profit of 200,000-130,000=$70,000"
                "\n#### 70000"), "70000"),
    ("number", "So she has $1,234.50 left.\n#### $1,234.50", "1234.5"),
    ("number", "The temperature dropped to -5 degrees.\n#### -5", "-5"),
    ("number", "Each person gets 3/4 of a pizza.\n#### 3/4", "3/4"),
    ("number", "He ran 6 miles on Monday and 4 on Tuesday. The answer is 10.", "10"),
    ("number", "She pays 2 * 7.50 = 15.00 dollars. The answer is $15.00.", "15"),
    ("number", "First 12 + 8 = 20, then 20 / 4 = 5 apples per box.", "5"),
    ("number", "There are 3 dots.", "3"),
    ("number", "There are three dots.", "3"),
    ("number", "The total is 1,000,000 grains of rice", "1000000"),
    ("number", "The answer is: 0.50", "0.5"),
    ("number", "The value went from 10 to 7, a change of -3.", "-3"),
    ("number", "I don't know.", None),
    ("number", "#### 42\n\nQuestion: Tom has 5 apples", "42"),
    ("number", "The triangle's missing angle is 45\u00b0.", "45"),
    # MATH-500 gold solutions (\boxed{} with nested braces) and normalisation
    ("boxed", "Therefore, the polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
     "(3,\\frac{\\pi}{2})"),
    ("boxed", "=2+\\frac{5}{3}+1=\\boxed{\\frac{14}{3}}$", "\\frac{14}{3}"),
    ("boxed", "Therefore, $\\boxed{\\text{Evelyn}}$ is our answer.", "Evelyn"),
    ("boxed", "Hence, the angle between the lines is $\\boxed{90^\\circ}.$", "90"),
    ("boxed", "$\\sqrt{117} = \\boxed{3\\sqrt{13}}.", "3\\sqrt{13}"),
    ("boxed", "$\\sqrt{242} = \\sqrt{11^2} \\cdot \\sqrt2 = \\boxed{11\\sqrt2}$.", "11\\sqrt{2}"),
    ("boxed", "Our only solution is $\\boxed{x=5}$.", "5"),
    ("boxed", "$r = x - 1 = \\boxed{10}\\%$.", "10"),
    ("boxed", "The height of the cylinder is $\\boxed{5 \\text{ cm}}$.", "5"),
    ("boxed", "so $p = \\boxed{\\dfrac{3}{56}}$", "\\frac{3}{56}"),
    ("boxed", "the probability is $\\boxed{\\tfrac12}$", "\\frac{1}{2}"),
    ("boxed", "the total is \\boxed{\\$18.00}", "18"),
    ("boxed", "$(1-2)+(3-4)+ \\dots +(99-100) = 50(-1) = \\boxed{-50}.$", "-50"),
    ("boxed", "This gives us the roots $\\boxed{3, 5, 7}.$", "3,5,7"),
    ("boxed", "So $x = 3/4$. The answer is 3/4.", "\\frac{3}{4}"),
    ("boxed", "We get \\boxed{\\frac{\\sqrt{3}}{2}} and \\boxed{7}", "7"),
    ("boxed", "I think it is 12 or maybe 13", "13"),
    # multiple-choice letters
    ("choice", "(B)", "B"),
    ("choice", "B. The mitochondria", "B"),
    ("choice", "The answer is C", "C"),
    ("choice", "answer: (d)", "D"),
    ("choice", "Among the options, (A) is wrong, so the answer is (C).", "C"),
    ("choice", "I would pick D", "D"),
    ("choice", "No idea at all", None),
    # short answers (easy-VQA style) and model chatter
    ("short", "Rectangle.", "rectangle"),
    ("short", "A circle", "circle"),
    ("short", "Yes, it is red.", "yes"),
    ("short", "no", "no"),
    ("short", "The shape is a triangle.", "triangle"),
    ("short", "It is blue.", "blue"),
    ("short", "three", "3"),
    ("short", "The answer is: Gray!", "gray"),
    ("short", "black and white\nQuestion: next", "black and white"),
    ("short", "   ", None),
    ("identity", "  a  cat \n", "a cat"),
]


@pytest.mark.parametrize(("name", "text", "expected"), EXTRACT_TABLE,
                         ids=[f"{i}-{row[0]}" for i, row in enumerate(EXTRACT_TABLE)])
def test_extractors(name, text, expected):
    assert EXTRACTORS[name](text) == expected


EQUIV_TABLE = [
    ("\\frac{1}{2}", "0.5", True),
    ("1/2", "\\frac12", True),
    ("\\dfrac{3}{4}", "\\frac{3}{4}", True),
    ("0.75", "3/4", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("18.0", "18", True),
    ("1,000", "1000", True),
    ("\\sqrt2", "\\sqrt{2}", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("90^\\circ", "90", True),
    ("5\\%", "5", True),
    ("\\$18", "18", True),
    ("\\text{(C)}", "(C)", True),
    ("x = 7", "7", True),
    ("0.333", "1/3", False),
    ("2", "3", False),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    (None, "3", False),
]


@pytest.mark.parametrize(("pred", "gold", "same"), EQUIV_TABLE)
def test_is_equiv(pred, gold, same):
    assert is_equiv(pred, gold) is same
    assert is_equiv(gold, pred) is same or pred is None


def test_helpers():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("\\boxed 5 and more") == "5"
    assert last_boxed("\\boxed{unbalanced") is None
    assert last_boxed("nothing") is None
    assert normalize_number("-0.0") == "0"
    assert normalize_number("6/8") == "3/4"
    assert normalize_number(".5") == "0.5"
    assert normalize_math("\\frac12+\\frac1{3}") == "\\frac{1}{2}+\\frac{1}{3}"
    assert float(to_number("\\frac{-3}{4}")) == -0.75
    assert to_number("\\pi") is None
    assert to_number("1/0") is None
