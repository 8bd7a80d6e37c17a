"""pmoe_sac.py: each helper against an independent computation (torch.distributions, numpy loops, closed-form critics),
the three estimators and the two MoE baselines, the TD target, the soft target update and alpha's step read out of a
real one-update run, gymnasium 1.x terminal observations, training of every parameter, saving, video and bad input.
Tests named *_trains / *_run run seconds of real training; the rest take milliseconds."""

import math
import os
import subprocess
import sys
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
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
from pmoe_sac import SoftQNetwork as PlainSoftQNetwork  # before any test's monkeypatch wraps the class

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tiny but real settings: Hopper episodes end in a few dozen random steps; 250 learning steps = 250 critic updates
TINY = dict(
    env_id="Hopper-v5",
    total_timesteps=400,
    learning_starts=150,
    batch_size=32,
    buffer_size=1000,
    eval_episodes=2,
    num_experts=3,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks on a shared 2-core machine: torch's thread pool only adds contention (20x slower seen)."""
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


SCALE64 = torch.tensor([1.0, 0.5], dtype=torch.float64)
BIAS64 = torch.tensor([0.2, -0.1], dtype=torch.float64)


class StubActor(nn.Module):
    """An actor whose outputs are leaf parameters (float64), so gradients can be read per row and per expert.
    Tiny stds (log_std = -12) put each expert's sample within ~1e-5 of its mean: the best expert is known."""

    def __init__(self, B=6, K=4, A=2, seed=0, log_std=-12.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mix_logits = nn.Parameter(torch.randn(B, K, generator=g, dtype=torch.float64))
        self.means = nn.Parameter(torch.randn(B, K, A, generator=g, dtype=torch.float64) * 0.6)
        self.log_stds = nn.Parameter(torch.full((B, K, A), log_std, dtype=torch.float64))
        self.register_buffer("action_scale", SCALE64[:A])
        self.register_buffer("action_bias", BIAS64[:A])

    def forward(self, obs):
        return self.mix_logits, self.means, self.log_stds

    squash = pmoe_sac.Actor.squash


class ClosedFormQ(nn.Module):
    """Q(s, a) = offset - slope * |a - s[:, :A]|^2: the value of any action is known without a network."""

    def __init__(self, offset, slope):
        super().__init__()
        self.offset, self.slope = offset, slope

    def forward(self, x, a):
        return self.offset - self.slope * ((a - x[:, : a.shape[1]]) ** 2).sum(1, keepdim=True)


def closed_form_min_q(obs, action):
    """min(Q1, Q2) of one state and one action in numpy, for the two ClosedFormQ critics used below."""
    distance = float(((np.asarray(action) - np.asarray(obs)[: len(action)]) ** 2).sum())
    return min(0.0 - 1.0 * distance, 0.3 - 2.0 * distance)


def stub_problem(seed=0, B=6, K=4, A=2):
    torch.manual_seed(seed)
    actor = StubActor(B=B, K=K, A=A, seed=seed)
    obs = torch.randn(B, 3, dtype=torch.float64) * 0.5
    return actor, ClosedFormQ(0.0, 1.0), ClosedFormQ(0.3, 2.0), obs


def pre_tanh(actor, action):
    """Recover the pre-tanh sample from an action (exact enough in float64 away from the bounds)."""
    return torch.atanh((action - actor.action_bias) / actor.action_scale)


def expert_density(actor, k):
    """Reference density of expert k[b] for every row b, by torch.distributions."""
    rows = torch.arange(len(k))
    normal = Independent(Normal(actor.means[rows, k], actor.log_stds[rows, k].exp()), 1)
    return squashed(normal, actor.action_scale, actor.action_bias)


def mixture_density(actor):
    gmm = MixtureSameFamily(
        Categorical(logits=actor.mix_logits), Independent(Normal(actor.means, actor.log_stds.exp()), 1)
    )
    return squashed(gmm, actor.action_scale, actor.action_bias)


def test_expert_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    scale, bias = torch.tensor([1.0, 2.0, 0.2]), torch.tensor([0.5, 0.0, 0.2])
    mean, log_std = torch.randn(8, 4, 3) * 0.5, torch.rand(8, 4, 3) * 0.5 - 1.0  # [B, K, A]
    ref = squashed(Independent(Normal(mean, log_std.exp()), 1), scale, bias)
    a = ref.rsample()  # cached transforms: log_prob inverts exactly, with no atanh round-off
    x_t = ref.transforms[0]._cached_x_y[0]  # the pre-tanh sample
    ours = pmoe_sac.tanh_gaussian_log_prob(x_t, mean, log_std, scale)  # [B, K]
    assert torch.allclose(ours, ref.log_prob(a), atol=1e-3)  # CleanRL's +1e-6 inside the log is the only difference
    assert torch.allclose(scale * torch.tanh(x_t) + bias, a)


def test_mixture_log_prob_matches_torch_distributions_and_k1_is_unimodal():
    torch.manual_seed(1)
    scale = torch.tensor([1.0, 2.0, 0.2])
    mix_logits, mean, log_std = torch.randn(8, 4), torch.randn(8, 4, 3) * 0.5, torch.rand(8, 4, 3) * 0.5 - 1.0
    gmm = MixtureSameFamily(Categorical(logits=mix_logits), Independent(Normal(mean, log_std.exp()), 1))
    ref = squashed(gmm, scale, torch.tensor([0.5, 0.0, 0.2]))
    a = ref.sample()
    x_t = ref.transforms[0]._cached_x_y[0]
    ours = pmoe_sac.mixture_log_prob(x_t, mix_logits, mean, log_std, scale)  # [B]
    assert torch.allclose(ours, ref.log_prob(a), atol=1e-3)
    # a batch of K samples per row against the same mixture ([B, K, A] -> [B, K]), as the REINFORCE baseline uses
    samples = ref.sample((4,))  # [4, B, A]
    x_k = ref.transforms[0]._cached_x_y[0].transpose(0, 1)  # pre-tanh, [B, 4, A]
    batched = pmoe_sac.mixture_log_prob(x_k, mix_logits[:, None], mean[:, None], log_std[:, None], scale)
    assert torch.allclose(batched, ref.log_prob(samples).T, atol=1e-3)
    # K = 1: the mixture density is exactly (bit for bit) the single expert's density
    one = pmoe_sac.mixture_log_prob(x_t, mix_logits[:, :1], mean[:, :1], log_std[:, :1], scale)
    assert torch.equal(one, pmoe_sac.tanh_gaussian_log_prob(x_t, mean[:, 0], log_std[:, 0], scale))


def test_actor_heads_split_into_experts_and_log_std_is_bounded():
    """Rows [k*A, (k+1)*A) of each head are expert k; log-std lies in [LOG_STD_MIN, LOG_STD_MAX] and reaches both."""
    env = spaces()
    torch.manual_seed(12)
    actor, obs = pmoe_sac.Actor(env, 3), torch.randn(4, 5)
    mix_logits, mean, log_std = actor(obs)
    assert mix_logits.shape == (4, 3) and mean.shape == log_std.shape == (4, 3, 3)
    h = torch.relu(actor.fc2(torch.relu(actor.fc1(obs))))
    flat_mean = h @ actor.fc_mean.weight.T + actor.fc_mean.bias  # [B, K*A]
    for k in range(3):
        assert torch.allclose(mean[:, k], flat_mean[:, 3 * k : 3 * k + 3], atol=1e-6)
    assert torch.allclose(mix_logits, h @ actor.fc_route.weight.T + actor.fc_route.bias, atol=1e-6)
    assert (log_std >= pmoe_sac.LOG_STD_MIN).all() and (log_std <= pmoe_sac.LOG_STD_MAX).all()
    with torch.no_grad():
        actor.fc_logstd.weight.zero_()
        actor.fc_logstd.bias.copy_(torch.tensor([50.0, 0.0, -50.0] * 3))
    _, _, log_std = actor(obs)
    assert (log_std[..., 0] == 2.0).all() and (log_std[..., 2] == -5.0).all()
    assert torch.allclose(log_std[..., 1], torch.tensor(-1.5))  # the midpoint of [-5, 2]


def test_get_action_density_is_the_acting_experts_own_or_the_mixtures():
    """get_action acts with one expert z per row; its log-prob is z's own density by default (PMOE's target) and the
    mixture's with mixture_logp=True (the baselines'). float64, B = 6, K = 3."""
    torch.manual_seed(15)
    actor, obs = pmoe_sac.Actor(spaces(), 3).double(), torch.randn(6, 5, dtype=torch.float64)
    mix_logits, means, log_stds = actor(obs)
    rows = torch.arange(6)
    for mixture_logp in (False, True):
        torch.manual_seed(16)
        action, log_prob, mean_action, z = actor.get_action(obs, **({"mixture_logp": True} if mixture_logp else {}))
        if mixture_logp:
            base = MixtureSameFamily(Categorical(logits=mix_logits), Independent(Normal(means, log_stds.exp()), 1))
        else:
            base = Independent(Normal(means[rows, z], log_stds[rows, z].exp()), 1)
        ref = squashed(base, actor.action_scale, actor.action_bias)
        assert torch.allclose(log_prob[:, 0], ref.log_prob(action), atol=1e-4)
        assert torch.allclose(mean_action, actor.squash(means[rows, z]))
    assert len(set(z.tolist())) > 1
    with torch.no_grad():  # saturated tanh: CleanRL's +1e-6 keeps the log-density finite where 1 - tanh^2 = 0
        actor.float().fc_mean.bias.fill_(40.0)
    _, log_prob, _, _ = actor.get_action(obs.float())
    assert torch.isfinite(log_prob).all()
    saturated = pmoe_sac.tanh_gaussian_log_prob(torch.full((2, 3), 40.0), torch.zeros(2, 3), torch.zeros(2, 3), 1.0)
    assert torch.isfinite(saturated).all()


def test_sample_expert_draws_from_the_routing_weights():
    """Gumbel-max against the softmax it should sample from: 40k draws per row, B = 4 rows, K = 3."""
    torch.manual_seed(2)
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0], [-1.0, -1.0, 1.5], [0.3, 0.2, 0.1]])
    draws = pmoe_sac.sample_expert(logits.repeat_interleave(40000, 0)).view(4, 40000)
    for b in range(4):
        freq = np.bincount(draws[b].numpy(), minlength=3) / 40000
        probs = np.exp(logits[b].numpy()) / np.exp(logits[b].numpy()).sum()
        np.testing.assert_allclose(freq, probs, atol=0.01)


def test_min_q_pairs_each_state_with_its_own_experts_actions():
    env = spaces()
    torch.manual_seed(3)
    qf1, qf2 = pmoe_sac.SoftQNetwork(env), pmoe_sac.SoftQNetwork(env)
    obs, actions = torch.randn(5, 5), torch.randn(5, 3, 3)  # B = 5, K = 3
    ours = pmoe_sac.min_q(qf1, qf2, obs, actions)
    for b in range(5):
        for k in range(3):
            q1, q2 = qf1(obs[b : b + 1], actions[b, k : k + 1]), qf2(obs[b : b + 1], actions[b, k : k + 1])
            assert torch.allclose(ours[b, k], torch.minimum(q1, q2)[0, 0], atol=1e-6), (b, k)


@pytest.mark.parametrize("B, K, A", [(6, 4, 2), (8, 2, 1)])  # K = 2 and 1-D actions are scored too
def test_pmoe_estimator_trains_the_best_expert_and_routes_toward_it(B, K, A):
    actor, qf1, qf2, obs = stub_problem(seed=4, B=B, K=K, A=A)
    pi, log_pi, route_loss, k = pmoe_sac.pmoe_estimator(actor, qf1, qf2, obs)
    # k*: the expert whose (near-deterministic) action the closed-form critics rate best
    means = actor.squash(actor.means).detach().numpy()
    q = np.array([[closed_form_min_q(obs[b].numpy(), means[b, j]) for j in range(K)] for b in range(B)])
    assert k.tolist() == q.argmax(1).tolist() and len(set(k.tolist())) > 1
    np.testing.assert_allclose(pi.detach().numpy(), means[np.arange(B), k.numpy()], atol=1e-4)
    # the entropy term uses k*'s own density, not the mixture's
    assert log_pi.shape == (B, 1)
    own = expert_density(actor, k).log_prob(pi.detach())
    assert torch.allclose(log_pi[:, 0], own, atol=1e-3)
    assert not torch.allclose(log_pi[:, 0], mixture_density(actor).log_prob(pi.detach()), atol=1e-2)
    # the routing loss: squared distance of w(s) to one_hot(k*), averaged over B*K entries
    w = torch.softmax(actor.mix_logits, -1).detach().numpy()
    expected = np.mean([(w[b, j] - float(j == k[b])) ** 2 for b in range(B) for j in range(K)])
    assert math.isclose(route_loss.item(), expected, rel_tol=1e-9)
    # a descent step on it raises w_{k*} in every row
    route_loss.backward()
    w_after = torch.softmax(actor.mix_logits - 1.0 * actor.mix_logits.grad, -1).detach().numpy()
    assert (w_after[np.arange(B), k.numpy()] > w[np.arange(B), k.numpy()]).all()
    assert actor.means.grad is None and actor.log_stds.grad is None  # routing reaches only the routing head


def one_draw_rule(actor, qf1, qf2, obs, extra_draws):
    """Reference label: the candidate x_all and `extra_draws` fresh draws per expert, ranked by their summed min-Q."""
    mix_logits, means, log_stds = actor(obs)
    x_all = Normal(means, log_stds.exp()).rsample()
    scores = pmoe_sac.min_q(qf1, qf2, obs, actor.squash(x_all))
    for _ in range(extra_draws):
        scores = scores + pmoe_sac.min_q(qf1, qf2, obs, actor.squash(torch.normal(means, log_stds.exp())))
    return scores.argmax(-1), actor.squash(pick_rows(x_all, scores.argmax(-1)))


def pick_rows(x, idx):
    return x[torch.arange(len(idx)), idx]


@pytest.mark.parametrize("label_samples", [1, 8])
def test_label_samples_rank_by_the_mean_of_m_draws_and_m1_is_the_official_rule(label_samples):
    """M = 1 is today's rule exactly: the same k*, action, log-prob, loss, and no extra draw from torch's generator.
    M = 8 ranks each expert by its candidate plus 7 fresh draws. Noisy experts (log_std 0.3) so the label is noisy.
    Planted: `range(label_samples)` in pmoe_estimator (one extra draw at M = 1): red."""
    actor, qf1, qf2, obs = stub_problem(seed=6, B=64, K=4, A=2)
    actor.log_stds.data.fill_(0.3)
    torch.manual_seed(11)
    pi, log_pi, route_loss, k = pmoe_sac.pmoe_estimator(actor, qf1, qf2, obs, label_samples)
    state_after = torch.get_rng_state()
    torch.manual_seed(11)
    k_ref, pi_ref = one_draw_rule(actor, qf1, qf2, obs, label_samples - 1)
    assert torch.equal(k, k_ref) and torch.equal(pi, pi_ref)
    assert torch.equal(torch.get_rng_state(), state_after)  # the same number of draws
    w = torch.softmax(actor.mix_logits, -1)
    assert route_loss.item() == torch.nn.functional.mse_loss(w, torch.nn.functional.one_hot(k_ref, 4).double()).item()
    if label_samples == 1:  # against the default call, i.e. the code path every earlier run took
        torch.manual_seed(11)
        default = pmoe_sac.pmoe_estimator(actor, qf1, qf2, obs)
        assert all(torch.equal(a, b) for a, b in zip(default, (pi, log_pi, route_loss, k)))
    else:  # the extra draws changed some labels (else the test would not see them)
        torch.manual_seed(11)
        assert not torch.equal(one_draw_rule(actor, qf1, qf2, obs, 0)[0], k)


def test_pmoe_actor_loss_reaches_only_the_chosen_experts():
    actor, qf1, qf2, obs = stub_problem(seed=5)
    pi, log_pi, _, k = pmoe_sac.pmoe_estimator(actor, qf1, qf2, obs)
    actor_loss = (0.2 * log_pi - torch.min(qf1(obs, pi), qf2(obs, pi))).mean()  # main's lines
    actor_loss.backward()
    chosen = torch.zeros_like(actor.mix_logits, dtype=torch.bool)
    chosen[torch.arange(len(k)), k] = True
    grad_norm = actor.means.grad.abs().sum(-1)  # [B, K]
    assert (grad_norm[chosen] > 0).all() and (grad_norm[~chosen] == 0).all()
    assert actor.mix_logits.grad is None  # w never enters the PMOE actor loss


def test_pmoe_gradient_routing_in_the_real_actor():
    """With the real network: the actor loss reaches k*'s head rows and the trunk; the routing loss only fc_route."""
    env, K, A = spaces(), 4, 3
    torch.manual_seed(6)
    actor, qf1, qf2 = pmoe_sac.Actor(env, K), pmoe_sac.SoftQNetwork(env), pmoe_sac.SoftQNetwork(env)
    obs = torch.randn(1, 5)
    pi, log_pi, route_loss, k = pmoe_sac.pmoe_estimator(actor, qf1, qf2, obs)
    (0.2 * log_pi - torch.min(qf1(obs, pi), qf2(obs, pi))).mean().backward()
    for head in (actor.fc_mean, actor.fc_logstd):
        weight_rows, bias_rows = head.weight.grad.view(K, A, -1), head.bias.grad.view(K, A)
        for j in range(K):
            assert (weight_rows[j].abs().sum() > 0) == (j == int(k[0]))
            assert (bias_rows[j].abs().sum() > 0) == (j == int(k[0]))
    assert actor.fc_route.weight.grad is None and actor.fc1.weight.grad.abs().sum() > 0
    actor.zero_grad(set_to_none=True)
    route_loss.backward()
    for name, p in actor.named_parameters():
        assert (p.grad is not None) == name.startswith("fc_route"), name


def test_gumbel_straight_through_acts_with_exactly_one_expert():
    actor, _, _, obs = stub_problem(seed=7)
    B = actor.means.shape[0]
    pi, log_pi, route_loss, k = pmoe_sac.gumbel_estimator(actor, obs, tau=0.7)
    x_t = pre_tanh(actor, pi.detach())
    distance = (x_t.unsqueeze(1) - actor.means.detach()).abs().amax(-1)  # [B, K]
    assert (distance[torch.arange(B), k] < 1e-4).all()  # forward: exactly the chosen expert's sample
    assert (distance.min(1).values == distance[torch.arange(B), k]).all() and (distance.max(1).values > 0.05).all()
    assert torch.allclose(log_pi[:, 0], mixture_density(actor).log_prob(pi.detach()), atol=1e-3)
    assert route_loss.item() == 0.0
    (-pi.sum()).backward()  # backward: d pi / d y_k reaches every routing logit; d pi / d x_k is one_hot(k)
    assert (actor.mix_logits.grad != 0).all()
    chosen = torch.nn.functional.one_hot(k, actor.means.shape[1]).bool()
    assert (actor.means.grad.abs().sum(-1)[chosen] > 0).all() and (actor.means.grad.abs().sum(-1)[~chosen] == 0).all()


def test_gumbel_estimator_matches_torch_gumbel_softmax():
    """Against PyTorch's own F.gumbel_softmax(hard=True) on the same noise: the same experts, actions and routing
    gradients, at temperature 0.7 (B = 8, K = 4; the last expert's weight is ~e^-30, so it is never chosen)."""
    actor, _, _, obs = stub_problem(seed=13, B=8, K=4)
    with torch.no_grad():
        actor.mix_logits[:, -1] = -30.0
        actor.log_stds.fill_(-1.0)
    torch.manual_seed(14)
    pi, _, _, k = pmoe_sac.gumbel_estimator(actor, obs, tau=0.7)
    pi.sum().backward()
    ours = actor.mix_logits.grad.clone()
    actor.zero_grad()
    torch.manual_seed(14)  # the same draws: one normal per expert and action dim, then one exponential per expert
    x_all = actor.means + actor.log_stds.exp() * torch.empty(8, 4, 2, dtype=torch.float64).normal_()
    y_hard = torch.nn.functional.gumbel_softmax(actor.mix_logits, tau=0.7, hard=True)  # [B, K]
    ref = actor.squash(torch.einsum("bk,bka->ba", y_hard, x_all))
    ref.sum().backward()
    assert torch.equal(k, y_hard.argmax(-1)) and len(set(k.tolist())) > 1
    assert torch.allclose(pi, ref, atol=1e-12)
    assert torch.allclose(ours, actor.mix_logits.grad, atol=1e-12) and (ours != 0).all()


def test_reinforce_routing_gradient_is_the_score_function_with_a_baseline():
    """d(route_loss)/d(logits_b) = -(1/B) * advantage_b * (one_hot(z_b) - w_b), advantage from the soft values."""
    actor, qf1, qf2, obs = stub_problem(seed=8)
    B, K, A = actor.means.shape
    alpha = 0.3
    torch.manual_seed(9)
    pi, log_pi, route_loss, z = pmoe_sac.reinforce_estimator(actor, qf1, qf2, obs, alpha)
    torch.manual_seed(9)  # the same noise again: the estimator draws every expert's sample first
    x_all = actor.means + actor.log_stds.exp() * torch.empty(B, K, A, dtype=torch.float64).normal_()
    assert torch.allclose(pre_tanh(actor, pi.detach()), x_all[torch.arange(B), z].detach(), atol=1e-9)
    assert torch.allclose(log_pi[:, 0], mixture_density(actor).log_prob(pi.detach()), atol=1e-3)
    a_all = actor.squash(x_all).detach()
    mixture = mixture_density(actor)
    values = np.zeros((B, K))
    for j in range(K):
        log_prob_j = mixture.log_prob(a_all[:, j])  # each expert's sample under the mixture [B]
        for b in range(B):
            values[b, j] = closed_form_min_q(obs[b].numpy(), a_all[b, j].numpy()) - alpha * log_prob_j[b].item()
    advantage = values[np.arange(B), z.numpy()] - values.mean(1)
    route_loss.backward()
    w = torch.softmax(actor.mix_logits, -1).detach().numpy()
    for b in range(B):
        one_hot = np.eye(K)[z[b]]
        np.testing.assert_allclose(actor.mix_logits.grad[b].numpy(), -advantage[b] / B * (one_hot - w[b]), atol=1e-6)
    # descent raises the sampled expert's weight exactly where its soft value beats the mean
    assert (np.sign(-actor.mix_logits.grad[torch.arange(B), z].numpy()) == np.sign(advantage)).all()


def grid_log_density(log_q, grid):
    """Normalise an unnormalised 1-D log-density on a uniform grid: log(q / integral of q)."""
    step = grid[1] - grid[0]
    return log_q - (torch.logsumexp(log_q, 0) + torch.log(step))


def test_gating_and_mcp_compose_one_gaussian():
    """gating: mean and log-std are w-weighted sums; mcp: the normalised product of the experts' densities raised
    to w_k, integrated numerically on a grid. B = 4, K = 3, A = 2."""
    torch.manual_seed(10)
    w = torch.softmax(torch.randn(4, 3, dtype=torch.float64), -1)
    mean, log_std = torch.randn(4, 3, 2, dtype=torch.float64), torch.rand(4, 3, 2, dtype=torch.float64) - 0.7
    g_mean, g_log_std = pmoe_sac.gating_gaussian(w, mean, log_std)
    m_mean, m_log_std = pmoe_sac.mcp_gaussian(w, mean, log_std)
    assert g_mean.shape == g_log_std.shape == m_mean.shape == (4, 1, 2)
    grid = torch.linspace(-8, 8, 40001, dtype=torch.float64)
    for b in range(4):
        for d in range(2):
            np.testing.assert_allclose(g_mean[b, 0, d], sum(w[b, k] * mean[b, k, d] for k in range(3)), rtol=1e-12)
            np.testing.assert_allclose(g_log_std[b, 0, d], sum(w[b, k] * log_std[b, k, d] for k in range(3)))
            log_q = sum(w[b, k] * Normal(mean[b, k, d], log_std[b, k, d].exp()).log_prob(grid) for k in range(3))
            ours = Normal(m_mean[b, 0, d], m_log_std[b, 0, d].exp()).log_prob(grid)
            inside = ours > -20  # where the density is not negligible
            assert torch.allclose(ours[inside], grid_log_density(log_q, grid)[inside], atol=1e-5)


@pytest.mark.parametrize("policy_type", ["gating", "mcp"])
def test_gating_and_mcp_actors_log_prob_is_the_composed_gaussians(policy_type):
    env = spaces()
    torch.manual_seed(11)
    actor = pmoe_sac.Actor(env, 3, policy_type)
    experts = pmoe_sac.Actor(env, 3, "pmoe")  # the same weights, read as the K experts and the routing weights
    experts.load_state_dict(actor.state_dict())
    obs = torch.randn(6, 5)
    mix_logits, mean, log_std = experts(obs)
    compose = pmoe_sac.gating_gaussian if policy_type == "gating" else pmoe_sac.mcp_gaussian
    c_mean, c_log_std = compose(torch.softmax(mix_logits, -1), mean, log_std)
    action, log_prob, mean_action, z = actor.get_action(obs)
    ref = squashed(Independent(Normal(c_mean[:, 0], c_log_std[:, 0].exp()), 1), actor.action_scale, actor.action_bias)
    assert torch.allclose(log_prob[:, 0], ref.log_prob(action), atol=2e-3)
    assert torch.allclose(mean_action, actor.squash(c_mean[:, 0]), atol=1e-6) and (z == 0).all()


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


def scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(gradient_estimator="pmoe"),
        dict(gradient_estimator="gumbel"),
        dict(gradient_estimator="reinforce"),
        dict(policy_type="gating"),
        dict(policy_type="mcp"),
    ],
)
def test_each_estimator_and_policy_type_trains(overrides, record_networks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = pmoe_sac.main(pmoe_sac.Args(**TINY, **overrides))
    for key in ("qf_loss", "actor_loss", "route_loss", "alpha", "eval_return", "final_return"):
        assert summary[key] is not None and math.isfinite(summary[key]), key
    assert summary["alpha"] != 1.0 and summary["episodes"] > 0  # alpha was tuned; episodes were logged
    if overrides.get("gradient_estimator") in ("pmoe", "reinforce"):
        assert summary["route_loss"] != 0.0
    for net, before in record_networks:  # the actor and the four critics: every parameter changed
        for name, p in net.named_parameters():
            assert not torch.equal(p.detach(), before[name]), f"{type(net).__name__}.{name} did not change"
    (run_dir,) = (tmp_path / "runs").iterdir()
    final_step = TINY["total_timesteps"]  # the eval curve's last point: after every env step
    assert scalars(run_dir, "eval/episodic_return_argmax") == [
        (final_step, pytest.approx(summary["eval_return_argmax"]))
    ]
    assert scalars(run_dir, "eval/episodic_return_sample") == [
        (final_step, pytest.approx(summary["eval_return_sample"]))
    ]
    assert scalars(run_dir, "eval/episodic_return") == [(final_step, pytest.approx(summary["eval_return"]))]
    assert summary["eval_return"] == summary["eval_return_sample"]  # --eval-expert sample, the default
    assert len(scalars(run_dir, "charts/episodic_return")) == summary["episodes"]


def test_periodic_evaluation_logs_at_every_multiple_and_leaves_training_unchanged(tmp_path, monkeypatch):
    """--eval-every 100 on 400 steps: eval scalars at steps 0, 100, 200, 300 (before those steps) and 400 (the final
    evaluation), each the mean of an evaluate() call; the training (losses, returns) equals a run without it.
    Planted: `global_step % args.eval_every == 1` (off by one): red."""
    monkeypatch.chdir(tmp_path)
    settings = dict(TINY, num_experts=2, seed=3)
    plain = pmoe_sac.main(pmoe_sac.Args(**settings))
    (plain_dir,) = (tmp_path / "runs").iterdir()
    calls, evaluate = [], pmoe_sac.evaluate
    monkeypatch.setattr(pmoe_sac, "evaluate", lambda *a: calls.append(evaluate(*a)) or calls[-1])
    periodic = pmoe_sac.main(pmoe_sac.Args(**settings, eval_every=100, exp_name="periodic"))  # run names hold seconds
    (run_dir,) = set((tmp_path / "runs").iterdir()) - {plain_dir}
    for mode, offset in (("argmax", 0), ("sample", 1)):
        logged = scalars(run_dir, f"eval/episodic_return_{mode}")
        assert [step for step, _ in logged] == [0, 100, 200, 300, 400]
        expected = [np.mean(calls[2 * i + offset]) for i in range(5)]  # argmax then sample at each point
        np.testing.assert_allclose([value for _, value in logged], expected, rtol=1e-6)
    assert [step for step, _ in scalars(run_dir, "eval/episodic_return")] == [0, 100, 200, 300, 400]
    for key in ("final_return", "episodes", "qf_loss", "actor_loss", "route_loss", "alpha", "eval_return_sample"):
        assert periodic[key] == plain[key], key  # evaluation forks torch's generator: training draws unchanged


@pytest.mark.parametrize("num_experts, policy_type", [(1, "pmoe"), (3, "gating"), (3, "mcp")])
def test_one_gaussian_is_evaluated_once_and_logged_under_both_rules(num_experts, policy_type, tmp_path, monkeypatch):
    """K=1, gating and mcp act with one Gaussian's mean: the sampled-expert rule plays the argmax rule's episodes, so
    log_evaluation runs one evaluation per point and logs it under both tags. Planted: both rules evaluated for every
    policy (8 calls, not 4): red."""
    envs = gym.vector.SyncVectorEnv([pmoe_sac.make_env("Hopper-v5", 1, 0, False, "")])
    torch.manual_seed(0)
    actor = pmoe_sac.Actor(envs, num_experts, policy_type)
    with torch.no_grad():  # experts that differ, as in the lockstep test
        for p in actor.parameters():
            p.mul_(3)
    cpu = torch.device("cpu")
    assert pmoe_sac.evaluate(actor, "Hopper-v5", 3, 7, "sample", cpu) == pmoe_sac.evaluate(
        actor, "Hopper-v5", 3, 7, "argmax", cpu
    )
    monkeypatch.chdir(tmp_path)
    calls, evaluate = [], pmoe_sac.evaluate
    monkeypatch.setattr(pmoe_sac, "evaluate", lambda *a: calls.append((a[4], evaluate(*a))) or calls[-1][1])
    settings = dict(TINY, num_experts=num_experts, policy_type=policy_type, eval_every=100, total_timesteps=300)
    summary = pmoe_sac.main(pmoe_sac.Args(**settings))
    assert [mode for mode, _ in calls] == ["argmax"] * 4  # steps 0, 100, 200 and the final evaluation at 300
    (run_dir,) = (tmp_path / "runs").iterdir()
    expected = [np.mean(returns) for _, returns in calls]
    for tag in ("eval/episodic_return_argmax", "eval/episodic_return_sample", "eval/episodic_return"):
        np.testing.assert_allclose([value for _, value in scalars(run_dir, tag)], expected, rtol=1e-6)
    assert summary["eval_return_sample"] == summary["eval_return_argmax"] == pytest.approx(expected[-1])


def one_update_run(tmp_path, monkeypatch, record_networks, **overrides):
    """main with exactly one update (at global_step = learning_starts + 1), recording the batch, the target action
    and log-prob, the critics' regression targets and the estimator's log-prob."""
    monkeypatch.chdir(tmp_path)
    seen = dict(batches=[], targets=[], mse_targets=[], log_pis=[])
    sample, get_action, mse_loss, estimator = (
        pmoe_sac.ReplayBuffer.sample,
        pmoe_sac.Actor.get_action,
        pmoe_sac.F.mse_loss,
        pmoe_sac.pmoe_estimator,
    )

    def recording_sample(self, batch_size):
        seen["batches"].append(sample(self, batch_size))
        return seen["batches"][-1]

    def recording_get_action(self, x, *args):
        out = get_action(self, x, *args)
        if x.shape[0] > 1:  # the target's call (acting uses one row)
            seen["targets"].append(out)
        return out

    def recording_mse_loss(prediction, target):
        if target.dim() == 1:  # the critics' [B] targets (PMOE's routing loss also calls mse_loss, on [B, K])
            seen["mse_targets"].append(target.detach().clone())
        return mse_loss(prediction, target)

    def recording_estimator(*args):
        out = estimator(*args)
        seen["log_pis"].append(out[1].detach().clone())
        return out

    monkeypatch.setattr(pmoe_sac.ReplayBuffer, "sample", recording_sample)
    monkeypatch.setattr(pmoe_sac.Actor, "get_action", recording_get_action)
    monkeypatch.setattr(pmoe_sac.F, "mse_loss", recording_mse_loss)
    monkeypatch.setattr(pmoe_sac, "pmoe_estimator", recording_estimator)
    settings = dict(TINY, total_timesteps=152, learning_starts=150, batch_size=128, eval_episodes=0, policy_frequency=1)
    summary = pmoe_sac.main(pmoe_sac.Args(**{**settings, **overrides}))
    return summary, seen


def test_td_target_and_soft_target_update(tmp_path, monkeypatch, record_networks):
    overrides = dict(autotune=False, alpha=0.37, gamma=0.9, tau=0.3)
    summary, seen = one_update_run(tmp_path, monkeypatch, record_networks, **overrides)
    (data,), ((next_actions, next_log_pi, _, _),) = seen["batches"], seen["targets"]
    (qf1, qf1_init), (qf2, qf2_init), (qf1_target, _), (qf2_target, _) = record_networks[1:5]  # main's build order
    targets = []  # the target critics as they were at this update: copies of the critics' initial weights
    for init in (qf1_init, qf2_init):
        targets.append(PlainSoftQNetwork(spaces(obs_dim=11, low=(-1, -1, -1), high=(1, 1, 1))))
        targets[-1].load_state_dict(init)
    dones = data.dones.flatten().tolist()
    assert 0 < sum(dones) < len(dones)  # the batch holds both terminal and non-terminal transitions
    expected = []
    with torch.no_grad():
        for b in range(len(dones)):
            s2, a2 = data.next_observations[b : b + 1], next_actions[b : b + 1]
            soft_value = min(targets[0](s2, a2).item(), targets[1](s2, a2).item()) - 0.37 * next_log_pi[b].item()
            reward = data.rewards[b].item()
            expected.append(reward if dones[b] else reward + 0.9 * soft_value)
    assert len(seen["mse_targets"]) == 2  # qf1's and qf2's regression targets
    for target in seen["mse_targets"]:
        np.testing.assert_allclose(target.numpy(), expected, rtol=1e-5, atol=1e-5)
    # soft update after the one critic step: target = tau * critic + (1 - tau) * old target
    for critic, init, target in ((qf1, qf1_init, qf1_target), (qf2, qf2_init, qf2_target)):
        trained = dict(critic.named_parameters())
        for name, p in target.named_parameters():
            mixed = 0.3 * trained[name].detach().numpy() + 0.7 * init[name].numpy()
            np.testing.assert_allclose(p.detach().numpy(), mixed, rtol=1e-5, atol=1e-6)


def test_alpha_moves_toward_the_target_entropy(tmp_path, monkeypatch, record_networks):
    """One Adam step on alpha's loss moves log(alpha) by q_lr in the direction that closes the entropy gap:
    up if the policy's entropy estimate -log_pi is below the target entropy -|A|, down otherwise."""
    summary, seen = one_update_run(tmp_path, monkeypatch, record_networks, q_lr=0.01)
    (log_pi,) = seen["log_pis"]
    entropy_gap = -3.0 - (-log_pi.mean().item())  # target entropy (-|A| for Hopper) minus the policy's entropy
    assert abs(entropy_gap) > 0.1
    assert math.log(summary["alpha"]) == pytest.approx(0.01 * np.sign(entropy_gap), rel=1e-3)


def test_terminal_observation_is_stored(tmp_path, monkeypatch):
    """SAME_STEP autoreset: on a truncation the buffer's next_obs is the episode's true last observation, checked
    against an independent env replaying the stored actions; dones are terminations only."""
    monkeypatch.chdir(tmp_path)
    gym.register("HopperTen-v5", entry_point="gymnasium.envs.mujoco.hopper_v5:HopperEnv", max_episode_steps=10)
    rows = []
    add = pmoe_sac.ReplayBuffer.add

    def recording_add(self, obs, next_obs, action, reward, done, infos):
        rows.append((obs.copy(), next_obs.copy(), action.copy(), done.copy()))
        add(self, obs, next_obs, action, reward, done, infos)

    monkeypatch.setattr(pmoe_sac.ReplayBuffer, "add", recording_add)
    settings = dict(TINY, env_id="HopperTen-v5", total_timesteps=40, learning_starts=39, eval_episodes=0, seed=3)
    pmoe_sac.main(pmoe_sac.Args(**settings))
    ref = gym.make("Hopper-v5")
    ref.reset(seed=3)
    for step in range(10):
        ref_obs, _, terminated, _, _ = ref.step(rows[step][2][0])
        assert not terminated and rows[step][3][0] == 0.0
    np.testing.assert_allclose(rows[9][1][0], ref_obs.astype(np.float32), rtol=1e-6)  # the true last obs
    assert not np.allclose(rows[9][1][0], rows[10][0][0])  # ... not the next episode's first obs


def test_same_seed_same_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = [pmoe_sac.main(pmoe_sac.Args(seed=7, **{**TINY, "num_experts": 2})) for _ in range(2)]
    for key in runs[0]:
        if not key.startswith("sps"):  # wall-clock
            assert runs[0][key] == runs[1][key], key


def test_actor_step_skipping_critic_gradients_changes_nothing(tmp_path, monkeypatch):
    """The actor's backward computes the actor's gradients only (backward(inputs=...)); CleanRL's full backward also
    fills the critics' .grad, which their next step zeroes unused. Both runs must be identical."""
    monkeypatch.chdir(tmp_path)
    settings = dict(TINY, num_experts=2, seed=5, eval_episodes=1)
    ours = pmoe_sac.main(pmoe_sac.Args(**settings))
    full_backward = torch.Tensor.backward

    def cleanrl_backward(self, *args, inputs=None, **kwargs):  # drops inputs: every leaf gets its gradient
        return full_backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", cleanrl_backward)
    cleanrl = pmoe_sac.main(pmoe_sac.Args(**settings, exp_name="full_backward"))
    for key in ours:
        if not key.startswith("sps"):  # wall-clock
            assert ours[key] == cleanrl[key], key


def recorded_run(settings, use_compile, workdir):
    """main on settings, recording every parameter and dynamo's new-graph count at each replay sample (before each
    update) and at the end. Inductor draws its own random numbers; fallback_random makes it use eager's generator."""
    torch._dynamo.reset()  # new networks each run: start from an empty compile cache
    nets, snapshots, graphs = [], [], []
    sample, graphs_before = pmoe_sac.ReplayBuffer.sample, torch._dynamo.utils.counters["stats"]["unique_graphs"]

    def recording(cls):
        class Recorded(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                nets.append(self)

        return Recorded

    def snapshot():  # the actor's and the four critics' parameters, in main's build order
        snapshots.append([p.detach().clone() for net in nets for p in net.parameters()])
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before)

    def recording_sample(self, batch_size):
        snapshot()
        return sample(self, batch_size)

    with pytest.MonkeyPatch.context() as mp, torch._inductor.config.patch(fallback_random=True):
        mp.chdir(workdir)
        mp.setattr(pmoe_sac, "Actor", recording(pmoe_sac.Actor))
        mp.setattr(pmoe_sac, "SoftQNetwork", recording(pmoe_sac.SoftQNetwork))
        mp.setattr(pmoe_sac.ReplayBuffer, "sample", recording_sample)
        summary = pmoe_sac.main(pmoe_sac.Args(compile=use_compile, **settings))
        snapshot()
    names = [name for net in nets for name, _ in net.named_parameters()]
    return dict(summary=summary, snapshots=snapshots, graphs=graphs, names=names, K=settings["num_experts"])


@pytest.fixture(scope="module", params=[1, 4])
def eager_and_compiled(request, tmp_path_factory):
    """The same 4-update run (an actor update at each) twice, eager then --compile, on the same seed: the same
    batches. Module-scoped: the compile (tens of seconds on a cold cache) is paid once per K. Eager steps torch's fused
    Adam, --compile the default Adam compiled: the comparison also checks that fused Adam is CleanRL's Adam."""
    settings = dict(TINY, num_experts=request.param, total_timesteps=155, learning_starts=150, eval_episodes=0)
    settings["policy_frequency"] = 1
    return [recorded_run(settings, use_compile, tmp_path_factory.mktemp("run")) for use_compile in (False, True)]


@pytest.mark.parametrize("after", [1, 4])  # after the first update, and after all four
def test_compiled_update_equals_eager_update(eager_and_compiled, after):
    eager, compiled = eager_and_compiled
    assert len(eager["snapshots"]) == len(compiled["snapshots"]) == 5  # before updates 1..4, and at the end
    for name, p_eager, p_compiled in zip(eager["names"], eager["snapshots"][after], compiled["snapshots"][after]):
        torch.testing.assert_close(p_compiled, p_eager, rtol=0, atol=1e-5, msg=name)
    if after == 4:  # the summary's losses (sums, which inductor may reorder) and the tuned alpha
        for key in ("qf_loss", "actor_loss", "route_loss", "alpha"):
            assert compiled["summary"][key] == pytest.approx(eager["summary"][key], rel=1e-4, abs=1e-6), key


def test_compiled_run_trains_and_compiles_only_at_warm_up(eager_and_compiled):
    eager, compiled = eager_and_compiled
    assert eager["graphs"] == [0] * 5  # the eager run compiled nothing
    assert (
        compiled["graphs"][1] > 0 and compiled["graphs"][1:] == [compiled["graphs"][1]] * 4
    )  # no graph after update 1
    summary = compiled["summary"]
    for key in ("qf_loss", "actor_loss", "route_loss", "alpha"):
        assert math.isfinite(summary[key]), key
    assert summary["alpha"] != 1.0  # alpha was tuned
    for name, before, after in zip(compiled["names"], compiled["snapshots"][0], compiled["snapshots"][-1]):
        unused = compiled["K"] == 1 and name.startswith("fc_route")  # softmax of one logit: no gradient
        assert unused or not torch.equal(before, after), f"{name} did not change"


def test_saved_model_is_the_trained_agent(tmp_path, monkeypatch, record_networks):
    monkeypatch.chdir(tmp_path)
    summary = pmoe_sac.main(pmoe_sac.Args(save_model=True, **TINY))
    path = summary["model_path"]
    assert os.path.isfile(path) and not os.path.exists(path + ".tmp")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["args"]["num_experts"] == 3
    assert set(checkpoint) == {"actor", "qf1", "qf2", "args", "replay_states"}
    states = checkpoint["replay_states"]  # 1000 draws from the 400 stored rows, for rl_diagnose.py
    assert states.shape == (1000, 11) and len(torch.unique(states, dim=0)) <= 400
    (actor, actor_init), (qf1, _), (qf2, _) = record_networks[:3]  # main builds the actor, qf1 and qf2 first
    for name, net in dict(actor=actor, qf1=qf1, qf2=qf2).items():
        for key, p in net.named_parameters():
            assert torch.equal(checkpoint[name][key], p.detach()), (name, key)  # the trained weights ...
    assert not torch.equal(checkpoint["actor"]["fc_mean.weight"], actor_init["fc_mean.weight"])  # ... not fresh ones
    again = pmoe_sac.main(pmoe_sac.Args(eval_only=True, model_path=path, eval_expert="argmax", eval_episodes=2))
    assert again["eval_return"] == summary["eval_return_argmax"]  # same weights, env seeds and deterministic actions
    again = pmoe_sac.main(pmoe_sac.Args(eval_only=True, model_path=path, eval_expert="sample", eval_episodes=2))
    assert again["eval_return"] == summary["eval_return_sample"]  # the expert draws are seeded too


def test_video_of_the_first_sub_env(tmp_path):
    """--capture-video: gymnasium's RecordVideo on sub-env 0 writes videos/<run_name>/*.mp4 (headless: MUJOCO_GL=egl).
    Episode 0's file holds its reset frame and one frame per step."""
    import imageio_ffmpeg

    flags = ["--capture-video", "--total-timesteps", "60", "--learning-starts", "50", "--batch-size", "16"]
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "pmoe_sac.py"), *flags, "--buffer-size", "100", "--eval-episodes", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    video = tmp_path / "videos" / run_dir.name / "rl-video-episode-0.mp4"
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    first_length = scalars(run_dir, "charts/episodic_length")[0][1]
    print(f"video {video.name}: {video.stat().st_size} bytes, {frames} frames, episode length {first_length:.0f}")
    assert frames == first_length + 1 and video.stat().st_size > 1000


@pytest.mark.parametrize(
    "override",
    [
        dict(env_id="CartPole-v1"),
        dict(num_experts=0),
        dict(batch_size=2000),
        dict(learning_starts=500),
        dict(eval_only=True),
        dict(eval_only=True, model_path="missing.cleanrl_model"),
        dict(model_path="missing.cleanrl_model"),
        dict(cudagraphs=True),
        dict(cudagraphs=True, compile=True, cuda=False),  # CUDA graphs need a GPU; refused on a CPU
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
    """A diverging update (here: a NaN injected into the actor's log-prob) ends the run with a clear message."""
    monkeypatch.chdir(tmp_path)
    real = pmoe_sac.pmoe_estimator

    def diverging(*args):
        pi, log_pi, route_loss, k = real(*args)
        return pi, log_pi * float("nan"), route_loss, k

    monkeypatch.setattr(pmoe_sac, "pmoe_estimator", diverging)
    with pytest.raises(SystemExit, match="non-finite loss at global_step=200"):
        pmoe_sac.main(pmoe_sac.Args(**TINY))


@pytest.mark.parametrize("eval_expert", ["argmax", "sample"])
def test_lockstep_evaluation_plays_one_seeded_episode_per_env(eval_expert):
    """evaluate() steps N envs in lockstep: the returns of the reference, a SAME_STEP SyncVectorEnv reset with `seed`
    (sub-env i: seed + i) that keeps each sub-env's first episode, with the same batched forward and expert draws.
    Hopper-v5's episodes end at different steps. Planted: every env reset with `seed`; a finished env stepped again:
    red."""
    envs = gym.vector.SyncVectorEnv([pmoe_sac.make_env("Hopper-v5", 1, 0, False, "")])
    torch.manual_seed(0)
    actor = pmoe_sac.Actor(envs, 3, "pmoe")
    with torch.no_grad():  # a random actor whose experts differ: argmax and sampled experts act differently
        for p in actor.parameters():
            p.mul_(3)
    ours = pmoe_sac.evaluate(actor, "Hopper-v5", 5, 7, eval_expert, torch.device("cpu"))
    ref_envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("Hopper-v5")] * 5, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    obs, _ = ref_envs.reset(seed=7)
    returns, reference = np.zeros(5), [None] * 5
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(7)
        while None in reference:
            mix_logits, means, _ = actor(torch.tensor(obs, dtype=torch.float32))
            z = Categorical(logits=mix_logits).sample() if eval_expert == "sample" else mix_logits.argmax(-1)
            obs, reward, terminated, truncated, _ = ref_envs.step(actor.squash(means[torch.arange(5), z]).numpy())
            returns += reward
            for i in np.flatnonzero(terminated | truncated):
                reference[i] = returns[i] if reference[i] is None else reference[i]
                returns[i] = 0.0
    assert ours == reference
    assert len(set(ours)) == 5 and len(set(np.round(ours, 3))) == 5  # five different episodes
