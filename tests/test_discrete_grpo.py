"""Tests for discrete_grpo.py: loss and estimator math against independent references, the reward on real
data, decode-loop parity with HF generate, the real-model path, a short toy run, presets and bad input."""

import glob
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM

import discrete_grpo
import discrete_grpo_fsdp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a toy small enough for seconds on CPU; every test that trains shares its cached base model
TINY = dict(
    toy_hidden_size=32,
    toy_num_layers=1,
    toy_sft_steps=30,
    total_steps=2,
    prompts_per_step=4,
    group_size=4,
    mini_batch_prompts=2,
    micro_batch_size=4,
    rollout_batch_size=16,
    max_new_tokens=24,
    eval_problems=4,
    eval_samples=2,
    learning_rate=1e-2,
)


@pytest.fixture(scope="module", params=[discrete_grpo, discrete_grpo_fsdp], ids=["discrete_grpo", "discrete_grpo_fsdp"])
def dg(request):
    """The teaching file or its paper-scale variant: the helper tests run on both copies, so neither drifts.
    Tests of `main` run the teaching file (the variant's own main is tested in test_grpo_scale.py)."""
    return request.param


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("toy_cache"))


def tiny_model_dir(path):
    """A randomly initialised tiny Qwen2 + the toy tokenizer, saved like a Hub model."""
    torch.manual_seed(0)
    tok = discrete_grpo.toy_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


# ---- reward ----------------------------------------------------------------------------------------------
def test_last_boxed(dg):
    assert dg.last_boxed("a \\boxed{x^{2}} b \\fbox{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert (
        dg.last_boxed("the answer is 4") is None and dg.last_boxed("\\boxed{4") is None and dg.last_boxed("{4}") is None
    )


@pytest.mark.parametrize(
    "completion,answer,expected",
    [
        ("no box here 4", "no box here 4", 0.0),
        ("so \\boxed{\\frac{1}{2}}", "\\frac12", 1.0),  # nested braces + \frac12
        ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", 1.0),
        ("\\boxed{3/4}", "\\frac{3}{4}", 1.0),
        ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("\\boxed{ 1 + \\sqrt{2} }", "1+\\sqrt2", 1.0),  # spaces, \sqrt2
        ("\\boxed{5 \\text{ cm}}", "5", 1.0),  # units
        ("\\boxed{12\\text{cm}}", "12", 1.0),
        ("\\boxed{\\text{(C)}}", "(C)", 1.0),
        ("\\boxed{x = 7}", "7", 1.0),
        ("\\boxed{90^\\circ}", "90", 1.0),
        ("\\boxed{1,000}", "1000", 1.0),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        ("first \\boxed{3} then \\boxed{4}", "4", 1.0),  # several boxes: the last one counts
        ("first \\boxed{4} then \\boxed{3}", "4", 0.0),
        ("the answer is 4", "4", 0.0),  # no box: 0, not a crash
        ("\\boxed{4", "4", 0.0),  # unbalanced
        ("\\boxed{5}", "6", 0.0),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{3}", 0.0),
    ],
)
def test_math_reward_cases(dg, completion, answer, expected):
    assert dg.math_reward(completion, answer) == expected


# ---- sampling and log-probs ---------------------------------------------------------------------------------
def filtered_distribution(logits, temperature, top_k, top_p):
    """Brute force, one row: softmax(z / T), keep the top_k largest, then the smallest prefix (in decreasing order)
    whose mass reaches top_p; renormalised."""
    p = [math.exp(z / temperature) for z in logits]
    order = sorted(range(len(p)), key=lambda i: -p[i])[: top_k or len(p)]
    total, kept = sum(p[i] for i in order), []
    for i in order:
        if sum(p[j] for j in kept) / total >= top_p:
            break
        kept.append(i)
    out = [0.0] * len(p)
    for i in kept:
        out[i] = p[i] / sum(p[j] for j in kept)
    return out


def test_sample_step_filters_against_brute_force(dg):
    n, embed = 20000, torch.nn.Embedding(8, 4)
    logits = torch.tensor(
        [
            [2.0, 1.6, 1.2, 0.9, 0.1, -0.4, -1.0, -2.0],
            [0.0, 3.0, 0.5, 2.5, -1.0, 1.0, 0.2, -0.3],
            [1.0, 1.0, 0.9, 0.2, 0.1, 0.0, -0.5, -3.0],
            [-1.0, 0.4, 2.2, 0.3, 2.0, 1.9, -0.2, 0.6],
        ]
    )
    for temperature, top_k, top_p in [(0.6, 5, 0.8), (1.3, 0, 0.7), (0.9, 3, 1.0), (1.0, 0, 1.0)]:
        gen = torch.Generator().manual_seed(0)
        tok, nxt, stored = dg.sample_step(logits.repeat_interleave(n, 0), embed, gen, temperature, top_k, top_p)
        assert torch.equal(stored, tok) and torch.equal(nxt, embed(tok))
        for b in range(4):
            expected = torch.tensor(filtered_distribution(logits[b].tolist(), temperature, top_k, top_p))
            counts = torch.bincount(tok[b * n : (b + 1) * n], minlength=8).double()
            assert (counts[expected == 0] == 0).all() and (counts[expected > 0] > 0).all()  # exactly the kept set
            kept = expected > 0
            chi2 = ((counts[kept] - n * expected[kept]) ** 2 / (n * expected[kept])).sum().item()
            assert chi2 < 26.2, (temperature, top_k, top_p, b)  # chi-square, <= 7 degrees of freedom, p = 0.001
    assert torch.equal(dg.sample_step(logits, embed, None, 0.0, 5, 0.5)[0], logits.argmax(-1))  # T = 0: greedy
    untied = logits[[0, 1, 3]]  # row 2 has two equal largest logits, which top-k 1 keeps both of
    top1 = dg.sample_step(untied.repeat(50, 1), embed, torch.Generator().manual_seed(0), 1.0, 1, 1.0)[0]
    assert torch.equal(top1, untied.argmax(-1).repeat(50))  # top-k 1 is greedy too
    seen = torch.zeros(4, 8, dtype=torch.bool)  # top-k 6 on a batch of 4 rows: 6 ids per row, not min(6, B) = 4
    gen = torch.Generator().manual_seed(1)
    for _ in range(400):
        tok = dg.sample_step(logits, embed, gen, 2.0, 6, 1.0)[0]
        seen[torch.arange(4), tok] = True
    assert (seen.sum(1) == 6).all()
    torch.manual_seed(5)  # the generator, not the global RNG, decides the draw
    first = dg.sample_step(logits, embed, torch.Generator().manual_seed(3), 1.0, 0, 1.0)[0]
    torch.manual_seed(6)
    assert torch.equal(first, dg.sample_step(logits, embed, torch.Generator().manual_seed(3), 1.0, 0, 1.0)[0])


def test_token_logprobs_against_each_unpadded_row(dg, tmp_path):
    model, tok = tiny_model_dir(tmp_path)
    torch.manual_seed(0)
    lengths, T = [3, 5, 2, 4], 4  # prompt lengths (left-padded to 5) and completion length
    prompt_ids = torch.zeros(4, 5, dtype=torch.long)
    for b, n in enumerate(lengths):
        prompt_ids[b, 5 - n :] = torch.randint(1, len(tok), (n,))
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": (prompt_ids != 0).long(),
        "completion_ids": torch.randint(1, len(tok), (4, T)),
        "completion_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]),
    }
    with torch.no_grad():
        logp, entropy = dg.token_logprobs(model, batch, 0.6)
        for b, n in enumerate(lengths):  # reference: each row alone, no padding, full logits, input ids
            seq = torch.cat([prompt_ids[b, 5 - n :], batch["completion_ids"][b]])
            ref = (model(input_ids=seq[None]).logits[0, n - 1 : -1] / 0.6).log_softmax(-1)  # [T, V]
            m = batch["completion_mask"][b].bool()
            expected = ref.gather(-1, batch["completion_ids"][b][:, None]).squeeze(-1)
            torch.testing.assert_close(logp[b][m], expected[m], atol=1e-5, rtol=0)
            torch.testing.assert_close(entropy[b][m], -(ref.exp() * ref).sum(-1)[m], atol=1e-5, rtol=0)
        greedy, at_one = dg.token_logprobs(model, batch, 0.0)[0], dg.token_logprobs(model, batch, 1.0)[0]
    assert torch.equal(greedy, at_one)  # greedy rollouts are scored at T = 1


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_chunked_logprobs_equal_the_full_log_softmax(dg, tmp_path, monkeypatch, temperature):
    """token_logprobs scores T = 7 positions in chunks of 3, 3 and 1; values and gradients equal the full
    log_softmax(...).gather(...) of the model's own logits."""
    model, tok = tiny_model_dir(tmp_path)
    monkeypatch.setattr(dg, "LOGPROB_CHUNK", 3)
    torch.manual_seed(1)
    prompt_ids = torch.randint(1, len(tok), (4, 5))
    prompt_ids[[0, 2], :2] = 0  # left padding
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 6 + [0], [1, 1] + [0] * 5])
    batch = dict(prompt_ids=prompt_ids, prompt_mask=(prompt_ids != 0).long(), completion_mask=mask)
    batch["completion_ids"] = torch.randint(1, len(tok), (4, 7))
    logp, entropy = dg.token_logprobs(model, batch, temperature)
    attn = torch.cat([batch["prompt_mask"], mask], 1)
    ids = torch.cat([prompt_ids, batch["completion_ids"]], 1)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
    full = (logits[:, -8:-1].float() / temperature).log_softmax(-1)  # [B, T, V]
    ref = full.gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    assert (logp - ref).abs().max() < 1e-6
    ref_entropy = -(full.exp() * full).sum(-1)  # about 5.8 here: compared to fp32 rounding, 1e-6 relative
    assert ((entropy - ref_entropy) / ref_entropy).abs().max() < 1e-6 and not entropy.requires_grad
    grads = torch.autograd.grad((logp * mask).sum(), list(model.parameters()))
    ref_grads = torch.autograd.grad((ref * mask).sum(), list(model.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


# ---- decode loop ------------------------------------------------------------------------------------------
def test_greedy_rollout_matches_generate(dg, tmp_path):
    model, tok = tiny_model_dir(tmp_path)
    model.eval()
    rows, _ = dg.render_prompts(
        tok, [{"problem": p, "answer": "0"} for p in ["Compute 1+2.", "Compute 13-4+15-9.", "hi"]], 100
    )
    stop_ids = torch.tensor([tok.eos_token_id])
    out = dg.generate(
        model, tok, rows, 2, 12, stop_ids, None, temperature=0.0, top_k=0, top_p=1.0
    )  # 2 chunks, left padding
    ref = model.generate(
        input_ids=out["prompt_ids"],
        attention_mask=out["prompt_mask"],
        do_sample=False,
        max_new_tokens=12,
        pad_token_id=tok.pad_token_id,
    )[:, out["prompt_ids"].shape[1] :]
    mask = out["completion_mask"].bool()
    assert torch.equal(out["completion_ids"][:, : ref.shape[1]][mask[:, : ref.shape[1]]], ref[mask[:, : ref.shape[1]]])
    assert mask.sum() == (ref != tok.pad_token_id).sum() or (ref == tok.eos_token_id).any()


# ---- the real path: a local model folder and dataset files in every format ----------------------------
def test_real_path_all_formats(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model_dir(model_dir)
    rows = [{"question": f"What is {i}+{i}?", "answer": f"Half of it ... #### {2 * i}"} for i in range(6)]
    rows.insert(0, {"question": "Long " * 300, "answer": "#### 1"})  # longer than --max-prompt-length: skipped, counted
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for ext in ("jsonl", "json", "parquet"):
        argv = [
            "--model-name-or-path",
            str(model_dir),
            "--dataset",
            str(tmp_path / f"d.{ext}"),
            "--eval-only",
            "--eval-problems",
            "3",
            "--eval-samples",
            "2",
            "--max-new-tokens",
            "4",
            "--max-prompt-length",
            "200",
            "--output-dir",
            str(tmp_path / "runs"),
        ]
        summary = discrete_grpo.main(discrete_grpo.cli(argv))
        assert set(summary["eval_before"]) == {"pass@1", "pass@2", "accuracy/math-verify", "accuracy/rule"}
        assert summary["skipped_prompts"] == 0  # --eval-only renders no training prompt (the long one is one)
        with open(os.path.join(summary["run_dir"], "eval_step0.json")) as f:
            assert json.load(f)["problems"] == 3
    # --eval-only with --eval-dataset loads no training data: the preset's Hub --dataset is never touched
    evalonly = discrete_grpo.main(
        discrete_grpo.cli(argv + ["--dataset", "someone/not-loaded", "--eval-dataset", str(tmp_path / "d.json")])
    )
    with open(os.path.join(evalonly["run_dir"], "eval_step0.json")) as f:
        assert json.load(f)["problems"] == 2 and evalonly["skipped_prompts"] == 1  # the first 3 hold the long one
    # one training step through the same flags; the saved checkpoint loads back like a Hub model
    summary = discrete_grpo.main(
        discrete_grpo.cli(
            argv
            + [
                "--no-eval-only",
                "--total-steps",
                "1",
                "--prompts-per-step",
                "2",
                "--mini-batch-prompts",
                "1",
                "--group-size",
                "2",
                "--micro-batch-size",
                "2",
            ]
        )
    )
    assert torch.isfinite(torch.tensor(summary["loss"])) and summary["skipped_prompts"] == 1  # too long: skipped
    Qwen2ForCausalLM.from_pretrained(os.path.join(summary["run_dir"], "final"))


# ---- a short toy run ----------------------------------------------------------------------------------------
def test_toy_run_updates_every_parameter_and_is_deterministic(tmp_path, cache, monkeypatch):
    # a 30-step SFT model is rarely right, so the reward is replaced by one that always varies within a group:
    # this test covers the update path; the reward itself is tested above
    monkeypatch.setattr(discrete_grpo, "math_reward", lambda completion, answer: float(len(completion) % 2))
    calls, loss_fn = [], discrete_grpo.grpo_loss
    monkeypatch.setattr(
        discrete_grpo,
        "grpo_loss",
        lambda logp, logp_old, *a, **k: (
            calls.append((logp - logp_old).abs().max().item()) or loss_fn(logp, logp_old, *a, **k)
        ),
    )
    args = discrete_grpo.Args(**TINY, toy_cache_dir=cache, output_dir=str(tmp_path))
    s1, s2 = (
        discrete_grpo.main(args),
        discrete_grpo.main(discrete_grpo.replace(args, output_dir=str(tmp_path / "again"))),
    )  # run names have 1 s resolution
    per_step = len(calls) // (2 * args.total_steps)  # micro-batches per rollout step
    assert all(
        calls[i] == 0.0 for i in range(0, len(calls), per_step)
    )  # first micro-batch of each step: ratio exactly 1
    assert max(calls) > 0  # the second mini-batch is off-policy
    assert torch.isfinite(torch.tensor(s1["loss"])) and s1["frac_reward_zero_std"] < 1
    for k in ("loss", "reward", "kl", "entropy", "eval_after"):
        assert s1[k] == s2[k], k  # same seed, same numbers on CPU
    before = load_file(glob.glob(os.path.join(cache, "toy-base-*", "model.safetensors"))[0])
    after = load_file(os.path.join(s1["run_dir"], "final", "model.safetensors"))
    decay = (1 - args.learning_rate * 0.01) ** (args.total_steps * args.prompts_per_step // args.mini_batch_prompts)
    for name, p in before.items():  # changed beyond what AdamW's weight decay alone would do
        assert not torch.allclose(after[name], p * decay, rtol=0, atol=1e-7), name


def test_toy_base_is_cached_and_deterministic(dg, tmp_path, cache, monkeypatch):
    args = dg.Args(**TINY, toy_cache_dir=cache)
    path = dg.build_toy_base(args)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached toy model was built again")

    with monkeypatch.context() as m:  # a second call must return the cached folder without building a model
        m.setattr(dg, "Qwen2ForCausalLM", no_rebuild)
        assert path == dg.build_toy_base(args) and os.path.basename(path).startswith("toy-base-")
    other = dg.build_toy_base(dg.Args(**TINY, toy_cache_dir=str(tmp_path)))  # rebuilt from scratch elsewhere
    a, b = load_file(os.path.join(path, "model.safetensors")), load_file(os.path.join(other, "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    train, held_out = dg.toy_splits(args)
    assert not {r["problem"] for r in train} & {r["problem"] for r in held_out}
    right = [dg.math_reward(r["solution"], r["answer"]) for r in dg.toy_splits(dg.Args(toy_teacher_slip=0.5))[0]]
    assert 0.45 < 1 - sum(right) / len(right) < 0.55  # the sloppy teacher's slip rate (its boxes are otherwise right)
    assert all(
        dg.math_reward(r["solution"], r["answer"]) == 1.0 for r in dg.toy_splits(dg.Args(toy_teacher_slip=0.0))[0]
    )


# ---- CLI: presets, --help, bad input ------------------------------------------------------------------
def test_presets_and_explicit_flags_win(dg, capsys):
    a = dg.cli(["--learning-rate", "3e-6", "--preset", "r1-distill-qwen-1.5b", "--micro-batch-size", "1"])
    assert a.learning_rate == 3e-6 and a.group_size == 8 and a.prompts_per_step == 64 and a.micro_batch_size == 1
    assert a.model_name_or_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" and a.beta == 0.001
    assert a.max_new_tokens == 8192 and a.dtype == "bfloat16" and a.gradient_checkpointing
    if dg.__name__.endswith("_fsdp"):  # the presets that need several GPUs live in the variant only
        a = dg.cli(["--preset", "r1-distill-qwen-7b"])
        assert a.model_name_or_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" and a.micro_batch_size == 1
    else:
        assert set(dg.PRESETS) == {"toy", "r1-distill-qwen-1.5b"}
    assert dg.cli([]) == dg.Args()
    with pytest.raises(SystemExit) as e:
        dg.cli(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    missing = [
        f.name for f in dg.Args.__dataclass_fields__.values() if "--" + f.name.replace("_", "-") not in help_text
    ]
    assert not missing


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--group-size", "1"], "--group-size"),
        (["--prompts-per-step", "6", "--mini-batch-prompts", "4"], "--mini-batch-prompts"),
        (["--micro-batch-size", "5"], "--micro-batch-size"),
        (["--preset", "gpt5"], "--preset"),
        (["--model-name-or-path", "/no/such/model"], "--model-name-or-path"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        discrete_grpo.main(discrete_grpo.cli(argv + ["--total-steps", "0"]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {flag}") and "\n" not in err, err


def test_bad_dataset_files(tmp_path, capsys, monkeypatch):
    model_dir = tmp_path / "model"
    tiny_model_dir(model_dir)
    (tmp_path / "noanswer.jsonl").write_text(json.dumps({"problem": "1+1"}) + "\n")
    (tmp_path / "empty.json").write_text("[]")
    cases = [("missing.jsonl", "--dataset"), ("noanswer.jsonl", "--answer-field"), ("empty.json", "--dataset")]
    for name, flag in cases:
        with pytest.raises(SystemExit) as e:
            discrete_grpo.main(
                discrete_grpo.cli(
                    [
                        "--model-name-or-path",
                        str(model_dir),
                        "--dataset",
                        str(tmp_path / name),
                        "--output-dir",
                        str(tmp_path),
                    ]
                )
            )
        assert e.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {flag}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for flag in ("--dataset", "--eval-dataset"):  # a Hub id that cannot be reached: one line, no traceback
        with pytest.raises(SystemExit) as e:
            discrete_grpo.load_rows("someone/no-such-dataset", flag, discrete_grpo.Args())
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith(f"error: {flag}: cannot load") and "\n" not in err, err


def test_command_line_bad_input_no_traceback():
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "discrete_grpo.py"), "--group-size", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("error: --group-size")


def test_non_finite_loss_stops_with_a_message(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(discrete_grpo, "grpo_loss", lambda logp, *a, **k: (logp.sum() * float("nan"), {}))
    with pytest.raises(SystemExit) as e:
        discrete_grpo.main(
            discrete_grpo.Args(**{**TINY, "total_steps": 1}, toy_cache_dir=cache, output_dir=str(tmp_path))
        )
    assert "non-finite loss at step 1" in str(e.value.code)
