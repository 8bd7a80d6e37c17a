"""Flags that `main` must hand to the update, checked on `main` itself (the helpers that read them are tested
elsewhere): --dr-grpo decides the advantages the loss sees, and --noise / --tau-g decide the soft density of both
the old and the new log-probs, so the first micro-batch's ratio is exactly 1 under any of them."""

import statistics

import pytest
import torch

import discrete_grpo
import discrete_grpo_fsdp
import sofT_grpo
import sofT_grpo_fsdp

TINY = dict(toy_hidden_size=32, toy_num_layers=1, toy_sft_steps=2, total_steps=1, prompts_per_step=4, group_size=4)
TINY.update(mini_batch_prompts=2, micro_batch_size=4, rollout_batch_size=16, max_new_tokens=12, eval_problems=1)
TINY.update(eval_samples=1, log_completions_every=0)


def record(monkeypatch, M, name: str) -> list:
    """Every call of M.<name> made by main: (positional args, keyword args, result)."""
    calls, fn = [], getattr(M, name)

    def wrapper(*a, **k):
        out = fn(*a, **k)
        calls.append((a, k, out))
        return out

    monkeypatch.setattr(M, name, wrapper)
    return calls


CASES = [(m, True) for m in (discrete_grpo, discrete_grpo_fsdp, sofT_grpo, sofT_grpo_fsdp)]
CASES += [(discrete_grpo, False), (sofT_grpo, False)]


@pytest.mark.parametrize("M,dr_grpo", CASES, ids=[f"{m.__name__}-{'dr' if dr else 'std'}" for m, dr in CASES])
def test_the_loss_sees_the_advantages_of_the_flag(M, dr_grpo, tmp_path, monkeypatch):
    # a reward that varies within groups: 1 for an even-length completion
    monkeypatch.setattr(M, "math_reward", lambda text, answer: float(len(text) % 2 == 0))
    rewards, losses = record(monkeypatch, M, "math_reward"), record(monkeypatch, M, "grpo_loss")
    args = M.Args(**TINY, dr_grpo=dr_grpo, toy_cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path))
    M.main(args)
    B = args.prompts_per_step * args.group_size
    n_eval = (len(rewards) - B) // 2  # the rule grader also scores the evaluations before and after training
    r = [out for _, _, out in rewards][n_eval : n_eval + B]  # [B*G] in row order: the training rollout's rewards
    seen = torch.cat([a[3] for a, _, _ in losses]).tolist()  # the advantages of every micro-batch, in row order
    assert len(seen) == len(r) == B
    G = args.group_size
    for g in range(0, len(r), G):
        group = r[g : g + G]
        mean, std = statistics.mean(group), statistics.stdev(group)
        for i in range(G):
            want = group[i] - mean if dr_grpo else (group[i] - mean) / (std + 1e-6)
            assert abs(seen[g + i] - want) < 1e-5, (g, i)
    assert any(statistics.stdev(r[g : g + G]) > 0 for g in range(0, len(r), G))  # some group carries a signal


@pytest.mark.parametrize("M", [sofT_grpo, sofT_grpo_fsdp], ids=lambda m: m.__name__)
@pytest.mark.parametrize("flags", [dict(tau_g=0.5), dict(noise="gaussian"), dict(noise="dirichlet")], ids=str)
def test_soft_flags_reach_the_old_and_the_new_log_probs(M, flags, tmp_path, monkeypatch):
    losses, scores = record(monkeypatch, M, "grpo_loss"), record(monkeypatch, M, "token_logprobs")
    args = M.Args(**TINY, **flags, toy_cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path))
    M.main(args)
    for a, k, _ in scores:  # every scoring: temperature, noise and tau_g as the flags say
        called = dict(zip(["model", "batch", "temperature", "noise", "tau_g"], a), **k)
        assert (called["noise"], called["tau_g"]) == (args.noise, args.tau_g)
    logp, logp_old = losses[0][0][:2]  # the first micro-batch of the first mini-batch: nothing has stepped yet
    mask = losses[0][0][4].bool()
    assert torch.equal(logp[mask], logp_old[mask])  # ratio exactly 1


@pytest.mark.parametrize("M", [discrete_grpo, discrete_grpo_fsdp, sofT_grpo, sofT_grpo_fsdp], ids=lambda m: m.__name__)
def test_evaluating_during_training_leaves_the_training_run_unchanged(M, tmp_path):
    """An evaluation at step 1 (--eval-every 1) must not move training's sampling draws: step 2 then samples the
    same completions and logs the same numbers as a run that evaluates only before and after. Planted: evaluation
    sampling from the training generator (the code before this test); red."""
    cache, runs = str(tmp_path / "cache"), []
    for eval_every in (0, 1):
        with pytest.MonkeyPatch.context() as mp:
            calls = record(mp, M, "generate")  # evaluations and training rollouts
            args = M.Args(**dict(TINY, total_steps=2), eval_every=eval_every, toy_cache_dir=cache)
            summary = M.main(M.replace(args, output_dir=str(tmp_path)))
        train = [out for a, _, out in calls if len(a[2]) == args.prompts_per_step * args.group_size]  # not evals
        assert len(train) == 2 and len(calls) > 2 + eval_every  # two rollouts; evaluations before, (at 1,) after
        logged = {k: v for k, v in summary.items() if k in ("reward", "loss", "kl", "completions/mean_length")}
        runs.append((train[1]["completion_ids"], logged))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] and runs[0][1] == runs[1][1]
