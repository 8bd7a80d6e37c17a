"""Issue 23's branching-thought toy (--toy-branching): the rows' arithmetic, slips and orders; the default toy left
as it was (its rows and its cached base model's folder); the same toy lines in all four GRPO files; the statistics
and the grid that measure and run it."""

import ast
import hashlib
import json
import os
import random
import re
import sys

import pytest
import torch

import discrete_grpo
import discrete_grpo_fsdp
import sofT_grpo
import sofT_grpo_fsdp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
MODULES = [discrete_grpo, discrete_grpo_fsdp, sofT_grpo, sofT_grpo_fsdp]
BRANCHING = dict(toy_branching=True, toy_num_ops=3)
# The default toy before issue 23: its rows' hash and its base model's cache folder (the SFT'd weights live there)
DEFAULT_ROWS_SHA256 = "6c3546844689c64ec0c0f91aad9f5f8fde6e04131db60c4cdcf04d17dcab6d62"
DEFAULT_CACHE_FOLDER = "toy-base-a419a9cb91d7"


def parse(row):
    """(terms of the problem, [(term added, line result)], boxed answer) of a branching row."""
    terms = [int(t) for t in re.fullmatch(r"Compute ([\d+]+)\.", row["problem"]).group(1).split("+")]
    thinking, answer = row["solution"].split("\n</think> ")
    lines = []
    for i, line in enumerate(thinking.split("\n")):
        m = re.fullmatch(r"(\d+)\+(\d+)=(\d+)" if i == 0 else r"\+(\d+)=(\d+)", line)
        assert m, line
        if i == 0:
            lines += [(int(m.group(1)), None), (int(m.group(2)), int(m.group(3)))]
        else:
            lines.append((int(m.group(1)), int(m.group(2))))
    return terms, lines, re.fullmatch(r"\\boxed\{(\d+)\}", answer).group(1)


def slips(lines):
    """[(true result of the line from its own inputs, slipped?)] per line: a slip writes that result plus one."""
    out, running = [], lines[0][0]
    for term, written in lines[1:]:
        assert written in (running + term, running + term + 1), (running, term, written)  # right, or the slip
        out.append((running + term, written == running + term + 1))
        running = written  # the next line builds on what was written: a slip is carried forward
    return out


@pytest.fixture(scope="module")
def rows():
    train, held_out = discrete_grpo.toy_splits(discrete_grpo.Args(**BRANCHING))
    return train, held_out


def test_every_line_is_right_but_the_slip_and_the_answer_boxes_the_last_line(rows):
    train, held_out = rows
    assert len(held_out) == 1000 and len(train) > 3000
    assert not {r["problem"] for r in train} & {r["problem"] for r in held_out}
    for r in train + held_out[:200]:
        terms, lines, boxed = parse(r)
        assert sorted(t for t, _ in lines) == sorted(terms) and len(terms) == 4  # every term once, 3 operations
        slipped = [s for _, s in slips(lines)]
        assert boxed == str(lines[-1][1])  # the answer boxes the last thinking line, no slip of its own
        assert r["answer"] == str(sum(terms))
        assert int(boxed) == sum(terms) + sum(slipped)  # every slip carried forward to the end
        assert discrete_grpo.math_reward(r["solution"], r["answer"]) == float(not any(slipped))


class FixedTerms(random.Random):
    """A seeded rng whose randint returns the given terms: one problem, the order and the slips still random."""

    def __init__(self, seed, terms):
        super().__init__(seed)
        self.terms = iter(terms)

    def randint(self, a, b):
        return next(self.terms)


def test_one_problem_is_worked_in_several_orders():
    args = discrete_grpo.Args(**BRANCHING)
    orders = set()
    for seed in range(200):
        row = discrete_grpo.branching_row(FixedTerms(seed, [7, 5, 3, 8]), args)
        assert row["problem"] == "Compute 7+5+3+8."
        orders.add(tuple(t for t, _ in parse(row)[1]))
    assert len(orders) == 24  # all 4! orders of four distinct terms occur


def test_the_slip_rate_depends_on_the_path(rows):
    """A line slips with toy_branching_slip[1] if its true result has two digits, else [0]; the data hold both rates,
    and small terms first (fewer two-digit lines) leaves the teacher right more often."""
    lo, hi = discrete_grpo.Args().toy_branching_slip
    assert (lo, hi) == (0.1, 0.3)
    by_digits = {False: [], True: []}
    for r in rows[0]:
        for result, slipped in slips(parse(r)[1]):
            by_digits[result >= 10].append(slipped)
    for two_digits, rate in ((False, lo), (True, hi)):
        seen = sum(by_digits[two_digits]) / len(by_digits[two_digits])
        assert abs(seen - rate) < 0.03, (two_digits, seen, len(by_digits[two_digits]))
    args = discrete_grpo.Args(**BRANCHING, toy_branching_slip=(0.0, 1.0))  # a slip exactly on the two-digit lines
    for seed in range(50):
        row = discrete_grpo.branching_row(FixedTerms(seed, [9, 1, 2, 3]), args)
        lines = parse(row)[1]
        two_digit_lines = sum(result >= 10 for result, _ in slips(lines))
        assert (two_digit_lines == 1) == (lines[-1][0] == 9)  # only the orders that add the 9 last keep one
        assert int(parse(row)[2]) == 15 + two_digit_lines


@pytest.mark.parametrize("M", MODULES, ids=[m.__name__ for m in MODULES])
def test_the_default_toy_is_unchanged_by_the_new_flags(M, tmp_path, monkeypatch):
    rows = M.toy_splits(M.Args())
    assert hashlib.sha256(json.dumps(list(rows)).encode()).hexdigest() == DEFAULT_ROWS_SHA256
    assert M.toy_splits(M.Args(toy_branching_slip=(0.5, 0.5))) == rows  # the branching flags do not reach it
    # the cache folder: the default flags (and branching flags without --toy-branching) find today's cached model
    (tmp_path / DEFAULT_CACHE_FOLDER).mkdir()
    (tmp_path / DEFAULT_CACHE_FOLDER / "config.json").write_text("{}")

    def no_build(*a, **k):
        raise AssertionError("the toy base model would be built: its cache folder changed")

    monkeypatch.setattr(M, "toy_tokenizer", no_build)
    for args in (M.Args(), M.Args(toy_branching_slip=(0.2, 0.2))):
        path = M.build_toy_base(replace_cache(args, tmp_path))
        assert os.path.basename(path) == DEFAULT_CACHE_FOLDER
    with pytest.raises(AssertionError, match="would be built"):  # the branching toy has a model of its own
        M.build_toy_base(replace_cache(M.Args(**BRANCHING), tmp_path))


def replace_cache(args, folder):
    args.toy_cache_dir = str(folder)
    return args


def test_the_toy_is_the_same_code_in_all_four_files():
    def source(module, name):
        with open(module.__file__) as f:
            src = f.read()
        node = next(n for n in ast.parse(src).body if getattr(n, "name", None) == name)
        return ast.get_source_segment(src, node)

    for name in ("toy_splits", "branching_row", "build_toy_base", "Args"):
        texts = {m.__name__: source(m, name) for m in MODULES}
        if name == "Args":  # the toy fields only: the classes differ in the soft flags
            texts = {k: [line for line in v.split("\n") if "toy_" in line] for k, v in texts.items()}
        assert len({json.dumps(v) for v in texts.values()}) == 1, name


def test_branching_statistics_by_hand():
    import grpo_thinking_stats as st

    # position 0: p = (0.5, 0.5, 0, ...); position 1: one-hot; position 2: (0.9, 0.06, 0.04)
    p = torch.tensor([[0.5, 0.5, 1e-9, 1e-9], [1.0, 1e-9, 1e-9, 1e-9], [0.9, 0.06, 0.04, 1e-9]])
    logits, mask = p.log()[None], torch.ones(1, 3, dtype=torch.bool)
    out = st.branching_stats(logits, mask)
    assert out["positions"] == 2 and abs(out["share"] - 2 / 3) < 1e-6
    h2 = -(0.9 * torch.tensor(0.9).log() + 0.06 * torch.tensor(0.06).log() + 0.04 * torch.tensor(0.04).log())
    assert abs(out["entropy"] - (torch.tensor(2.0).log() + h2).item() / 2) < 1e-4
    assert st.two_above(torch.tensor([[0.5, 0.5], [0.96, 0.04], [0.94, 0.06]])) == pytest.approx(2 / 3)
    mass = st.top_k_mass(logits, mask, top_k=2)  # what a 2-component soft density sees: 1.0, 1.0, 0.96
    assert mass["mean"] == pytest.approx((1 + 1 + 0.96) / 3, abs=1e-6) and mass["median"] == pytest.approx(1.0)
    ids = torch.tensor([[1, 2], [1, 2], [1, 3], [1, 2]])  # two groups of 2: identical, then not
    assert st.identical_thinking_groups(ids, torch.ones_like(ids, dtype=torch.bool), 2) == 0.5


def test_report_t_intervals_and_exact_permutation_tests():
    import grpo_report

    soft, grpo = ("sofT_grpo:softgrpo", "sofT-grpo"), ("discrete_grpo:grpo", "discrete")
    table = {soft: {s: {1: 0.60 + 0.01 * s} for s in range(1, 6)}, grpo: {s: {1: 0.50 + 0.01 * s} for s in range(1, 6)}}
    line = grpo_report.comparison(table, [1], soft, grpo, t=True)[0]
    assert "+10.0, p 0.008: higher" in line  # 2 of the 252 splits are as extreme
    table[grpo] = {s: {1: 0.58 + 0.01 * s} for s in range(1, 6)}
    assert "cannot be told apart" in grpo_report.comparison(table, [1], soft, grpo, t=True)[0]
    mean, lo, hi = grpo_report.mean_ci([0.1, 0.2, 0.3, 0.4, 0.5], t=True)
    assert mean == pytest.approx(30.0) and (lo, hi) == pytest.approx((30 - 19.63, 30 + 19.63), abs=0.01)  # t 2.776


def test_the_branching_grid_evaluates_each_seed_right_after_it_trains():
    import rl_benchmark

    runs = rl_benchmark.GRIDS["grpo-branching"]()
    by_key = {r.key: r for r in runs}
    methods = {r.labels["method"] for r in runs}
    assert {"discrete_grpo:grpo", "discrete_grpo:grpo-k5p95", "sofT_grpo:softgrpo"} <= methods
    for r in runs:
        assert "--toy-branching" in r.argv and r.stage // 2 == r.labels["seed"] - 1
        ckpt = [a for a in r.argv if a.startswith("{ckpt:")]
        if ckpt:  # an eval of a checkpoint: one stage after the run that trains it, same seed
            trained = by_key[ckpt[0][6:-1]]
            assert r.stage == trained.stage + 1 and "--eval-only" in r.argv
            assert r.script != trained.script  # the other script's decoding
        else:
            assert r.stage % 2 == 0 and "--eval-every" in r.argv
    assert sum(1 for r in runs if r.stage % 2 == 0) == 15 and len(runs) == 30
