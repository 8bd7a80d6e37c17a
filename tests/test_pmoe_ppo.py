"""Tests for pmoe_ppo.py: math helpers against independent references, a short real training run
(every parameter moves, losses finite), frozen-statistics evaluation, CPU determinism and bad-input exits."""

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import pmoe_ppo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(env_id="Hopper-v5", num_steps=64, total_timesteps=128, num_minibatches=2, update_epochs=2, num_experts=3)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The MLPs are tiny: a second intra-op thread only adds synchronisation (measured ~2x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_gae(rewards, values, dones, next_value, next_done, gamma, lam):
    """A_t = sum_l (gamma*lam)^l delta_{t+l}, summed explicitly until the episode ends (O(T^2), plain floats)."""
    T, N = len(rewards), len(rewards[0])
    starts = [[float(dones[t][n]) for n in range(N)] for t in range(T)] + [[float(d) for d in next_done]]
    vals = [[float(values[t][n]) for n in range(N)] for t in range(T)] + [[float(v) for v in next_value]]
    adv = [[0.0] * N for _ in range(T)]
    for n in range(N):
        for t in range(T):
            total, discount = 0.0, 1.0
            for k in range(t, T):
                bootstrap = 0.0 if starts[k + 1][n] else gamma * vals[k + 1][n]
                total += discount * (float(rewards[k][n]) + bootstrap - vals[k][n])
                if starts[k + 1][n]:  # the next observation starts a new episode: stop the sum
                    break
                discount *= gamma * lam
            adv[t][n] = total
    return adv


def test_compute_gae_matches_python_loop_with_episode_boundaries():
    g = torch.Generator().manual_seed(0)
    T, N = 37, 3
    rewards, values = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g)
    dones = (torch.rand(T, N, generator=g) < 0.15).float()
    next_value, next_done = torch.randn(N, generator=g), torch.tensor([0.0, 1.0, 0.0])
    assert dones.sum() > 3  # the data really contains boundaries
    advantages, returns = pmoe_ppo.compute_gae(rewards, values, dones, next_value, next_done, 0.99, 0.95)
    expected = torch.tensor(
        reference_gae(
            rewards.tolist(), values.tolist(), dones.tolist(), next_value.tolist(), next_done.tolist(), 0.99, 0.95
        )
    )
    torch.testing.assert_close(advantages, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returns, expected + values, rtol=1e-5, atol=1e-5)


def torch_mixture(mix_logits, means, log_stds):
    return MixtureSameFamily(Categorical(logits=mix_logits), Independent(Normal(means, log_stds.exp()), 1))


def test_mixture_log_prob_matches_mixture_same_family():
    g = torch.Generator().manual_seed(1)
    B, K, A = 16, 4, 6
    mix_logits, means = torch.randn(B, K, generator=g), torch.randn(B, K, A, generator=g)
    log_stds, action = 0.5 * torch.randn(B, K, A, generator=g), 2 * torch.randn(B, A, generator=g)
    ours = pmoe_ppo.mixture_log_prob(action, mix_logits, means, log_stds)
    assert ours.shape == (B,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, torch_mixture(mix_logits, means, log_stds).log_prob(action), rtol=1e-5, atol=1e-5)


def test_mixture_log_prob_finite_for_far_17d_actions():
    g = torch.Generator().manual_seed(2)
    B, K, A = 8, 5, 17  # Humanoid: 17-D actions
    mix_logits, means = torch.randn(B, K, generator=g), torch.randn(B, K, A, generator=g, requires_grad=True)
    log_stds = torch.full((B, K, A), -2.0)
    action = torch.full((B, A), 30.0)  # hundreds of sigmas away from every expert
    ours = pmoe_ppo.mixture_log_prob(action, mix_logits, means, log_stds)
    naive = torch.log(
        (
            mix_logits.softmax(-1)
            * torch_mixture(mix_logits, means, log_stds).component_distribution.log_prob(action.unsqueeze(1)).exp()
        ).sum(-1)
    )
    assert torch.isneginf(naive).all()  # what log(w . exp(log N)) gives: the reason for logsumexp
    assert torch.isfinite(ours).all()
    ours.sum().backward()
    assert torch.isfinite(means.grad).all()


def test_k1_mixture_equals_single_gaussian_and_entropy():
    g = torch.Generator().manual_seed(3)
    B, A = 10, 17
    mean, log_std, action = (
        torch.randn(B, A, generator=g),
        torch.randn(B, A, generator=g),
        torch.randn(B, A, generator=g),
    )
    mix_logits = torch.randn(B, 1, generator=g)  # any logits: w = 1
    normal = Normal(mean, log_std.exp())
    ours = pmoe_ppo.mixture_log_prob(action, mix_logits, mean.unsqueeze(1), log_std.unsqueeze(1))
    torch.testing.assert_close(ours, normal.log_prob(action).sum(-1))
    entropy = pmoe_ppo.mixture_entropy_bound(mix_logits, log_std.unsqueeze(1))
    torch.testing.assert_close(entropy, normal.entropy().sum(-1))


def test_entropy_bound_is_above_monte_carlo_mixture_entropy():
    g = torch.Generator().manual_seed(4)
    mix_logits, means, log_stds = (
        torch.randn(2, 3, generator=g),
        torch.randn(2, 3, 2, generator=g),
        torch.zeros(2, 3, 2),
    )
    mixture = torch_mixture(mix_logits, means, log_stds)
    torch.manual_seed(0)
    mc_entropy = -mixture.log_prob(mixture.sample((20000,))).mean(0)  # [2]
    assert (pmoe_ppo.mixture_entropy_bound(mix_logits, log_stds) >= mc_entropy - 0.02).all()


def test_route_loss_regresses_w_onto_one_hot_argmax_q():
    mix_logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]], requires_grad=True)
    q = torch.tensor([[5.0, 1.0, 0.0], [0.0, 0.0, 3.0]])  # best experts: 0 and 2
    w = mix_logits.softmax(-1)
    expected = ((w - torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])) ** 2).mean()
    loss = pmoe_ppo.route_loss_fn(mix_logits, q)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert mix_logits.grad[0, 0] < 0 and mix_logits.grad[1, 2] < 0  # the best expert's weight goes up


def spy_agents(mp):
    """Make pmoe_ppo.Agent a subclass that records each instance with a copy of its initial parameters."""
    created = []

    class SpyAgent(pmoe_ppo.Agent):
        def __init__(self, *args):
            super().__init__(*args)
            created.append((self, {n: p.detach().clone() for n, p in self.named_parameters()}))

    mp.setattr(pmoe_ppo, "Agent", SpyAgent)
    return created


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short PMOE run (K=3, 2 PPO iterations) with --save-model, shared by the tests below."""
    workdir = tmp_path_factory.mktemp("pmoe_ppo")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        created = spy_agents(mp)
        summary = pmoe_ppo.main(pmoe_ppo.Args(**TINY, save_model=True, eval_episodes=2))
    agent, initial = created[0]  # created[1] is the evaluation agent
    return summary, agent, initial, str(workdir / summary["model_path"])


def test_short_run_trains_every_parameter(trained):
    summary, agent, initial, _ = trained
    assert summary["global_step"] == 128 and summary["episodes"] > 0  # 2 iterations of 64 steps; Hopper episodes end
    losses = {k: v for k, v in summary.items() if k.startswith("losses/")}
    assert {"losses/q_loss", "losses/route_loss", "losses/policy_loss", "losses/value_loss"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values()) and summary["losses/route_loss"] > 0
    assert math.isfinite(summary["final_return"]) and math.isfinite(summary["eval_return"])
    assert abs(sum(summary[f"charts/expert_usage_{k}"] for k in range(3)) - 1) < 1e-6
    names = {n for n, _ in agent.named_parameters()}
    assert any(n.startswith("q_net.") for n in names) and "router.weight" in names
    unchanged = [n for n, p in agent.named_parameters() if torch.equal(p.detach(), initial[n])]
    assert unchanged == []


def test_mixture_ablation_trains_every_parameter_without_q_net(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    created = spy_agents(monkeypatch)
    summary = pmoe_ppo.main(
        pmoe_ppo.Args(**{**TINY, "num_steps": 32, "total_timesteps": 64}, gradient_estimator="mixture")
    )
    agent, initial = created[0]
    assert not hasattr(agent, "q_net") and summary["losses/route_loss"] == 0.0
    assert [n for n, p in agent.named_parameters() if torch.equal(p.detach(), initial[n])] == []


def test_eval_freezes_and_reproduces_saved_normalisation_stats(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --eval-only writes its TensorBoard run under ./runs
    summary, model_path = trained[0], trained[3]
    ckpt = torch.load(model_path, weights_only=True)
    assert set(ckpt) >= {"model", "args", "obs_rms"} and ckpt["args"]["num_experts"] == 3
    saved = ckpt["obs_rms"][0]
    assert saved["count"].item() > 128  # statistics of the training rollout, not a fresh wrapper
    returns, obs_rms = pmoe_ppo.evaluate(model_path, 2, "argmax", torch.device("cpu"), seed=1)
    assert len(returns) >= 2 and all(math.isfinite(r) for r in returns)
    np.testing.assert_array_equal(obs_rms.mean, saved["mean"].numpy())
    np.testing.assert_array_equal(obs_rms.var, saved["var"].numpy())
    assert obs_rms.count == saved["count"].item()
    # --eval-only on the saved file: deterministic episodes give the same returns as the end-of-training eval
    again = pmoe_ppo.main(pmoe_ppo.Args(eval_only=True, model_path=model_path, eval_episodes=2))
    assert again["eval_return"] == pytest.approx(summary["eval_return"])


def test_same_seed_runs_are_identical_on_cpu(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = trained[0]
    second = pmoe_ppo.main(pmoe_ppo.Args(**TINY, save_model=True, eval_episodes=2))
    skip = {"sps", "charts/SPS", "model_path"}
    assert {k: v for k, v in first.items() if k not in skip} == {k: v for k, v in second.items() if k not in skip}


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pmoe_ppo, "mixture_log_prob", lambda action, *a: torch.full(action.shape[:1], float("nan")))
    with pytest.raises(SystemExit, match="non-finite loss"):
        pmoe_ppo.main(pmoe_ppo.Args(**{**TINY, "num_steps": 32, "total_timesteps": 32}))


@pytest.mark.parametrize(
    "overrides, flag",
    [
        (dict(total_timesteps=10), "--total-timesteps"),
        (dict(update_epochs=0), "--update-epochs"),
        (dict(num_experts=0), "--num-experts"),
    ],
)
def test_bad_args_exit_2_in_process(overrides, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        pmoe_ppo.main(dataclasses.replace(pmoe_ppo.Args(**TINY), **overrides))
    assert exc.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--env-id", "CartPole-v1"], "--env-id"),
        (["--env-id", "NoSuchEnv-v0"], "--env-id"),
        (["--num-minibatches", "7"], "--num-minibatches"),
        (["--eval-only", "--model-path", "missing.cleanrl_model"], "--model-path"),
    ],
)
def test_bad_input_one_line_error_exit_2(argv, flag, tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "pmoe_ppo.py"), *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}") and "Traceback" not in proc.stderr
