"""`main` itself, not copies of its lines: the update steps of pmoe_sac.py and pmoe_ppo.py are observed from outside
(forward hooks, optimizer step hooks, gradient hooks, spying subclasses) during short real runs, then checked against
formulas written here. SAC: after two updates the TD target comes from the target critics, not the online ones; each
actor step raises min(Q1, Q2) of the mean actions on the batch it trained on. PPO: the policy loss normalises the
advantages per minibatch (4 minibatches, so minibatch and batch statistics differ). Seconds per test."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pmoe_ppo
import pmoe_sac

PlainCritic, PlainActor = pmoe_sac.SoftQNetwork, pmoe_sac.Actor  # before any test's monkeypatch wraps the classes
PlainAdam = torch.optim.Adam  # pmoe_sac.optim is torch.optim: the spy below replaces torch.optim.Adam for one test


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks on a shared 2-core machine: torch's thread pool only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def state(net):
    return {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}


def spy_sac(monkeypatch, narrow_actor=False):
    """Make main's actor, critics, optimizers and replay buffer report to one namespace:
    critics: every SoftQNetwork main builds; calls: (critic, its action input needed grad) since the last optimizer
    step; batches: each replay sample, with the state of every critic at that moment (before the update uses it);
    next_actions: (input, output) of each multi-row get_action; steps: each optimizer step, with the actor's last
    grad-mode input, the critics that were fed a differentiable action, and the networks before and after.
    narrow_actor: every expert's std at its minimum e^-5, so an action is its expert's mean to within ~1%."""
    spy = SimpleNamespace(actors=[], critics=[], optimizers=[], calls=[], batches=[], next_actions=[], steps=[])
    spy.actor_inputs = []

    class SpyCritic(PlainCritic):
        def __init__(self, env):
            super().__init__(env)
            self.env = env
            spy.critics.append(self)
            self.register_forward_hook(record_critic_call)

    def record_critic_call(net, inputs, output):
        spy.calls.append((net, inputs[1].requires_grad))

    class SpyActor(PlainActor):
        def __init__(self, env, *args):
            super().__init__(env, *args)
            self.env = env
            spy.actors.append(self)
            if narrow_actor:  # tanh(-30) = -1: log_std = LOG_STD_MIN for every state and expert
                with torch.no_grad():
                    self.fc_logstd.weight.zero_()
                    self.fc_logstd.bias.fill_(-30.0)
            self.register_forward_hook(record_actor_input)

        def get_action(self, x, *args, **kwargs):
            out = super().get_action(x, *args, **kwargs)
            if len(x) > 1:  # acting uses one row (num_envs = 1); the TD target a whole batch
                spy.next_actions.append((x.detach().clone(), [t.detach().clone() for t in out]))
            return out

    def record_actor_input(net, inputs, output):
        if torch.is_grad_enabled():
            spy.actor_inputs.append(inputs[0].detach().clone())

    class SpyAdam(PlainAdam):
        def __init__(self, params, *args, **kwargs):
            super().__init__(params, *args, **kwargs)
            spy.optimizers.append(self)
            self.register_step_pre_hook(before_step)
            self.register_step_post_hook(after_step)

    def before_step(optimizer, args, kwargs):
        fed_pi = {id(net) for net, needs_grad in spy.calls if needs_grad}
        obs = spy.actor_inputs[-1] if spy.actor_inputs else None
        nets = {id(net): state(net) for net in spy.actors + spy.critics}
        spy.steps.append(SimpleNamespace(optimizer=optimizer, obs=obs, fed_pi=fed_pi, before=nets))

    def after_step(optimizer, args, kwargs):
        spy.steps[-1].after = {id(net): state(net) for net in spy.actors}
        spy.calls.clear()

    sample = pmoe_sac.ReplayBuffer.sample

    def recording_sample(self, batch_size):
        data = sample(self, batch_size)
        spy.batches.append((data, {id(net): state(net) for net in spy.critics}))
        return data

    monkeypatch.setattr(pmoe_sac, "SoftQNetwork", SpyCritic)
    monkeypatch.setattr(pmoe_sac, "Actor", SpyActor)
    monkeypatch.setattr(pmoe_sac.optim, "Adam", SpyAdam)
    monkeypatch.setattr(pmoe_sac.ReplayBuffer, "sample", recording_sample)
    return spy


def online_and_target(spy):
    """Online critics: those an optimizer trains. Target critics: the other two. Found by role, not build order."""
    trained = {id(p) for opt in spy.optimizers for group in opt.param_groups for p in group["params"]}
    online = [net for net in spy.critics if all(id(p) in trained for p in net.parameters())]
    target = [net for net in spy.critics if not any(id(p) in trained for p in net.parameters())]
    assert len(online) == len(target) == 2 and len(spy.critics) == 4
    return online, target


def critic_copy(net, weights):
    copy = PlainCritic(net.env)
    copy.load_state_dict(weights)
    return copy


def soft_td_target(data, next_actions, next_log_pi, critics, alpha, gamma):
    """r + gamma * (1 - d) * (min_j Q_j(s', a') - alpha * log pi(a'|s')), row by row in float64."""
    with torch.no_grad():
        q = np.stack([critic(data.next_observations, next_actions).double().view(-1).numpy() for critic in critics])
    soft_value = q.min(0) - alpha * next_log_pi.double().view(-1).numpy()
    rewards, dones = data.rewards.double().view(-1).numpy(), data.dones.double().view(-1).numpy()
    return rewards + gamma * (1.0 - dones) * soft_value


SAC = dict(env_id="Hopper-v5", learning_starts=150, batch_size=128, buffer_size=1000, eval_episodes=0, num_experts=3)


def test_sac_td_target_uses_the_target_critics_after_two_updates(tmp_path, monkeypatch):
    """Two updates (global steps 151, 152). At the second, the target critics (tau = 0.3 of one trained step) and the
    online critics differ, so the regression target of both critics must equal the soft TD target computed from the
    target critics' weights at that moment, and differ from the one the online critics would give. At the first
    update the two coincide: the one-update test elsewhere cannot tell them apart.
    Planted: `qf1(...)`, `qf2(...)` in place of `qf1_target(...)`, `qf2_target(...)` in the TD target: red."""
    monkeypatch.chdir(tmp_path)
    spy = spy_sac(monkeypatch)
    mse_targets, mse_loss = [], pmoe_sac.F.mse_loss

    def recording_mse_loss(prediction, target, *args, **kwargs):
        if target.dim() == 1:  # the critics' [B] targets (PMOE's routing loss also calls mse_loss, on [B, K])
            mse_targets.append(target.detach().clone())
        return mse_loss(prediction, target, *args, **kwargs)

    monkeypatch.setattr(pmoe_sac.F, "mse_loss", recording_mse_loss)
    settings = dict(SAC, total_timesteps=153, policy_frequency=1, autotune=False, alpha=0.37, gamma=0.9, tau=0.3)
    pmoe_sac.main(pmoe_sac.Args(**settings, q_lr=0.01))  # a large critic step: online and target critics far apart
    online, target = online_and_target(spy)
    assert len(spy.batches) == 2 and len(mse_targets) == 4  # two updates, qf1's and qf2's targets at each
    for update, (data, weights) in enumerate(spy.batches):
        assert 0 < data.dones.sum() < len(data.dones)  # terminal and non-terminal rows: both branches are checked
        calls = [out for x, out in spy.next_actions if torch.equal(x, data.next_observations)]
        assert len(calls) == 1, "the TD target draws a' ~ pi(.|s') once, on the batch's next observations"
        next_actions, next_log_pi = calls[0][0], calls[0][1]
        expected = soft_td_target(
            data, next_actions, next_log_pi, [critic_copy(net, weights[id(net)]) for net in target], 0.37, 0.9
        )
        for used in mse_targets[2 * update : 2 * update + 2]:
            np.testing.assert_allclose(used.numpy(), expected, rtol=1e-5, atol=1e-5, err_msg=f"update {update + 1}")
        if update == 1:  # the check has teeth: the online critics' target is far from the target critics'
            wrong = soft_td_target(
                data, next_actions, next_log_pi, [critic_copy(net, weights[id(net)]) for net in online], 0.37, 0.9
            )
            assert np.abs(wrong - expected).max() > 1e-2


def mean_action_min_q(actor_weights, critic_weights, actor, online, obs):
    """mean_b max_k min(Q1, Q2)(s_b, squash(mu_k(s_b))): the value of the best expert's mean action, per state."""
    policy = PlainActor(actor.env, actor.num_experts, actor.policy_type)
    policy.load_state_dict(actor_weights)
    critics = [critic_copy(net, weights) for net, weights in zip(online, critic_weights)]
    with torch.no_grad():
        _, means, _ = policy(obs)  # [B, K, A]
        actions = policy.squash(means)
        per_expert = [
            torch.min(critics[0](obs, actions[:, k]), critics[1](obs, actions[:, k])).view(-1)
            for k in range(actions.shape[1])
        ]
    return torch.stack(per_expert, 1).max(1).values.mean().item()


def test_sac_actor_step_raises_min_q_on_its_batch(tmp_path, monkeypatch):
    """Three updates with an actor step each (alpha = 0: the actor's objective is min(Q1, Q2) alone; stds at their
    minimum, so pi(s) is the chosen expert's mean). Each actor step must (a) train on the replay batch just sampled,
    (b) feed its differentiable action to the two online critics only, and (c) raise mean_b max_k min(Q1, Q2) of the
    mean actions on that batch, judged by the online critics as they were at the step.
    Planted: `actor_loss = (min_qf_pi - alpha * log_pi).mean()` (sign flipped): red (c). `qf1_target(obs, pi)` in the
    actor loss: red (b)."""
    monkeypatch.chdir(tmp_path)
    spy = spy_sac(monkeypatch, narrow_actor=True)
    settings = dict(SAC, total_timesteps=154, policy_frequency=1, autotune=False, alpha=0.0)
    pmoe_sac.main(pmoe_sac.Args(**settings))
    online, target = online_and_target(spy)
    roles = {}  # readable names for the failure message
    for role, nets in (("online", online), ("target", target)):
        for i, net in enumerate(nets):
            roles[id(net)] = f"{role} critic {i + 1}"
    (actor,) = spy.actors
    actor_params = {id(p) for p in actor.parameters()}
    actor_steps = [
        step for step in spy.steps if {id(p) for g in step.optimizer.param_groups for p in g["params"]} == actor_params
    ]
    assert len(actor_steps) == len(spy.batches) == 3
    gains = []
    for step, (data, _) in zip(actor_steps, spy.batches):
        assert torch.equal(step.obs, data.observations)  # (a)
        assert {roles[i] for i in step.fed_pi} == {"online critic 1", "online critic 2"}  # (b)
        critic_weights = [step.before[id(net)] for net in online]
        before = mean_action_min_q(step.before[id(actor)], critic_weights, actor, online, data.observations)
        after = mean_action_min_q(step.after[id(actor)], critic_weights, actor, online, data.observations)
        gains.append(after - before)
    print("min Q gains per actor step:", gains)
    assert all(gain > 0 for gain in gains), gains  # (c)


def test_ppo_advantages_are_normalised_per_minibatch(tmp_path, monkeypatch):
    """One rollout of 64 steps, 2 epochs of 4 minibatches of 16. The advantages the policy loss used are read back from
    its gradient: d(loss)/d(log pi_i) = -A_i * ratio_i / M for unclipped rows (tiny learning rate: no row clips).
    Per minibatch they must be the GAE advantages of exactly those rows, normalised by that minibatch's own mean and
    std; the batch's mean and std give numbers off by more than 0.05, so the test tells the two apart.
    Planted: `(mb_advantages - b_advantages.mean()) / (b_advantages.std() + 1e-8)` in ppo_loss: red."""
    monkeypatch.chdir(tmp_path)
    rollout, losses, gae_advantages = [], [], []

    class SpyAgent(pmoe_ppo.Agent):
        def get_action_and_value(self, x, action=None, experts=None):
            out = super().get_action_and_value(x, action, experts)
            if action is None:  # acting: the stored action and its log-prob, in rollout order (num_envs = 1)
                rollout.append((out[0].detach().clone(), out[1].detach().clone()))
            else:  # the loss: keep the gradient that reaches each row's log-prob
                losses.append(SimpleNamespace(actions=action.detach().clone(), logprob=out[1].detach().clone()))
                out[1].register_hook(record_gradient)
            return out

    def record_gradient(grad):  # backward of the minibatch just recorded: each optimizer step follows its forward
        losses[-1].grad = grad.clone()

    compute_gae = pmoe_ppo.compute_gae

    def recording_gae(*args):
        advantages, returns = compute_gae(*args)
        gae_advantages.append(advantages.clone())
        return advantages, returns

    monkeypatch.setattr(pmoe_ppo, "Agent", SpyAgent)
    monkeypatch.setattr(pmoe_ppo, "compute_gae", recording_gae)
    settings = dict(env_id="Hopper-v5", num_steps=64, total_timesteps=64, num_minibatches=4, update_epochs=2)
    pmoe_ppo.main(pmoe_ppo.Args(**settings, num_experts=3, learning_rate=1e-5, eval_episodes=1))
    (advantages,) = gae_advantages
    advantages = advantages.view(-1).double()  # [T] with one env: row t is rollout step t
    row_of = {actions[0].numpy().tobytes(): t for t, (actions, _) in enumerate(rollout)}
    old_logprobs = torch.cat([logprob for _, logprob in rollout]).double()
    assert len(row_of) == 64 and len(losses) == 8
    for epoch in range(2):  # each epoch's minibatches partition the batch
        rows = [row_of[a.numpy().tobytes()] for record in losses[4 * epoch : 4 * epoch + 4] for a in record.actions]
        assert sorted(rows) == list(range(64))
    batch_mean, batch_std = advantages.mean(), advantages.std()
    for record in losses:
        rows = torch.tensor([row_of[a.numpy().tobytes()] for a in record.actions])
        ratio = (record.logprob.double() - old_logprobs[rows]).exp()
        assert ((ratio - 1).abs() < 0.01).all()  # far inside the clip range: every row's gradient is -A_i ratio_i / M
        used = -record.grad.double() * len(rows) / ratio
        raw = advantages[rows]
        expected = (raw - raw.mean()) / (raw.std() + 1e-8)
        torch.testing.assert_close(used, expected, rtol=1e-4, atol=1e-4)
        assert abs(used.mean().item()) < 1e-4 and abs(used.std().item() - 1) < 1e-4
        batch_normalised = (raw - batch_mean) / (batch_std + 1e-8)
        assert (batch_normalised - expected).abs().max() > 0.05
