"""The evaluation grader (eval_reward) of every GRPO script: the gold boxed verbatim is always right; lists, tuples,
intervals and unions are graded as math-verify grades them with both sides read as LaTeX; plain numbers (1,000
included) keep the official expression parsing. Each script carries its own copy, so each copy is tested."""

import importlib
import json
import os

import pytest
from math_verify import LatexExtractionConfig, parse, verify

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["discrete_grpo", "sofT_grpo", "discrete_grpo_fsdp", "sofT_grpo_fsdp"]


@pytest.fixture(scope="module", params=SCRIPTS)
def M(request):
    """The script whose eval_reward a test checks; a script that does not exist (yet) is skipped."""
    try:
        return importlib.import_module(request.param)
    except ModuleNotFoundError as e:
        if e.name != request.param:  # a missing dependency of an existing script is a failure, not a skip
            raise
        pytest.skip(f"{request.param}.py does not exist")


def boxed(answer):
    return f"Thinking.\n</think> The answer is \\boxed{{{answer}}}."


def latex_grade(M, gold, pred):
    """math-verify's own verdict with the gold read as LaTeX and the answer under the official settings."""
    g = parse(f"${gold}$", [LatexExtractionConfig()], parsing_timeout=M.GRADER_TIMEOUT_S)
    p = parse(
        f"\\boxed{{{pred}}}", M.ANSWER_EXTRACTION, extraction_mode="first_match", parsing_timeout=M.GRADER_TIMEOUT_S
    )
    return float(bool(g) and bool(p) and verify(g, p, timeout_seconds=M.GRADER_TIMEOUT_S))


def test_every_gold_boxed_verbatim_is_correct(M):
    """tests/data/gold_answers.jsonl: competition-style gold answers in the formats graders trip on (fractions written
    \\frac43, units, intervals, tuples, sets, comma-separated multiple answers, thousands separators), a sample."""
    with open(os.path.join(REPO, "tests", "data", "gold_answers.jsonl")) as f:
        golds = [json.loads(line)["answer"] for line in f]
    assert len(golds) >= 50
    wrong = [gold for gold in golds if M.eval_reward(boxed(gold), gold) != 1.0]
    assert wrong == []


@pytest.mark.parametrize(
    "gold",
    [
        "1,3",
        "2,3,4",
        "-2,1",
        "1,-2",
        "3, 5, 7",
        "\\{1\\pm\\sqrt{5},-2\\}",
        "(6,31,-1)",
        "(-2,1)",
        "(3,4]",
        "(2,\\infty)",
        "x \\in [-2,7]",
        "(0,9) \\cup (9,36)",
        "(-\\infty, 2) \\cup (3, \\infty)",
        # malformed operators, which the official answer settings do not repair: only the verbatim gold passes
        "\\frac43",
        "\\frac 34",
        "11\\sqrt2",
    ],
)
def test_gold_verbatim_up_to_whitespace_is_correct(M, gold):
    assert M.eval_reward(boxed(gold), gold) == 1.0
    assert M.eval_reward(boxed(f"  {gold.replace(' ', '   ')} "), gold) == 1.0


# (gold, answer, grade): math-verify reads a bare list 1,3 and \{1,3\} as a set, compared in any order; (a,b,c) is a
# tuple and an open interval (a,b) with a < b is compared as the pair (a,b), both in order; a list answered for a
# tuple is read in the order written. Closed ends, unions and relations (x>2) follow sympy's sets.
LIST_CASES = [
    ("1,3", "1, 3", 1.0),
    ("1,3", "3,1", 1.0),
    ("1,3", "\\{3, 1\\}", 1.0),
    ("1,3", "(3,1)", 1.0),
    ("1,3", "x=1,3", 1.0),
    ("1,3", "1 \\text{ and } 3", 1.0),
    ("1,3", "1.3", 0.0),  # what 1,3 read as one number gives
    ("1,3", "13", 0.0),
    ("1,3", "1", 0.0),
    ("1,3", "1,2", 0.0),
    ("1,3", "1,3,5", 0.0),
    ("1,3", "[1,3]", 0.0),
    ("2,3,4", "4,3,2", 1.0),
    ("2,3,4", "\\{2,3,4\\}", 1.0),
    ("2,3,4", "2.3", 0.0),
    ("2,3,4", "2,3", 0.0),
    ("-2,1", "1, -2", 1.0),
    ("-2,1", "-2.1", 0.0),
    ("-2,1", "2,-1", 0.0),
    ("3, 5, 7", "7,5,3", 1.0),
    ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1+\\sqrt{5}, 1-\\sqrt{5}", 1.0),
    ("\\{1\\pm\\sqrt{5},-2\\}", "1+\\sqrt5,-2", 0.0),
    ("(6,31,-1)", "6,31,-1", 1.0),
    ("(6,31,-1)", "(6, 31, -1)", 1.0),
    ("(6,31,-1)", "(-1,31,6)", 0.0),
    ("(15,-29)", "\\left(15,-29\\right)", 1.0),
    ("(15,-29)", "(-29,15)", 0.0),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "3,\\pi/2", 1.0),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(\\frac{\\pi}{2},3)", 0.0),
    ("(-2,1)", "-2,1", 1.0),
    ("(-2,1)", "(1,-2)", 0.0),
    ("(-2,1)", "[-2,1]", 0.0),
    ("(3,4]", "\\left(3,4\\right]", 1.0),
    ("(3,4]", "x \\in (3,4]", 1.0),
    ("(3,4]", "(3,4)", 0.0),
    ("(3,4]", "3<x\\le4", 0.0),
    ("(2,\\infty)", "(2,\\infty]", 1.0),  # sympy makes an infinite end open
    ("(2,\\infty)", "[2,\\infty)", 0.0),
    ("(2,\\infty)", "x>2", 0.0),
    ("x \\in [-2,7]", "[-2,7]", 1.0),
    ("x \\in [-2,7]", "(-2,7)", 0.0),
    ("(0,9) \\cup (9,36)", "(9,36)\\cup(0,9)", 1.0),
    ("(0,9) \\cup (9,36)", "(0,36)", 0.0),
    ("(0,9) \\cup (9,36)", "(0,9)\\cup[9,36)", 0.0),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,2)", 1.0),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2]\\cup[3,\\infty)", 0.0),
]


@pytest.mark.parametrize("gold,answer,grade", LIST_CASES)
def test_lists_tuples_intervals_and_unions_are_graded_as_math_verify_does(M, gold, answer, grade):
    assert M.eval_reward(boxed(answer), gold) == grade == latex_grade(M, gold, answer)


@pytest.mark.parametrize(
    "gold,answer,grade",
    [
        ("1,000", "1000", 1.0),
        ("1,000", "10^3", 1.0),
        ("1,000", "1,001", 0.0),
        ("1,000", "1, 000", 0.0),  # with a space it is the list 1, 0
        ("1,450,000", "1450000", 1.0),
        ("58,500", "58500.0", 1.0),
        ("58,500", "58.5", 0.0),
        ("72", "72.0", 1.0),
        ("72", "\\frac{144}{2}", 1.0),
        ("72", "71", 0.0),
        ("-0.25", "-\\frac{1}{4}", 1.0),
        ("\\frac 34", "0.75", 1.0),
        ("\\frac 34", "\\frac34", 0.0),  # malformed and not the gold verbatim: the official settings reject it
    ],
)
def test_numbers_keep_the_official_parsing(M, gold, answer, grade):
    assert M.eval_reward(boxed(answer), gold) == grade
