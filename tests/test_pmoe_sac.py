"""pmoe_sac.py: log-densities against torch.distributions, gradient routing, gymnasium 1.x terminal observations,
real training for every estimator, determinism, bad input and the save/evaluate roundtrip."""

import math
import os
import subprocess
import sys
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import (
    AffineTransform,
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
    TanhTransform,
    TransformedDistribution,
)

import pmoe_sac

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tiny but real settings: Hopper episodes end in a few dozen random steps; 250 learning steps = 250 critic updates
TINY = dict(
    env_id="Hopper-v5",
    total_timesteps=400,
    learning_starts=150,
    batch_size=32,
    hidden_dim=32,
    buffer_size=1000,
    eval_episodes=2,
    num_experts=3,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks on a shared 2-core machine: torch's thread pool only adds contention (20x slower seen)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spaces(obs_dim=5, low=(-0.5, -2.0, 0.0), high=(1.5, 2.0, 0.4)):
    """Stand-in for a vector env: only the two single_* spaces the networks read (asymmetric action bounds)."""
    action_space = gym.spaces.Box(np.array(low, np.float32), np.array(high, np.float32))
    return SimpleNamespace(single_observation_space=gym.spaces.Box(-1, 1, (obs_dim,)), single_action_space=action_space)


def squashed(base, scale, bias):
    """Reference: base distribution pushed through tanh then the affine rescale, all by torch.distributions."""
    return TransformedDistribution(base, [TanhTransform(cache_size=1), AffineTransform(bias, scale, cache_size=1)])


def test_expert_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    scale, bias = torch.tensor([1.0, 2.0, 0.2]), torch.tensor([0.5, 0.0, 0.2])
    mean, log_std = torch.randn(8, 4, 3) * 0.5, torch.rand(8, 4, 3) * 0.5 - 1.0  # [B, K, A]
    ref = squashed(Independent(Normal(mean, log_std.exp()), 1), scale, bias)
    a = ref.rsample()  # cached transforms: log_prob inverts exactly, with no atanh round-off
    u = ref.transforms[0]._cached_x_y[0]  # the pre-tanh sample
    ours = pmoe_sac.tanh_gaussian_log_prob(u, mean, log_std, scale)  # [B, K]
    assert torch.allclose(ours, ref.log_prob(a), atol=1e-3)  # CleanRL's +1e-6 inside the log is the only difference
    assert torch.allclose(scale * torch.tanh(u) + bias, a)


def test_mixture_log_prob_matches_torch_distributions_and_k1_is_unimodal():
    torch.manual_seed(1)
    scale, bias = torch.tensor([1.0, 2.0, 0.2]), torch.tensor([0.5, 0.0, 0.2])
    mix_logits, mean, log_std = torch.randn(8, 4), torch.randn(8, 4, 3) * 0.5, torch.rand(8, 4, 3) * 0.5 - 1.0
    gmm = MixtureSameFamily(Categorical(logits=mix_logits), Independent(Normal(mean, log_std.exp()), 1))
    ref = squashed(gmm, scale, bias)
    a = ref.sample()
    u = ref.transforms[0]._cached_x_y[0]
    ours = pmoe_sac.mixture_log_prob(u, mix_logits, mean, log_std, scale)  # [B]
    assert torch.allclose(ours, ref.log_prob(a), atol=1e-3)
    # K = 1: the mixture density is exactly (bit for bit) the single expert's density
    one = pmoe_sac.mixture_log_prob(u, mix_logits[:, :1], mean[:, :1], log_std[:, :1], scale)
    assert torch.equal(one, pmoe_sac.tanh_gaussian_log_prob(u, mean[:, 0], log_std[:, 0], scale))


def test_k1_actor_is_plain_sac():
    """With one expert both log-prob choices agree exactly, and the PMOE loss is SAC's alpha*logp - minQ."""
    env = spaces()
    torch.manual_seed(2)
    actor, qf1, qf2 = pmoe_sac.Actor(env, 1, 16), pmoe_sac.SoftQNetwork(env, 16), pmoe_sac.SoftQNetwork(env, 16)
    obs, alpha = torch.randn(6, 5), torch.tensor([0.3])
    results = []
    for mixture_logp in (False, True):
        torch.manual_seed(3)
        results.append(actor.get_action(obs, mixture_logp))
    for x, y in zip(*results):
        assert torch.equal(x, y)
    torch.manual_seed(4)
    actor_loss, route_loss, log_pi, k = pmoe_sac.actor_losses(actor, qf1, qf2, obs, alpha, pmoe_sac.Args(num_experts=1))
    torch.manual_seed(4)  # SAC by hand: one Gaussian, tanh squashing, min of the two critics
    _, mean, log_std = actor(obs)
    u = mean[:, 0] + log_std[:, 0].exp() * torch.randn_like(mean[:, 0])
    ref_log_pi = squashed(
        Independent(Normal(mean[:, 0], log_std[:, 0].exp()), 1), actor.action_scale, actor.action_bias
    )
    a = actor.action_scale * torch.tanh(u) + actor.action_bias
    sac_loss = (alpha * log_pi - torch.min(qf1(obs, a), qf2(obs, a)).view(-1)).mean()
    assert torch.allclose(actor_loss, sac_loss) and route_loss.item() == 0.0 and (k == 0).all()
    assert torch.allclose(log_pi, ref_log_pi.log_prob(a), atol=1e-3)


def test_pmoe_gradient_routing():
    """The actor loss reaches only expert k*'s head rows (and the trunk); the routing loss only the routing head."""
    env, K, A = spaces(), 4, 3
    torch.manual_seed(5)
    actor, qf1, qf2 = pmoe_sac.Actor(env, K, 16), pmoe_sac.SoftQNetwork(env, 16), pmoe_sac.SoftQNetwork(env, 16)
    obs, args = torch.randn(1, 5), pmoe_sac.Args(num_experts=K)
    torch.manual_seed(6)
    actor_loss, route_loss, _, k = pmoe_sac.actor_losses(actor, qf1, qf2, obs, torch.tensor([0.2]), args)
    # k* recomputed independently from the same noise: one sample per expert, argmax of min(Q1, Q2)
    torch.manual_seed(6)
    _, mean, log_std = actor(obs)
    a_all = actor.squash(mean + log_std.exp() * torch.randn_like(mean))[0]  # [K, A]
    q = torch.min(qf1(obs.expand(K, -1), a_all), qf2(obs.expand(K, -1), a_all)).view(-1)
    k_star = int(k[0])
    assert k_star == int(q.argmax())

    actor_loss.backward()
    for head in (actor.fc_mean, actor.fc_logstd):
        weight_rows, bias_rows = head.weight.grad.view(K, A, -1), head.bias.grad.view(K, A)
        for j in range(K):
            assert (weight_rows[j].abs().sum() > 0) == (j == k_star)
            assert (bias_rows[j].abs().sum() > 0) == (j == k_star)
    assert actor.fc_route.weight.grad is None and actor.fc_route.bias.grad is None
    assert actor.fc1.weight.grad.abs().sum() > 0 and actor.fc2.weight.grad.abs().sum() > 0

    actor.zero_grad(set_to_none=True)
    route_loss.backward()
    assert actor.fc_route.weight.grad.abs().sum() > 0 and actor.fc_route.bias.grad.abs().sum() > 0
    for name, p in actor.named_parameters():
        if not name.startswith("fc_route"):
            assert p.grad is None, name


@pytest.mark.parametrize("ending", ["truncation", "termination"])
def test_terminal_observation_is_stored(ending):
    """SAME_STEP autoreset: the buffer's next_obs is the ended episode's true last obs, done only on termination."""
    limit = 5 if ending == "truncation" else 1000
    thunk = lambda: gym.wrappers.TimeLimit(pmoe_sac.make_env("Hopper-v5", 0)(), limit)  # noqa: E731
    envs = gym.vector.SyncVectorEnv([thunk], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    ref = gym.make("Hopper-v5")  # an independent single env on the same seed and actions
    obs, _ = envs.reset(seed=3)
    ref.reset(seed=3)
    rb = pmoe_sac.ReplayBuffer(2000, 11, 3, "cpu")
    action = np.full((1, 3), 0.8, np.float32)  # a constant push: Hopper falls (terminates) within ~30 steps
    for step in range(limit):
        ref_obs, _, ref_term, ref_trunc, _ = ref.step(action[0])
        next_obs, rewards, terminations, truncations, infos = envs.step(action)
        rb.add(obs, next_obs, action, rewards, terminations, infos)
        if terminations[0] or truncations[0]:
            break
        obs = next_obs
    assert (ending == "termination") == bool(terminations[0]) == ref_term
    assert (ending == "truncation") == bool(truncations[0])
    stored = rb.data["next_observations"][step]
    np.testing.assert_allclose(stored, ref_obs.astype(np.float32))  # the true last obs, not the reset obs
    assert not np.allclose(stored, next_obs[0])
    assert rb.data["dones"][step, 0] == float(ending == "termination")
    assert rb.size == step + 1 and rb.data["dones"][:step].sum() == 0


@pytest.fixture
def record_networks(monkeypatch):
    """Snapshot every network main builds, at construction, so tests can diff them after training."""
    built = []

    def recording(cls):
        class Recorded(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                built.append((self, {n: p.detach().clone() for n, p in self.named_parameters()}))

        return Recorded

    monkeypatch.setattr(pmoe_sac, "Actor", recording(pmoe_sac.Actor))
    monkeypatch.setattr(pmoe_sac, "SoftQNetwork", recording(pmoe_sac.SoftQNetwork))
    return built


@pytest.mark.parametrize("estimator", ["pmoe", "gumbel", "reinforce"])
def test_each_estimator_trains(estimator, record_networks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = pmoe_sac.main(pmoe_sac.Args(gradient_estimator=estimator, **TINY))
    for key in ("qf_loss", "actor_loss", "route_loss", "alpha", "eval_return", "final_return"):
        assert summary[key] is not None and math.isfinite(summary[key]), key
    assert summary["alpha"] != 1.0 and summary["episodes"] > 0  # alpha was tuned; episodes were logged
    if estimator != "gumbel":
        assert summary["route_loss"] != 0.0
    actor, qf1, qf2 = [net for net, _ in record_networks]  # main builds exactly these three
    for net, before in record_networks:
        for name, p in net.named_parameters():
            assert not torch.equal(p.detach(), before[name]), f"{type(net).__name__}.{name} did not change"
    assert os.listdir(tmp_path / "runs")  # a TensorBoard run directory


def test_same_seed_same_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = [pmoe_sac.main(pmoe_sac.Args(seed=7, **{**TINY, "num_experts": 2})) for _ in range(2)]
    strip = lambda s: {k: v for k, v in s.items() if not k.startswith("sps")}  # noqa: E731 (wall-clock)
    assert strip(runs[0]) == strip(runs[1])


def test_save_then_evaluate_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = pmoe_sac.Args(save_model=True, eval_expert="argmax_w", **TINY)
    summary = pmoe_sac.main(args)
    path = summary["model_path"]
    assert os.path.isfile(path) and not os.path.exists(path + ".tmp")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["args"]["num_experts"] == 3 and set(checkpoint) == {"actor", "qf1", "qf2", "args"}
    again = pmoe_sac.main(pmoe_sac.Args(model_path=path, eval_expert="argmax_w", eval_episodes=2))
    assert again["eval_return"] == summary["eval_return"]  # same weights, same env seeds, deterministic actions


@pytest.mark.parametrize(
    "override",
    [
        dict(env_id="CartPole-v1"),
        dict(num_experts=0),
        dict(batch_size=2000),
        dict(learning_starts=500),
        dict(model_path="missing.cleanrl_model"),
    ],
)
def test_bad_input_exits_2(override, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        pmoe_sac.main(pmoe_sac.Args(**{**TINY, **override}))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --") and "\n" not in err
    assert not (tmp_path / "runs").exists()  # rejected before any run directory is made


@pytest.mark.parametrize(
    "flags, flag", [(["--env-id", "NoSuchEnv-v0"], "--env-id"), (["--num-experts", "0"], "--num-experts")]
)
def test_bad_input_cli_one_line_no_traceback(flags, flag, tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "pmoe_sac.py"), *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}") and "Traceback" not in result.stderr


def test_non_finite_loss_stops_the_run(tmp_path, monkeypatch):
    """A diverging update (here: a NaN injected into the actor loss) ends the run with a clear message."""
    monkeypatch.chdir(tmp_path)
    real = pmoe_sac.actor_losses

    def diverging(*args):
        actor_loss, route_loss, log_pi, k = real(*args)
        return actor_loss * float("nan"), route_loss, log_pi, k

    monkeypatch.setattr(pmoe_sac, "actor_losses", diverging)
    with pytest.raises(SystemExit, match="non-finite loss at global_step=200"):
        pmoe_sac.main(pmoe_sac.Args(**TINY))
