"""The helpers that discrete_grpo.py and sofT_grpo.py both carry, tested once against independent references
and run on each script's own copy (sofT_grpo.py does not import its parent, so each copy needs its own test)."""

import itertools
import json
import math
import os
import statistics
import time
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import discrete_grpo
import discrete_grpo_fsdp
import sofT_grpo
import sofT_grpo_fsdp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the rollout flags of the scripted-model tests; sofT_grpo.py's also name </think> (id 3 there) and the noise
ROLLOUT_FLAGS = {
    "discrete_grpo": dict(temperature=1.0, top_k=0, top_p=1.0),
    "sofT_grpo": dict(
        think_end_id=3,
        temperature=1.0,
        top_k=5,
        top_p=0.95,
        answer_top_k=5,
        answer_top_p=0.95,
        tau_g=0.1,
        noise_scale=1.0,
        noise="gumbel",
    ),
}


MODULES = [discrete_grpo, discrete_grpo_fsdp, sofT_grpo, sofT_grpo_fsdp]


@pytest.fixture(params=MODULES, ids=[m.__name__ for m in MODULES])
def M(request):
    """The script whose copy of the helpers a test checks."""
    return request.param


@pytest.fixture
def SAMPLING(M):
    return ROLLOUT_FLAGS[M.__name__.removesuffix("_fsdp")]


def test_group_advantages_are_centred_and_scaled_per_group(M):
    torch.manual_seed(0)
    # 6 groups of 4; the last one has a spread of 1e-5, where the + 1e-6 in the denominator shows
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0.5, 0.2, 0.9, 0.4, 0, 0, 0, 1e-5])
    got, got_dr = M.group_advantages(rewards, 4).tolist(), M.group_advantages(rewards, 4, scale=False).tolist()
    for g in range(6):
        r = rewards[4 * g : 4 * g + 4].tolist()
        mean, std = statistics.mean(r), statistics.stdev(r)  # verl: unbiased std, eps 1e-6
        for i in range(4):
            assert math.isclose(got[4 * g + i], (r[i] - mean) / (std + 1e-6), rel_tol=1e-4, abs_tol=1e-6)
            assert math.isclose(got_dr[4 * g + i], r[i] - mean, abs_tol=1e-6)
    assert abs(M.group_advantages(torch.tensor([1.0] + [0] * 7), 8).max().item() - 2.4749) < 1e-3  # verl's max, G=8


def test_pass_at_k_against_enumeration(M):
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
                assert abs(M.pass_at_k(n, c, k) - brute) < 1e-12, (n, c, k)


def test_grade_gives_pass_at_k_for_n_not_a_power_of_two(M):
    n, correct = 6, [0, 1, 4, 6, 2]  # 5 problems, 6 samples each
    texts, rows = [], []
    for p, c in enumerate(correct):
        for i in range(n):
            texts.append(f"\\boxed{{{p if i < c else p + 100}}}")
            rows.append({"answer": str(p)})
    counts = M.correct_counts(texts, rows, n)
    assert counts == {"math-verify": correct, "rule": correct}
    res = M.grade(counts, n, "math-verify")
    assert set(res) == {"pass@1", "pass@2", "pass@4", "pass@6", "accuracy/math-verify", "accuracy/rule"}
    for k in (1, 2, 4, 6):
        expected = sum(1 - math.comb(n - c, k) / math.comb(n, k) for c in correct) / len(correct)
        assert math.isclose(res[f"pass@{k}"], expected, abs_tol=1e-12), k
    assert res["accuracy/math-verify"] == res["accuracy/rule"] == sum(correct) / (n * len(correct))
    for i in range(n, 2 * n):  # problem 1 (one right sample, "1"): only math-verify sees that 1 = 2/2
        rows[i] = {"answer": "\\frac{2}{2}"}
    counts = M.correct_counts(texts, rows, n)
    assert M.grade(counts, n, "rule")["pass@1"] < M.grade(counts, n, "math-verify")["pass@1"]


def test_clipped_surrogate_and_dual_clip_on_a_batch(M):
    # nine rows, one valid token each (the second is masked out), the defaults eps 0.2, c = 3; by hand:
    # (A, ratio) = (2, 10): max(-20, -2.4) = -2.4;  (-2, 10): min(max(20, 2.4), 6) = 6;  (-2, 0.5): max(1, 1.6) = 1.6;
    # (1, 0.5): max(-0.5, -0.8) = -0.5;  (-1, 1): 1;  (0.5, 0.5): max(-0.25, -0.4) = -0.25;  (0, 10), (0, 0.5): 0;
    # (1, 1.5): max(-1.5, -1.2) = -1.2;  (0.5, 1): -0.5. Clipped region (A > 0 and ratio > 1.2, or A < 0 and
    # ratio < 0.8): rows 0, 2 and 8
    adv = torch.tensor([2.0, -2.0, -2.0, 1.0, -1.0, 0.5, 0.0, 0.0, 1.0, 0.5])
    ratio = torch.tensor([10.0, 10.0, 0.5, 0.5, 1.0, 0.5, 10.0, 0.5, 1.5, 1.0])
    logp = torch.stack([ratio.log(), torch.zeros(10)], 1)  # [10, 2]
    mask = torch.tensor([[1, 0]] * 10)
    loss, st = M.grpo_loss(logp, torch.zeros(10, 2), None, adv, mask)
    torch.testing.assert_close(loss, torch.tensor((-2.4 + 6 + 1.6 - 0.5 + 1 - 0.25 + 0 + 0 - 1.2 - 0.5) / 10))
    assert math.isclose(st["clip_ratio/region_mean"].item(), 3 / 10, rel_tol=1e-6)
    loss, _ = M.grpo_loss(logp, torch.zeros(10, 2), None, adv, mask, clip_eps_high=0.28)  # clip-higher: 1.28
    torch.testing.assert_close(loss, torch.tensor((-2.56 + 6 + 1.6 - 0.5 + 1 - 0.25 + 0 + 0 - 1.28 - 0.5) / 10))
    one = torch.tensor([[1, 0]] + [[0, 0]] * 9)  # a single valid token in the batch: its own loss
    torch.testing.assert_close(M.grpo_loss(logp, torch.zeros(10, 2), None, adv, one)[0], torch.tensor(-2.4))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_every_loss_agg_mode(M, mode):
    # at ratio 1 and beta 0 every valid token's loss is exactly -A, so each mode has a closed form in A and lengths
    torch.manual_seed(0)
    adv, lengths, T, max_len = torch.tensor([1.5, -0.7, 0.3, 2.0, -1.1]), [2, 5, 1, 4, 3], 6, 8
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    logp = torch.randn(5, T)
    loss, _ = M.grpo_loss(logp, logp, logp, adv, mask, loss_agg_mode=mode, max_len=max_len)
    no_max_len, _ = M.grpo_loss(logp, logp, logp, adv, mask, loss_agg_mode=mode)  # norm mode: B * T instead
    token_sums = [-a * n for a, n in zip(adv.tolist(), lengths)]
    expected = {
        "token-mean": sum(token_sums) / sum(lengths),
        "seq-mean-token-mean": sum(-a for a in adv.tolist()) / 5,
        "seq-mean-token-sum": sum(token_sums) / 5,
        "seq-mean-token-sum-norm": sum(token_sums) / (5 * max_len),
    }[mode]
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    scale = max_len / T if mode == "seq-mean-token-sum-norm" else 1.0
    assert math.isclose(no_max_len.item(), expected * scale, rel_tol=1e-6)


def test_k3_kl_is_an_unbiased_estimate_of_the_kl(M):
    # E_{a ~ pi}[k3(a)] = KL(pi || pi_ref): weight each action's k3 by pi(a) through the (float) mask
    torch.manual_seed(0)
    pi, pi_ref = (
        torch.softmax(torch.randn(4, 6, dtype=torch.float64), -1),
        torch.softmax(torch.randn(4, 6), -1).double(),
    )
    exact = torch.distributions.kl_divergence(
        torch.distributions.Categorical(pi), torch.distributions.Categorical(pi_ref)
    )
    for b in range(4):
        logp, logp_ref = pi[b].log()[None], pi_ref[b].log()[None]
        loss, st = M.grpo_loss(logp, logp, logp_ref, torch.zeros(1), pi[b][None], beta=0.5)
        assert math.isclose(st["kl"].item(), exact[b].item(), rel_tol=1e-6)
        assert math.isclose(loss.item(), 0.5 * exact[b].item(), rel_tol=1e-6)  # + beta * KL, with A = 0
    _, st = M.grpo_loss(logp, logp, logp_ref, torch.zeros(1), pi[3][None], beta=0.0)
    assert st["kl"] == 0  # no reference model: no KL
    d = torch.tensor([[3.0, 1.0]])  # log pi_ref - log pi: k3 = e^3 - 4 = 16.1 is clamped to 10 (verl), e^1 - 2 is not
    _, st = M.grpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), d, torch.zeros(1), torch.ones(1, 2), beta=0.1)
    assert math.isclose(st["kl"].item(), (10 + math.e - 2) / 2, rel_tol=1e-6)


def test_completion_mask_and_positions_from_a_scripted_model(M, SAMPLING):
    # rows stop (EOS = 2) at steps 2, 4, 1 and 5; </think> (3) ends thinking at steps 1 and 0 in rows 1 and 2
    script = [[5, 6, 2, 7, 7, 7], [5, 3, 6, 6, 2, 8], [3, 2, 9, 9, 9, 9], [5, 5, 5, 5, 5, 2]]
    model = ScriptedModel(script, vocab=12)
    prompt_ids = torch.tensor([[0, 0, 4, 4], [4, 4, 4, 4], [0, 4, 4, 4], [0, 0, 0, 4]])  # left-padded
    prompt_mask = (prompt_ids != 0).long()
    out = M.rollout(model, prompt_ids, prompt_mask, 8, torch.tensor([2]), torch.Generator().manual_seed(0), **SAMPLING)
    assert out["completion_ids"].tolist() == script  # decoding stops once every row has stopped: T = 6
    expected = [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert out["completion_mask"].tolist() == expected  # up to and including the first stop token
    lengths = prompt_mask.sum(1).tolist()
    for step, pos in enumerate(model.positions):  # the position of the newest input: no shift from left padding
        assert pos == [n - 1 + step for n in lengths]
    short = M.rollout(ScriptedModel(script, 12), prompt_ids, prompt_mask, 3, torch.tensor([2]), None, **SAMPLING)
    assert short["completion_mask"].tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]]  # cut at 3 tokens


def test_load_rows_extracts_the_answer_of_every_format(M, tmp_path):
    rows = [
        {"question": "Q1", "answer": "Half of 12 is 6.\n####72"},  # GSM8K
        {"question": "Q2", "answer": "so $x = \\boxed{\\frac{1}{2}}$, and then \\boxed{\\sqrt{2}}."},  # MATH solution
        {"question": "Q3", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)"},  # a bare answer stays whole
        {"question": "Q4", "answer": " 1,000 "},
        {"question": "", "answer": "5"},  # no problem text: dropped
        {"question": "Q6", "answer": ""},  # no answer: dropped
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    got = M.load_rows(str(tmp_path / "d.jsonl"), "--dataset", M.Args())
    assert [r["problem"] for r in got] == ["Q1", "Q2", "Q3", "Q4"]
    assert [r["answer"] for r in got] == ["72", "\\sqrt{2}", "\\left( 3, \\frac{\\pi}{2} \\right)", "1,000"]
    (tmp_path / "f.json").write_text(json.dumps([{"problem": "P", "final_answer": "7", "solution": "\\boxed{8}"}] * 4))
    assert M.load_rows(str(tmp_path / "f.json"), "--dataset", M.Args())[0]["answer"] == "7"  # answer field order
    for problem, answer in [("prompt", "solution"), ("query", "final_answer")]:  # the other auto-detected names
        (tmp_path / "g.json").write_text(json.dumps([{problem: "P", answer: "\\boxed{3}"}] * 4))
        assert M.load_rows(str(tmp_path / "g.json"), "--dataset", M.Args()) == [{"problem": "P", "answer": "3"}] * 4
    custom = M.Args(problem_field="text", answer_field="target")
    (tmp_path / "c.json").write_text(json.dumps([{"text": "P", "target": "9", "answer": "1"}] * 4))
    assert M.load_rows(str(tmp_path / "c.json"), "--dataset", custom) == [{"problem": "P", "answer": "9"}] * 4


def answer_set():
    """tests/data/answers.jsonl: gold answers with equivalent spellings (`same`), wrong answers, and spellings with
    malformed operators (\\frac12) that the official math-verify settings do not repair."""
    with open(os.path.join(REPO, "tests", "data", "answers.jsonl")) as f:
        return [json.loads(line) for line in f]


def boxed(answer):
    return f"Thinking.\n</think> The answer is \\boxed{{{answer}}}."


def test_eval_grader_on_the_answer_set(M):
    rows = answer_set()
    assert len(rows) >= 10 and sum(len(r["same"]) for r in rows) >= 30
    for r in rows:
        gold = r["answer"]
        assert M.eval_reward(boxed(gold), gold) == 1.0 and M.math_reward(boxed(gold), gold) == 1.0, gold
        for spelling in r["same"]:
            assert M.eval_reward(boxed(spelling), gold) == 1.0, (gold, spelling)
        for spelling in r["wrong"]:
            assert M.eval_reward(boxed(spelling), gold) == 0.0, (gold, spelling)
            assert M.math_reward(boxed(spelling), gold) == 0.0, (gold, spelling)
        for spelling in r.get("malformed", []):  # the official answer normalisation has malformed_operators=False
            assert M.eval_reward(boxed(spelling), gold) == 0.0, (gold, spelling)
    # the rule grader is the training reward: exact after normalisation, so most respellings fail
    same = [(r["answer"], s) for r in rows for s in r["same"]]
    rule = sum(M.math_reward(boxed(s), gold) for gold, s in same)
    assert 0.3 < rule / len(same) < 0.8


@pytest.mark.parametrize(
    "completion,answer,mv,rule",
    [
        ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", 1.0, 0.0),
        ("\\boxed{0.5}", "\\frac{1}{2}", 1.0, 1.0),
        ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 1.0, 0.0),
        ("\\boxed{3} and later \\boxed{4}", "4", 1.0, 1.0),  # the last box counts, for both graders
        ("\\boxed{4} and later \\boxed{3}", "4", 0.0, 0.0),
        ("\\fbox{3} and later \\fbox{4}", "4", 1.0, 1.0),
        ("\\boxed{X}", "X", 1.0, 1.0),
        ("the answer is 4", "4", 0.0, 0.0),  # no box: 0 for both
        ("\\boxed{4", "4", 0.0, 0.0),
    ],
)
def test_both_graders_on_known_cases(M, completion, answer, mv, rule):
    assert M.eval_reward(completion, answer) == mv and M.math_reward(completion, answer) == rule


def test_eval_grader_times_out_instead_of_hanging(M):
    t0 = time.time()
    assert M.eval_reward("\\boxed{9^{9^{9^{9^{9}}}}}", "5") == 0.0  # sympy would try to evaluate this for ever
    assert time.time() - t0 < 6 * M.GRADER_TIMEOUT_S


def test_decode_cuts_at_the_mask_and_split_batch_slices_every_tensor(M):
    tok = M.toy_tokenizer()
    texts = ["12+3=15", "</think> \\boxed{7}", "9", "0-0=0"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    T = max(len(r) for r in rows) + 2
    ids = torch.full((4, T), tok.convert_tokens_to_ids("<|im_end|>"))  # EOS after each text, then more EOS
    mask = torch.zeros(4, T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r) + 1] = 1  # the text and its EOS
    ids[2, len(rows[2]) + 1 :] = torch.tensor(tok("5", add_special_tokens=False)["input_ids"])  # after the mask
    assert M.decode(tok, {"completion_ids": ids, "completion_mask": mask}) == ["12+3=15", " \\boxed{7}", "9", "0-0=0"]
    batch = {"advantages": torch.arange(10.0), "completion_ids": torch.arange(30).view(10, 3)}
    parts = M.split_batch(batch, 4)
    assert [len(p["advantages"]) for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([p["completion_ids"] for p in parts]), batch["completion_ids"])
    assert torch.equal(parts[1]["advantages"], torch.tensor([4.0, 5, 6, 7]))


@pytest.mark.parametrize(
    "spelling,gold,expected",
    [  # one case per Hendrycks normalisation rule, each needing that rule
        ("\\left(1,2\\right)", "(1,2)", 1.0),
        ("90^{\\circ}", "90", 1.0),
        ("\\$5", "5", 1.0),
        ("$5$", "5", 1.0),
        ("10\\%", "10", 1.0),
        ("10%", "10", 1.0),
        ("1\n2", "12", 1.0),
        ("1\\!000", "1000", 1.0),
        ("\\\\frac{1}{2}", "\\frac{1}{2}", 1.0),
        ("\\tfrac{1}{2}", "\\frac{1}{2}", 1.0),
        (".5", "\\frac{1}{2}", 1.0),
        ("\\frac{.5}{2}", "\\frac{0.5}{2}", 1.0),
        ("x .5", "x 0.5", 1.0),
        ("\\frac1{2}", "\\frac{1}{2}", 1.0),
        ("\\frac{1}2", "\\frac{1}{2}", 1.0),
        ("5 \\text{ Cm}", "5", 1.0),
        ("xy = 5", "5", 1.0),
        ("abc = 5", "5", 0.0),  # only a short left-hand side (<= 2 characters) is dropped
        ("(1,2)", "(12)", 0.0),  # commas go only inside a thousands-separated number
    ],
)
def test_rule_normalisation_per_rule(M, spelling, gold, expected):
    assert M.math_reward(f"\\boxed{{{spelling}}}", gold) == expected


def test_pad_right_and_batched_generation_equal_one_row_at_a_time(M, SAMPLING, tmp_path):
    x = torch.arange(24.0).view(2, 3, 4)
    padded = M.pad_right(x, 5)
    assert padded.shape == (2, 5, 4) and torch.equal(padded[:, :3], x) and (padded[:, 3:] == 0).all()
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=40,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).eval()
    tok = SimpleNamespace(pad_token_id=0)
    torch.manual_seed(0)
    rows = [{"prompt_ids": torch.randint(1, 40, (n,)).tolist()} for n in (3, 7, 5, 2)]  # different lengths
    greedy = dict(SAMPLING, temperature=0.0)
    stop = torch.tensor([39])
    together = M.generate(model, tok, rows, 3, 6, stop, None, **greedy)  # left-padded, chunks of 3 and 1
    assert together["prompt_mask"].tolist() == [
        [0] * (7 - len(r["prompt_ids"])) + [1] * len(r["prompt_ids"]) for r in rows
    ]
    for b, row in enumerate(rows):  # alone: no padding at all
        alone = M.generate(model, tok, [row], 1, 6, stop, None, **greedy)["completion_ids"][0]
        assert torch.equal(together["completion_ids"][b, : len(alone)], alone), b  # alone it may stop sooner
    # the run's generator, not torch's global RNG, decides the samples
    sampled = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        out = M.generate(model, tok, rows, 3, 6, stop, torch.Generator().manual_seed(7), **SAMPLING)
        sampled.append(out["completion_ids"])
    assert torch.equal(sampled[0], sampled[1])


class ScriptedModel(torch.nn.Module):
    """A stand-in causal LM: at decode step s, row b's logits put +20 on script[b][s] and 0 elsewhere.
    Records the position id of the newest input at every call."""

    def __init__(self, script, vocab):
        super().__init__()
        self.script, self.calls, self.positions = script, 0, []
        self.config = Qwen2Config(
            vocab_size=vocab, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1
        )
        self.embed = torch.nn.Embedding(vocab, 8)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, inputs_embeds, position_ids, **kwargs):
        self.positions.append(position_ids[:, -1].tolist())
        logits = torch.zeros(inputs_embeds.shape[0], 1, self.config.vocab_size)
        for b, tokens in enumerate(self.script):
            logits[b, 0, tokens[min(self.calls, len(tokens) - 1)]] = 20.0
        self.calls += 1
        return SimpleNamespace(logits=logits)
