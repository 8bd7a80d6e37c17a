"""Tests for pmoe_ppo.py. Each algorithm helper is checked against an independent computation (a brute-force sum, a
numerical integral, torch.distributions, or numbers worked out by hand) at shapes where batching bugs show (B >= 4,
K >= 3). A few short real training runs (seconds each, named `*_run_*`) check that every parameter trains, that the
first minibatch sees a ratio of exactly 1, that the checkpoint holds the trained weights and that evaluation is
reproducible. Subprocess tests (`*_subprocess_*`) check the CLI, bad input and the recorded video."""

import copy
import dataclasses
import glob
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import pmoe_ppo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(env_id="Hopper-v5", num_steps=64, total_timesteps=128, num_minibatches=2, update_epochs=2, num_experts=3)
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The MLPs are tiny: a second intra-op thread only adds synchronisation (measured ~2x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fake_envs(obs_dim, act_dim):  # what Agent reads from a vector env
    return SimpleNamespace(
        single_observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,)),
        single_action_space=gym.spaces.Box(-1.0, 1.0, (act_dim,)),
    )


def test_make_env_clips_normalised_observations_and_rewards_to_10():
    """CleanRL's wrappers: normalised observations and rewards are clipped to [-10, 10]; the reward normaliser uses
    the run's gamma. The clip functions are the wrappers' own `func`."""
    env = pmoe_ppo.make_env("Hopper-v5", 1, False, "unused", 0.9)()
    assert pmoe_ppo.find_wrapper(env, gym.wrappers.NormalizeReward).gamma == 0.9
    clip_obs = pmoe_ppo.find_wrapper(env, gym.wrappers.TransformObservation).func
    clip_reward = pmoe_ppo.find_wrapper(env, gym.wrappers.TransformReward).func
    values = np.array([-1e6, -10.5, -3.0, 0.0, 4.0, 10.5, 1e6])
    clipped = np.array([-10.0, -10.0, -3.0, 0.0, 4.0, 10.0, 10.0])
    np.testing.assert_array_equal(clip_obs(values), clipped)
    np.testing.assert_array_equal([clip_reward(v) for v in values], clipped)
    env.close()


# ---------------------------------------------------------------- GAE


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


@pytest.mark.parametrize("next_value_shape", ["[N]", "[1, N] (main's reshape(1, -1))"])
def test_compute_gae_matches_python_loop_with_episode_boundaries(next_value_shape):
    g = torch.Generator().manual_seed(0)
    T, N = 37, 4
    rewards, values = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g)
    dones = (torch.rand(T, N, generator=g) < 0.15).float()
    next_value, next_done = torch.randn(N, generator=g), torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert dones.sum() > 3  # the data really contains boundaries
    expected = torch.tensor(
        reference_gae(
            rewards.tolist(), values.tolist(), dones.tolist(), next_value.tolist(), next_done.tolist(), 0.99, 0.95
        )
    )
    bootstrap = next_value if next_value_shape == "[N]" else next_value.reshape(1, -1)
    args = SimpleNamespace(num_steps=T, gamma=0.99, gae_lambda=0.95)
    advantages, returns = pmoe_ppo.compute_gae(rewards, values, dones, bootstrap, next_done, args)
    torch.testing.assert_close(advantages, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returns, expected + values, rtol=1e-5, atol=1e-5)


def test_k1_networks_are_cleanrl_ppo_networks():
    """K=1: the critic and the actor mean are CleanRL's obs -> 64 -> tanh -> 64 -> tanh -> out MLPs, with its
    orthogonal gains (sqrt 2 hidden, 1.0 value head, 0.01 action head): checked by rebuilding them layer by layer."""
    torch.manual_seed(14)
    obs_dim, A = 11, 3
    agent = pmoe_ppo.Agent(fake_envs(obs_dim, A), 1, "pmoe", use_routing=False)
    x = torch.randn(8, obs_dim)
    for net, out_dim, head_gain in [(agent.critic, 1, 1.0), (agent.actor_mean, A, 0.01)]:
        rebuilt = torch.nn.Sequential(
            torch.nn.Linear(obs_dim, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, out_dim),
        )
        rebuilt.load_state_dict(net.state_dict())
        torch.testing.assert_close(net(x), rebuilt(x))
        for layer, gain in [(rebuilt[0], math.sqrt(2)), (rebuilt[2], math.sqrt(2)), (rebuilt[4], head_gain)]:
            singular_values = torch.linalg.svdvals(layer.weight.detach())
            torch.testing.assert_close(singular_values, torch.full_like(singular_values, gain), rtol=1e-4, atol=1e-6)
            assert layer.bias.abs().max() == 0
    assert agent.actor_logstd.abs().max() == 0  # sigma = 1 at the start, as CleanRL


def test_q_network_is_a_two_hidden_layer_relu_mlp_on_obs_and_action():
    torch.manual_seed(15)
    obs_dim, A = 11, 3
    q_net = pmoe_ppo.Agent(fake_envs(obs_dim, A), 3, "pmoe", use_routing=True).q_net
    rebuilt = torch.nn.Sequential(
        torch.nn.Linear(obs_dim + A, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 1),
    )
    rebuilt.load_state_dict(q_net.state_dict())
    x = torch.randn(8, obs_dim + A)
    torch.testing.assert_close(q_net(x), rebuilt(x))


def test_other_mujoco_warnings_are_still_printed(capsys):
    pmoe_ppo.mujoco_warning("Nan, Inf or huge value in QACC at DOF 0.")
    pmoe_ppo.mujoco_warning("compiler attribute 'settotalmass' is deprecated")
    err = capsys.readouterr().err
    assert err == "MuJoCo warning: Nan, Inf or huge value in QACC at DOF 0.\n"


# ---------------------------------------------------------------- the three policies' densities


def torch_mixture(mix_logits, means, log_stds):
    return MixtureSameFamily(Categorical(logits=mix_logits), Independent(Normal(means, log_stds.exp()), 1))


def random_experts(seed, B, K, A):
    g = torch.Generator().manual_seed(seed)
    mix_logits, means = torch.randn(B, K, generator=g), torch.randn(B, K, A, generator=g)
    log_stds, action = 0.5 * torch.randn(B, K, A, generator=g), 1.5 * torch.randn(B, A, generator=g)
    return mix_logits, means, log_stds, action


def test_mixture_log_prob_matches_mixture_same_family():
    mix_logits, means, log_stds, action = random_experts(1, B=16, K=4, A=6)
    ours = pmoe_ppo.mixture_log_prob(action, mix_logits, means, log_stds)
    assert ours.shape == (16,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, torch_mixture(mix_logits, means, log_stds).log_prob(action), rtol=1e-5, atol=1e-5)


def test_mixture_log_prob_finite_for_far_17d_actions():
    g = torch.Generator().manual_seed(2)
    B, K, A = 8, 5, 17  # Humanoid: 17-D actions
    mix_logits, means = torch.randn(B, K, generator=g), torch.randn(B, K, A, generator=g, requires_grad=True)
    log_stds = torch.full((B, K, A), -2.0)
    action = torch.full((B, A), 30.0)  # hundreds of sigmas away from every expert
    ours = pmoe_ppo.mixture_log_prob(action, mix_logits, means, log_stds)
    components = torch_mixture(mix_logits, means, log_stds).component_distribution.log_prob(action.unsqueeze(1))
    naive = torch.log((mix_logits.softmax(-1) * components.exp()).sum(-1))
    assert torch.isneginf(naive).all()  # what log(w . exp(log N)) gives: the reason for logsumexp
    assert torch.isfinite(ours).all()
    ours.sum().backward()
    assert torch.isfinite(means.grad).all()


def numeric_log_density(log_unnormalised, points, grid):
    """log p(x) for p proportional to exp(log_unnormalised), normalised by a Riemann sum on `grid` (1-D, float64)."""
    dx = grid[1] - grid[0]
    log_z = torch.logsumexp(log_unnormalised(grid), 0) + math.log(dx)
    return log_unnormalised(points) - log_z


def gaussian_log_pdf(x, mean, std):  # float64 1-D density, written out so it is not torch's Normal
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - LOG_SQRT_2PI


def agent_with_experts(policy_type, mix_logits, means, log_stds):
    """A real Agent whose get_experts returns the given tensors, so get_action_and_value is what is tested."""
    B, K, A = means.shape
    agent = pmoe_ppo.Agent(fake_envs(3, A), K, policy_type, use_routing=False)
    agent.get_experts = lambda x: (mix_logits, means, log_stds)
    return agent


def test_mcp_log_prob_is_the_normalised_weighted_product_of_experts():
    """MCP: pi(a|s) proportional to prod_k N_k(a)^w_k. Reference: normalise that product numerically on a grid."""
    mix_logits, means, log_stds, action = random_experts(3, B=4, K=3, A=2)
    agent = agent_with_experts("mcp", mix_logits, means, log_stds)
    _, ours, entropy, _ = agent.get_action_and_value(torch.zeros(4, 3), action)
    w = mix_logits.softmax(-1).double()
    grid = torch.linspace(-15, 15, 60001, dtype=torch.float64)
    expected = torch.zeros(4, dtype=torch.float64)
    for b in range(4):
        for d in range(2):

            def log_product(x, b=b, d=d):
                terms = [
                    w[b, k] * gaussian_log_pdf(x, means[b, k, d].double(), log_stds[b, k, d].double().exp())
                    for k in range(3)
                ]
                return sum(terms)

            point = action[b, d].double().reshape(1)
            expected[b] += numeric_log_density(log_product, point, grid)[0]
    torch.testing.assert_close(ours.double(), expected, rtol=0, atol=1e-4)
    assert entropy.shape == (4,)


def test_gating_log_prob_is_one_gaussian_of_weighted_means_and_log_stds():
    mix_logits, means, log_stds, action = random_experts(4, B=5, K=3, A=2)
    agent = agent_with_experts("gating", mix_logits, means, log_stds)
    _, ours, entropy, _ = agent.get_action_and_value(torch.zeros(5, 3), action)
    expected, expected_entropy = [], []
    for b in range(5):
        w = mix_logits[b].softmax(-1).tolist()
        total, total_entropy = 0.0, 0.0
        for d in range(2):
            mean = sum(w[k] * means[b, k, d].item() for k in range(3))
            std = math.exp(sum(w[k] * log_stds[b, k, d].item() for k in range(3)))
            total += gaussian_log_pdf(action[b, d].item(), mean, std)
            total_entropy += 0.5 + LOG_SQRT_2PI + math.log(std)  # a Gaussian's entropy, 0.5 log(2 pi e sigma^2)
        expected.append(total)
        expected_entropy.append(total_entropy)
    torch.testing.assert_close(ours, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, torch.tensor(expected_entropy), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy_type", ["pmoe", "gating", "mcp"])
def test_k1_takes_cleanrl_gaussian_equal_to_the_k_expert_path(policy_type):
    """K=1 runs CleanRL's own Gaussian lines (no router, no mixture ops). They must equal the K-expert path at K=1:
    the mixture's log-density and entropy (pmoe) or the composed Gaussian (gating, mcp), the same action draw under
    the same seed (the mixture's once z = 0 is drawn), and the same evaluation action."""
    torch.manual_seed(4)
    agent = pmoe_ppo.Agent(fake_envs(17, 6), 1, policy_type, use_routing=False)
    with torch.no_grad():  # a distinct std per dimension, and a mean far from 0
        agent.actor_logstd.normal_()
        agent.actor_mean[-1].bias.normal_()
    x = torch.randn(8, 17)
    mix_logits, means, log_stds = agent.get_experts(x)  # the general path's inputs: [8, 1], [8, 1, 6] x2
    torch.manual_seed(1)
    action, logprob, entropy, value = agent.get_action_and_value(x)
    torch.manual_seed(1)
    torch.testing.assert_close(action, torch.normal(means[:, 0], log_stds[:, 0].exp()), rtol=0, atol=0)
    if policy_type == "pmoe":
        expected = pmoe_ppo.mixture_log_prob(action, mix_logits, means, log_stds)
        expected_entropy = pmoe_ppo.mixture_entropy_bound(mix_logits, log_stds)
    else:
        mean, log_std = pmoe_ppo.combine_experts(policy_type, mix_logits, means, log_stds)
        expected = Normal(mean, log_std.exp()).log_prob(action).sum(-1)
        expected_entropy = Normal(mean, log_std.exp()).entropy().sum(-1)
    torch.testing.assert_close(logprob, expected)
    torch.testing.assert_close(entropy, expected_entropy)
    torch.testing.assert_close(value, agent.critic(x))
    for rule in ("argmax", "sample"):
        torch.testing.assert_close(agent.get_eval_action(x, rule), means[:, 0], rtol=0, atol=0)


def test_expert_and_action_draws_are_torch_distributions_draws_under_the_same_seed():
    """sample_expert is Categorical(logits).sample() without its checks; with K > 1 an action is that expert's
    Gaussian draw, and its log-prob the mixture's (MixtureSameFamily)."""
    mix_logits, means, log_stds, _ = random_experts(21, B=500, K=4, A=3)
    torch.manual_seed(2)
    ours = pmoe_ppo.sample_expert(mix_logits)
    torch.manual_seed(2)
    assert torch.equal(ours, Categorical(logits=mix_logits).sample())
    agent = agent_with_experts("pmoe", mix_logits, means, log_stds)
    torch.manual_seed(3)
    action, logprob, _, _ = agent.get_action_and_value(torch.zeros(500, 3))
    torch.manual_seed(3)
    z = Categorical(logits=mix_logits).sample()
    rows = torch.arange(500)
    torch.testing.assert_close(action, torch.normal(means[rows, z], log_stds[rows, z].exp()), rtol=0, atol=0)
    torch.testing.assert_close(logprob, torch_mixture(mix_logits, means, log_stds).log_prob(action))


def monte_carlo_entropy(mix_logits, means, log_stds, n=40000):
    mixture = torch_mixture(mix_logits, means, log_stds)
    torch.manual_seed(0)
    return -mixture.log_prob(mixture.sample((n,))).mean(0)  # [B]


def test_entropy_bound_equals_mixture_entropy_for_separated_experts():
    """With non-overlapping experts H(mixture) = H(w) + sum_k w_k H(N_k) exactly: the bound must match, which it
    cannot if the router's entropy H(w) is counted twice (or dropped)."""
    g = torch.Generator().manual_seed(6)
    B, K, A = 4, 3, 2
    mix_logits = torch.randn(B, K, generator=g)
    log_stds = 0.3 * torch.randn(B, K, A, generator=g)
    means = 100.0 * torch.arange(K, dtype=torch.float32).view(1, K, 1).expand(B, K, A).contiguous()
    bound = pmoe_ppo.mixture_entropy_bound(mix_logits, log_stds)
    torch.testing.assert_close(bound, monte_carlo_entropy(mix_logits, means, log_stds), rtol=0, atol=0.03)
    assert (Categorical(logits=mix_logits).entropy() > 0.3).all()  # a double-counted H(w) would be far off


def test_entropy_bound_lies_above_mixture_entropy_for_overlapping_experts():
    g = torch.Generator().manual_seed(7)
    B, K, A = 4, 3, 2
    mix_logits, means, log_stds = (
        torch.randn(B, K, generator=g),
        torch.randn(B, K, A, generator=g),
        torch.zeros(B, K, A),
    )
    mc_entropy = monte_carlo_entropy(mix_logits, means, log_stds)
    bound = pmoe_ppo.mixture_entropy_bound(mix_logits, log_stds)
    assert (bound >= mc_entropy - 0.03).all() and (bound - mc_entropy).max() > 0.1  # strict where experts overlap


@pytest.mark.parametrize("policy_type", ["pmoe", "gating"])
def test_eval_action_is_a_deterministic_mean(policy_type):
    """pmoe: the mean of expert argmax_k w_k(s) (or of z ~ Cat(w)); gating: the w-weighted mean of the expert means."""
    mix_logits, means, log_stds, _ = random_experts(10, B=6, K=3, A=2)
    agent = agent_with_experts(policy_type, mix_logits, means, log_stds)
    expected = torch.zeros(6, 2)
    for b in range(6):
        w = mix_logits[b].softmax(-1).tolist()
        for d in range(2):
            if policy_type == "pmoe":
                expected[b, d] = means[b, w.index(max(w)), d]
            else:
                expected[b, d] = sum(w[k] * means[b, k, d].item() for k in range(3))
    torch.testing.assert_close(agent.get_eval_action(torch.zeros(6, 3), "argmax"), expected)


def test_eval_action_sample_draws_the_expert_from_w():
    B, K, A = 3000, 3, 1
    mix_logits = torch.log(torch.tensor([0.6, 0.3, 0.1])).expand(B, K)
    means = torch.tensor([0.0, 1.0, 2.0]).view(1, K, 1).expand(B, K, A)  # the mean names the expert
    agent = agent_with_experts("pmoe", mix_logits, means, torch.zeros(B, K, A))
    torch.manual_seed(12)
    chosen = agent.get_eval_action(torch.zeros(B, 3), "sample").view(-1).long()
    frequencies = torch.bincount(chosen, minlength=K) / B
    torch.testing.assert_close(frequencies, torch.tensor([0.6, 0.3, 0.1]), rtol=0, atol=0.03)


def test_rollout_draws_the_expert_from_w_then_samples_its_gaussian():
    B, K, A = 4000, 3, 1
    mix_logits = torch.log(torch.tensor([0.5, 0.3, 0.2])).expand(B, K)
    means = torch.tensor([0.0, 10.0, 20.0]).view(1, K, 1).expand(B, K, A)
    stds = torch.tensor([0.1, 0.2, 0.4])
    agent = agent_with_experts("pmoe", mix_logits, means, stds.log().view(1, K, 1).expand(B, K, A))
    torch.manual_seed(13)
    action = agent.get_action_and_value(torch.zeros(B, 3))[0].view(-1)
    expert = torch.round(action / 10).long()  # the experts are 50+ sigmas apart: the nearest mean names the expert
    torch.testing.assert_close(
        torch.bincount(expert, minlength=K) / B, torch.tensor([0.5, 0.3, 0.2]), atol=0.03, rtol=0
    )
    for k in range(K):
        offsets = action[expert == k] - 10.0 * k
        assert abs(offsets.mean().item()) < 0.05 and offsets.std().item() == pytest.approx(stds[k].item(), rel=0.1)


# ---------------------------------------------------------------- PPO losses


class StubAgent:
    """get_action_and_value returns chosen log-probs, entropies and values, so ppo_loss's arithmetic is isolated."""

    use_routing = False  # no PMOE losses: CleanRL's loss alone

    def __init__(self, newlogprob, entropy, newvalue):
        self.out = newlogprob, entropy, newvalue

    def get_action_and_value(self, obs, action, experts=None):
        return (action, *self.out)


def loss_args(**overrides):
    defaults = dict(norm_adv=False, clip_coef=0.2, clip_vloss=True, ent_coef=0.0, vf_coef=0.5)
    return SimpleNamespace(**{**defaults, **overrides})


def ppo_loss_with(ratio, advantages, newvalue=None, values=None, returns=None, **overrides):
    M = len(ratio)
    newlogprob = torch.log(torch.tensor(ratio)).requires_grad_()
    newvalue = torch.zeros(M) if newvalue is None else torch.tensor(newvalue)
    newvalue.requires_grad_()
    out = pmoe_ppo.ppo_loss(
        StubAgent(newlogprob, torch.zeros(M), newvalue.view(M, 1)),
        loss_args(**overrides),
        torch.zeros(M, 3),
        torch.zeros(M, 2),
        torch.zeros(M),  # old log-probs: ratio = exp(newlogprob - 0)
        torch.tensor(advantages),
        torch.zeros(M) if returns is None else torch.tensor(returns),
        torch.zeros(M) if values is None else torch.tensor(values),
        torch.arange(M),
    )
    return out, newlogprob, newvalue


def test_clipped_surrogate_matches_hand_computed_values():
    """PPO eq. 7 with eps = 0.2, worked by hand per row: the objective min(r A, clip(r) A), negated as a loss."""
    ratio = [1.1, 1.5, 0.5, 0.9, 1.5, 0.5]
    advantages = [2.0, 2.0, 2.0, -1.0, -1.0, -1.0]
    # row objectives: 2.2 | clipped at 1.2*2 = 2.4 | 0.5*2 = 1.0 | -0.9 | -1.5 | clipped at 0.8*-1 = -0.8
    expected_objective = [2.2, 2.4, 1.0, -0.9, -1.5, -0.8]
    (loss, pg_loss, *_), newlogprob, _ = ppo_loss_with(ratio, advantages)
    assert pg_loss.item() == pytest.approx(-sum(expected_objective) / 6, abs=1e-6)
    pg_loss.backward()
    # sign of the policy gradient: descending the loss raises the log-prob of positive-advantage actions
    grad = newlogprob.grad * 6  # d(loss)/d(log r_i) = -A_i r_i where unclipped, 0 where the clip is active
    expected_grad = [-2.2, 0.0, -1.0, 0.9, 1.5, 0.0]
    torch.testing.assert_close(grad, torch.tensor(expected_grad), rtol=1e-5, atol=1e-6)


def test_advantage_normalisation_uses_minibatch_mean_and_std():
    advantages = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, sample std sqrt(2.5)
    (_, pg_loss, *_), newlogprob, _ = ppo_loss_with([1.0] * 5, advantages, norm_adv=True)
    pg_loss.backward()
    normalised = [(a - 3.0) / math.sqrt(2.5) for a in advantages]
    torch.testing.assert_close(newlogprob.grad * 5, -torch.tensor(normalised), rtol=1e-5, atol=1e-6)


def test_value_clipping_matches_hand_computed_values():
    """Old value 2, eps 0.2 (clip interval [1.8, 2.2]): 0.5 * max((v - R)^2, (clip(v) - R)^2), worked by hand."""
    newvalue = [2.1, 2.5, 1.5, 3.5, 1.5, 2.5]
    returns = [3.0, 3.0, 3.0, 3.0, 1.0, 1.0]
    # unclipped: .81 .25 2.25 .25 .25 2.25; clipped v: 2.1 2.2 1.8 2.2 1.8 2.2 -> .81 .64 1.44 .64 .64 1.44
    expected = 0.5 * (0.81 + 0.64 + 2.25 + 0.64 + 0.64 + 2.25) / 6
    (loss, _, v_loss, *_), _, value = ppo_loss_with([1.0] * 6, [0.0] * 6, newvalue, [2.0] * 6, returns)
    assert v_loss.item() == pytest.approx(expected, abs=1e-5)
    v_loss.backward()
    # where the clipped branch wins it is flat (no gradient); elsewhere v is pulled toward R: (v - R) / 6
    expected_grad = torch.tensor([-0.9, 0.0, -1.5, 0.0, 0.0, 1.5]) / 6
    torch.testing.assert_close(value.grad, expected_grad, rtol=1e-4, atol=1e-6)
    (_, _, unclipped, *_), _, _ = ppo_loss_with([1.0] * 6, [0.0] * 6, newvalue, [2.0] * 6, returns, clip_vloss=False)
    assert unclipped.item() == pytest.approx(0.5 * (0.81 + 0.25 + 2.25 + 0.25 + 0.25 + 2.25) / 6, abs=1e-5)
    assert loss.item() == pytest.approx(0.5 * expected, abs=1e-5)  # vf_coef 0.5, zero advantages


def test_entropy_bonus_and_kl_statistics():
    ratio = [1.0, 1.3, 0.7, 1.1]
    M = len(ratio)
    logratio = torch.log(torch.tensor(ratio))
    newlogprob = logratio.clone()
    entropy = torch.tensor([1.0, 2.0, 3.0, 4.0])
    agent = StubAgent(newlogprob, entropy, torch.zeros(M, 1))
    zeros = torch.zeros(M)
    args = loss_args(ent_coef=0.1)
    loss, pg_loss, v_loss, entropy_loss, old_kl, kl, clipfrac, q_loss, route_loss = pmoe_ppo.ppo_loss(
        agent, args, torch.zeros(M, 3), torch.zeros(M, 2), zeros, zeros, zeros, zeros, torch.arange(M)
    )
    assert entropy_loss.item() == pytest.approx(2.5) and loss.item() == pytest.approx(-0.25, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)  # 1.3 and 0.7 lie outside [0.8, 1.2]
    assert old_kl.item() == pytest.approx(-sum(math.log(r) for r in ratio) / M, abs=1e-6)
    assert kl.item() == pytest.approx(sum(r - 1 - math.log(r) for r in ratio) / M, abs=1e-6)
    assert q_loss.item() == route_loss.item() == 0.0  # no routing: no PMOE losses


def test_ppo_loss_shares_one_actor_forward_with_the_pmoe_losses():
    """ppo_loss runs the actor once for the PPO and the PMOE losses. The result must equal the two computed apart:
    CleanRL's loss on the agent's own forward, plus q_coef * q_loss + route_coef * route_loss of pmoe_losses on a
    second forward, under the same seed: every output and every parameter's gradient. Planted: the PMOE losses left
    out of `loss`, or given the experts of other rows (mb_inds not applied): red."""
    torch.manual_seed(5)
    agent = pmoe_ppo.Agent(fake_envs(4, 2), 3, "pmoe", use_routing=True)
    N, M = 12, 5
    b_obs, b_actions, b_logprobs = torch.randn(N, 4), torch.randn(N, 2), torch.randn(N) - 2
    b_advantages, b_returns, b_values = torch.randn(N), torch.randn(N), torch.randn(N)
    mb_inds = torch.randperm(N)[:M]
    args = SimpleNamespace(**vars(loss_args(ent_coef=0.01, norm_adv=True)), q_coef=0.7, route_coef=1.3)
    batch = (b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values, mb_inds)
    torch.manual_seed(6)
    shared = pmoe_ppo.ppo_loss(agent, args, *batch)
    shared[0].backward()
    shared_grads = {name: p.grad.clone() for name, p in agent.named_parameters()}
    agent.zero_grad()
    agent.use_routing = False  # CleanRL's loss alone, on its own forward
    apart = list(pmoe_ppo.ppo_loss(agent, args, *batch))
    agent.use_routing = True
    torch.manual_seed(6)
    experts = agent.get_experts(b_obs[mb_inds])
    q_loss, route_loss = pmoe_ppo.pmoe_losses(agent, experts, b_obs[mb_inds], b_actions[mb_inds], b_returns[mb_inds])
    apart[0] = apart[0] + 0.7 * q_loss + 1.3 * route_loss
    apart[-2:] = q_loss, route_loss
    apart[0].backward()
    for ours, expected in zip(shared, apart):
        torch.testing.assert_close(ours, expected)
    assert shared[-1].item() > 0 and shared[-2].item() > 0
    for name, p in agent.named_parameters():
        torch.testing.assert_close(shared_grads[name], p.grad, msg=name)


# ---------------------------------------------------------------- PMOE routing


def test_route_loss_drives_w_to_the_frequency_of_the_best_expert():
    """The frequency approximate gradient: with k* ~ f(s), minimising the routing loss moves w(s) to f(s)."""
    g = torch.Generator().manual_seed(8)
    freqs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0]])  # [S=4, K=3]
    repeats = 512
    logits = torch.zeros(4, 3, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    for _ in range(300):
        best = torch.multinomial(freqs, repeats, replacement=True, generator=g)  # [4, repeats]
        q_values = torch.rand(4, repeats, 3, generator=g)  # Q below 1 everywhere except the best expert
        q_values.scatter_(-1, best.unsqueeze(-1), 2.0)
        loss = pmoe_ppo.route_loss_fn(logits.unsqueeze(1).expand(-1, repeats, -1).reshape(-1, 3), q_values.view(-1, 3))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.testing.assert_close(logits.softmax(-1).detach(), freqs, rtol=0, atol=0.04)


def test_route_loss_value_on_one_hot_labels():
    mix_logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]))
    q_values = torch.tensor([[5.0, 1.0, 0.0], [0.0, 0.0, 3.0], [0.0, 1.0, -1.0], [-1.0, -2.0, -3.0]])
    # best experts 0, 2, 1, 0; squared errors per row: .25+.0625+.0625 | .04+.36+.64 | .01+.81+.64 | 4/9+1/9+1/9
    expected = (0.375 + 1.04 + 1.46 + 6 / 9) / 12
    assert pmoe_ppo.route_loss_fn(mix_logits, q_values).item() == pytest.approx(expected, abs=1e-6)


class DistanceQ(torch.nn.Module):
    """Q(s, a) = -|a - s[:A]|^2: the best action for state s is its first A coordinates."""

    def forward(self, obs_action):
        obs, action = obs_action[..., :4], obs_action[..., 4:]
        return -((action - obs[..., : action.shape[-1]]) ** 2).sum(-1, keepdim=True)


def test_pmoe_losses_score_each_state_with_its_own_experts():
    """B=6 states, K=3 experts, sigma ~ 0 so a_k = mu_k(s): the label must be the expert nearest s's own target."""
    torch.manual_seed(9)
    B, K, A = 6, 3, 2
    agent = pmoe_ppo.Agent(fake_envs(4, A), K, "pmoe", use_routing=True)
    with torch.no_grad():
        agent.actor_logstd.fill_(-20.0)
        agent.actor_mean[-1].weight.mul_(300.0)  # spread the experts so that each state has a clear nearest one
    agent.q_net = DistanceQ()
    obs, actions, returns = torch.randn(B, 4), torch.randn(B, A), torch.randn(B)
    q_loss, route_loss = pmoe_ppo.pmoe_losses(agent, agent.get_experts(obs), obs, actions, returns)
    means = agent.actor_mean(obs).view(B, K, A).detach()
    best = []
    for b in range(B):
        distances = [sum((means[b, k, d].item() - obs[b, d].item()) ** 2 for d in range(A)) for k in range(K)]
        best.append(distances.index(min(distances)))
    assert len(set(best)) > 1  # different states pick different experts: a row mix-up would show
    w = agent.router(obs).softmax(-1).detach()
    expected_route = sum((w[b, k].item() - (k == best[b])) ** 2 for b in range(B) for k in range(K)) / (B * K)
    assert route_loss.item() == pytest.approx(expected_route, abs=1e-6)
    q_pred = [-sum((actions[b, d].item() - obs[b, d].item()) ** 2 for d in range(A)) for b in range(B)]
    expected_q = sum((q_pred[b] - returns[b].item()) ** 2 for b in range(B)) / B
    assert q_loss.item() == pytest.approx(expected_q, rel=1e-5)
    route_loss.backward()
    grads = {name for name, p in agent.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {"router.weight", "router.bias"}  # the routing loss trains the router only


# ---------------------------------------------------------------- short training runs


def spy_agents(mp):
    """Make pmoe_ppo.Agent a subclass that records each instance with a copy of its initial parameters."""
    created = []

    class SpyAgent(pmoe_ppo.Agent):
        def __init__(self, *args):
            super().__init__(*args)
            created.append((self, {n: p.detach().clone() for n, p in self.named_parameters()}))

    mp.setattr(pmoe_ppo, "Agent", SpyAgent)
    return created


def unchanged_parameters(agent, initial):
    return [name for name, p in agent.named_parameters() if torch.equal(p.detach(), initial[name])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short PMOE run (K=3, 2 PPO iterations) with --save-model, shared by the tests below."""
    workdir = tmp_path_factory.mktemp("pmoe_ppo")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        created = spy_agents(mp)
        summary = pmoe_ppo.main(pmoe_ppo.Args(**TINY, save_model=True, eval_episodes=2))
    agent, initial = created[0]
    return summary, agent, initial, str(workdir / summary["model_path"])


def test_short_run_trains_every_parameter(trained):
    summary, agent, initial, _ = trained
    assert summary["global_step"] == 128 and summary["episodes"] > 0  # 2 iterations of 64 steps; Hopper episodes end
    losses = {k: v for k, v in summary.items() if k.startswith("losses/")}
    assert {"losses/q_loss", "losses/route_loss", "losses/policy_loss", "losses/value_loss"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values()) and summary["losses/route_loss"] > 0
    assert math.isfinite(summary["final_return"])
    for key in ("eval/episodic_return", "eval/episodic_return_argmax", "eval/episodic_return_sample"):
        assert math.isfinite(summary[key])
    assert summary["eval/episodic_return"] == summary["eval/episodic_return_argmax"]  # the default --eval-expert
    assert abs(sum(summary[f"charts/expert_usage_{k}"] for k in range(3)) - 1) < 1e-6
    names = {n for n, _ in agent.named_parameters()}
    assert any(n.startswith("q_net.") for n in names) and "router.weight" in names
    assert unchanged_parameters(agent, initial) == []


def test_saved_checkpoint_holds_the_trained_weights(trained):
    _, agent, initial, model_path = trained
    saved = torch.load(model_path, weights_only=True)["model"]
    trained_state = agent.state_dict()
    assert saved.keys() == trained_state.keys()
    for name, tensor in trained_state.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0)
    moved = [name for name in initial if not torch.equal(saved[name], initial[name])]
    assert sorted(moved) == sorted(initial)  # not the freshly initialised agent


@pytest.mark.parametrize("policy_type, num_experts", [("pmoe", 3), ("gating", 3), ("mcp", 3), ("pmoe", 1)])
def test_run_first_minibatch_ratio_is_one_and_every_parameter_trains(policy_type, num_experts, tmp_path, monkeypatch):
    """One rollout, one epoch, one minibatch: the update recomputes the stored log-probs, so ratio = 1 exactly."""
    monkeypatch.chdir(tmp_path)
    created = spy_agents(monkeypatch)
    args = dict(TINY, total_timesteps=64, num_minibatches=1, update_epochs=1, eval_episodes=1, num_experts=num_experts)
    summary = pmoe_ppo.main(pmoe_ppo.Args(**args, policy_type=policy_type))
    assert abs(summary["losses/old_approx_kl"]) < 1e-6 and abs(summary["losses/approx_kl"]) < 1e-6
    assert summary["losses/clipfrac"] == 0.0
    agent, initial = created[0]
    routed = policy_type == "pmoe" and num_experts > 1  # K=1 is CleanRL PPO: no Q-network, no routing loss
    assert hasattr(agent, "q_net") == routed and (summary["losses/route_loss"] > 0) == routed
    # with one expert the router's logit cancels in log_softmax: it gets no gradient and rightly stays put
    assert unchanged_parameters(agent, initial) == ([] if num_experts > 1 else ["router.weight", "router.bias"])


def test_mixture_ablation_run_trains_every_parameter_without_q_net(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    created = spy_agents(monkeypatch)
    args = dict(TINY, num_steps=32, total_timesteps=64, eval_episodes=1)
    summary = pmoe_ppo.main(pmoe_ppo.Args(**args, gradient_estimator="mixture"))
    agent, initial = created[0]
    assert not hasattr(agent, "q_net") and summary["losses/route_loss"] == 0.0
    assert unchanged_parameters(agent, initial) == []


def recorded_run(settings, use_compile, workdir):
    """main on settings, recording the agent's parameters and dynamo's new-graph count at each GAE call (after each
    iteration's rollout, so after the previous iteration's update) and at the end. Inductor draws its own random
    numbers; fallback_random makes it use eager's generator, so both paths act and sample alike."""
    torch._dynamo.reset()  # a new agent each run: start from an empty compile cache
    snapshots, graphs = [], []
    gae, graphs_before = pmoe_ppo.compute_gae, torch._dynamo.utils.counters["stats"]["unique_graphs"]

    def snapshot():
        snapshots.append({name: p.detach().clone() for name, p in created[0][0].named_parameters()})
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before)

    def recording_gae(*args):
        snapshot()
        return gae(*args)

    with pytest.MonkeyPatch.context() as mp, torch._inductor.config.patch(fallback_random=True):
        mp.chdir(workdir)
        created = spy_agents(mp)
        mp.setattr(pmoe_ppo, "compute_gae", recording_gae)
        summary = pmoe_ppo.main(pmoe_ppo.Args(**settings, compile=use_compile))
        snapshot()
    return dict(summary=summary, snapshots=snapshots, graphs=graphs)


@pytest.fixture(scope="module", params=[1, 5])
def eager_and_compiled(request, tmp_path_factory):
    """The same 3-iteration run (one minibatch step per iteration) twice, eager then --compile, on the same seed.
    Module-scoped: the compile (tens of seconds on a cold cache) is paid once per K. Eager steps torch's fused
    Adam, --compile the default Adam compiled: the comparison also checks that fused Adam is CleanRL's Adam."""
    settings = dict(TINY, total_timesteps=192, num_minibatches=1, update_epochs=1, eval_episodes=1)
    settings["num_experts"] = request.param
    return [recorded_run(settings, use_compile, tmp_path_factory.mktemp("run")) for use_compile in (False, True)]


@pytest.mark.parametrize("after", [1, 3])  # after the first minibatch step, and after all three
def test_compiled_update_equals_eager_update(eager_and_compiled, after):
    eager, compiled = eager_and_compiled
    assert len(eager["snapshots"]) == len(compiled["snapshots"]) == 4  # before iterations 1..3' GAE, and at the end
    for name, p_eager in eager["snapshots"][after].items():
        torch.testing.assert_close(compiled["snapshots"][after][name], p_eager, rtol=0, atol=1e-5, msg=name)
    if after == 3:  # the last minibatch's losses (sums, which inductor may reorder)
        for key in ("losses/policy_loss", "losses/value_loss", "losses/q_loss", "losses/route_loss"):
            assert compiled["summary"][key] == pytest.approx(eager["summary"][key], rel=1e-4, abs=1e-6), key


def test_compiled_run_trains_and_compiles_only_at_warm_up(eager_and_compiled):
    eager, compiled = eager_and_compiled
    assert eager["graphs"] == [0] * 4  # the eager run compiled nothing
    # iteration 2's step recompiles the optimizer once: its annealed lr changed, and dynamo then treats it as a symbol
    assert compiled["graphs"][1] > 0 and compiled["graphs"][3] == compiled["graphs"][2]  # nothing new at iteration 3
    losses = {key: value for key, value in compiled["summary"].items() if key.startswith("losses/")}
    assert all(math.isfinite(value) for value in losses.values())
    first, last = compiled["snapshots"][0], compiled["snapshots"][-1]
    unchanged = [name for name in first if torch.equal(first[name], last[name])]
    # with one expert the router's logit cancels in log_softmax: it gets no gradient and rightly stays put
    assert unchanged == ([] if "q_net.0.weight" in first else ["router.weight", "router.bias"])


def test_eval_only_reproduces_the_end_of_training_evaluation(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --eval-only writes its TensorBoard run under ./runs
    summary, model_path = trained[0], trained[3]
    ckpt = torch.load(model_path, weights_only=True)
    assert set(ckpt) >= {"model", "args", "obs_rms"} and ckpt["args"]["num_experts"] == 3
    assert ckpt["obs_rms"]["count"].item() > 128  # statistics of the training rollout, not a fresh wrapper
    again = pmoe_ppo.main(pmoe_ppo.Args(eval_only=True, model_path=model_path, eval_episodes=2))
    for key in ("eval/episodic_return_argmax", "eval/episodic_return_sample"):
        assert again[key] == pytest.approx(summary[key])


def vector_env_evaluate(agent, args, obs_rms, eval_expert):
    """The reference: N sub-envs of the training env (every wrapper, normalisation frozen) in one SAME_STEP
    SyncVectorEnv seeded args.seed (sub-env i: args.seed + i); each sub-env's first episode, from "final_info"."""
    n = args.eval_episodes
    envs = gym.vector.SyncVectorEnv(
        [pmoe_ppo.make_env(args.env_id, 0, False, "", args.gamma)] * n,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    for env in envs.envs:
        rms = pmoe_ppo.find_wrapper(env, gym.wrappers.NormalizeObservation)
        rms.obs_rms.mean, rms.obs_rms.var = obs_rms["mean"].numpy().copy(), obs_rms["var"].numpy().copy()
        rms.obs_rms.count, rms.update_running_mean = obs_rms["count"].item(), False
    obs, _ = envs.reset(seed=args.seed)
    returns = [None] * n
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(args.seed)
        while None in returns:
            obs, _, _, _, infos = envs.step(agent.get_eval_action(torch.Tensor(obs), eval_expert).numpy())
            if "final_info" in infos and "_episode" in infos["final_info"]:
                for i in np.flatnonzero(infos["final_info"]["_episode"]):
                    if returns[i] is None:
                        returns[i] = float(infos["final_info"]["episode"]["r"][i])
    return returns


@pytest.mark.parametrize("eval_expert", ["argmax", "sample"])
def test_lockstep_evaluation_plays_the_training_env_episodes(trained, eval_expert):
    """evaluate() steps N bare envs in lockstep and normalises by hand: the same episodes (returns) as N sub-envs
    of the training env with every wrapper. Hopper-v5 ends episodes at different steps. Planted: every env reset
    with args.seed; the observation clip dropped; the normalisation's epsilon dropped; the action clip dropped: red."""
    _, agent, _, model_path = trained
    stats = torch.load(model_path, weights_only=True)["obs_rms"]
    before = {key: value.clone() for key, value in stats.items()}
    args = pmoe_ppo.Args(**TINY, eval_episodes=6)
    ours = pmoe_ppo.evaluate(agent, args, stats, eval_expert, torch.device("cpu"))
    assert ours == vector_env_evaluate(agent, args, stats, eval_expert)
    assert len(set(ours)) == 6  # six different episodes, not one replayed
    assert all(torch.equal(stats[key], before[key]) for key in stats)  # the saved statistics are read, not updated
    loud = copy.deepcopy(agent)  # mean actions far outside [-1, 1]: the action clip must act as ClipAction does
    with torch.no_grad():
        loud.actor_mean[-1].weight.mul_(300)
    assert pmoe_ppo.evaluate(loud, args, stats, eval_expert, torch.device("cpu")) == vector_env_evaluate(
        loud, args, stats, eval_expert
    )


def test_periodic_evaluation_logs_at_rollout_boundaries_and_leaves_training_unchanged(tmp_path, monkeypatch):
    """4 rollouts of 32 steps with --eval-every 50: evaluations at step 0, at 64 (the first boundary at or past 50),
    and the final one at 128 (past 100); each scalar is the mean of its evaluate() call; training is unchanged.
    Planted: dropping the fork_rng in evaluate (training draws then depend on the evaluation): red."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    settings = dict(TINY, num_steps=32, eval_episodes=1)
    plain = pmoe_ppo.main(pmoe_ppo.Args(**settings))
    before = set(glob.glob("runs/*"))
    calls, evaluate = [], pmoe_ppo.evaluate
    monkeypatch.setattr(pmoe_ppo, "evaluate", lambda *a: calls.append(evaluate(*a)) or calls[-1])
    periodic = pmoe_ppo.main(pmoe_ppo.Args(**settings, eval_every=50, exp_name="periodic"))  # run names hold seconds
    (run_dir,) = set(glob.glob("runs/*")) - before
    events = EventAccumulator(run_dir)
    events.Reload()
    for offset, mode in enumerate(("argmax", "sample")):
        logged = [(e.step, e.value) for e in events.Scalars(f"eval/episodic_return_{mode}")]
        assert [step for step, _ in logged] == [0, 64, 128]
        expected = [np.mean(calls[2 * i + offset]) for i in range(3)]  # argmax then sample at each point
        np.testing.assert_allclose([value for _, value in logged], expected, rtol=1e-6)
    assert [e.step for e in events.Scalars("eval/episodic_return")] == [0, 64, 128]
    skip = {"charts/SPS"}
    assert {k: v for k, v in plain.items() if k not in skip} == {k: v for k, v in periodic.items() if k not in skip}


def test_same_seed_runs_are_identical_on_cpu(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = trained[0]
    second = pmoe_ppo.main(pmoe_ppo.Args(**TINY, save_model=True, eval_episodes=2))
    skip = {"charts/SPS", "model_path"}
    assert {k: v for k, v in first.items() if k not in skip} == {k: v for k, v in second.items() if k not in skip}


def test_run_on_half_cheetah_is_quiet(tmp_path, monkeypatch, capfd):
    """gymnasium's half_cheetah.xml uses MuJoCo's deprecated `settotalmass`: no warning, no MUJOCO_LOG.TXT."""
    monkeypatch.chdir(tmp_path)
    mujoco.set_mju_user_warning(None)  # MuJoCo's default handler, as in a fresh process
    args = dict(env_id="HalfCheetah-v5", num_steps=16, total_timesteps=16, num_minibatches=1, update_epochs=1)
    pmoe_ppo.main(pmoe_ppo.Args(**args, num_experts=3, eval_episodes=1))
    assert "settotalmass" not in capfd.readouterr().err
    assert not os.path.exists("MUJOCO_LOG.TXT")


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pmoe_ppo, "mixture_log_prob", lambda action, *a: torch.full(action.shape[:1], float("nan")))
    with pytest.raises(SystemExit, match="non-finite loss"):
        pmoe_ppo.main(pmoe_ppo.Args(**{**TINY, "num_steps": 32, "total_timesteps": 32}))


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "overrides, flag",
    [
        (dict(total_timesteps=10), "--total-timesteps"),
        (dict(update_epochs=0), "--update-epochs"),
        (dict(num_experts=0), "--num-experts"),
        (dict(eval_episodes=0), "--eval-episodes"),
        (dict(num_envs=0), "--num-envs"),
        (dict(num_minibatches=7), "--num-minibatches"),
        (dict(env_id="CartPole-v1"), "--env-id CartPole-v1 has a Discrete action space"),
        (dict(env_id="NoSuchEnv-v0"), "--env-id 'NoSuchEnv-v0' cannot be made (NameNotFound)"),
        (dict(num_steps=0), "--num-steps"),
        (dict(num_minibatches=0), "--num-minibatches"),
        (dict(eval_only=True, model_path="missing.cleanrl_model"), "--model-path"),
        (dict(eval_only=True), "--model-path"),
        (dict(cudagraphs=True), "--cudagraphs"),
        (dict(cudagraphs=True, compile=True, cuda=False), "--cudagraphs"),  # CUDA graphs need a GPU
    ],
)
def test_bad_args_exit_2_in_process(overrides, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        pmoe_ppo.main(dataclasses.replace(pmoe_ppo.Args(**TINY), **overrides))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and flag in err and err.startswith("error: --") and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--env-id", "CartPole-v1"], "--env-id"),
        (["--env-id", "NoSuchEnv-v0"], "--env-id"),
        (["--num-minibatches", "7"], "--num-minibatches"),
        (["--eval-only", "--model-path", "missing.cleanrl_model"], "--model-path"),
    ],
)
def test_subprocess_bad_input_one_line_error_exit_2(argv, flag, tmp_path):
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


def test_subprocess_capture_video_records_an_mp4_of_the_first_episode(tmp_path):
    """--capture-video: gymnasium's RecordVideo on sub-env 0 writes videos/<run_name>/ (headless: MUJOCO_GL=egl)."""
    argv = ["--env-id", "Hopper-v5", "--num-steps", "64", "--total-timesteps", "64", "--num-minibatches", "1"]
    argv += ["--update-epochs", "1", "--num-experts", "3", "--eval-episodes", "1", "--capture-video"]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "pmoe_ppo.py"), *argv],
        cwd=tmp_path,
        env={**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import imageio_ffmpeg  # moviepy's ffmpeg binding, installed with moviepy (RecordVideo needs moviepy)

    (run_dir,) = glob.glob(str(tmp_path / "videos" / "Hopper-v5__pmoe_ppo__1__*"))
    first = os.path.join(run_dir, "rl-video-episode-0.mp4")
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(first)
    size = os.path.getsize(first)
    print(f"video {os.path.basename(first)}: {size} bytes, {frames} frames, {seconds:.2f} s")
    assert 2 <= frames <= 65 and size > 1000  # the reset frame plus one per step of an episode that ended in 64 steps
