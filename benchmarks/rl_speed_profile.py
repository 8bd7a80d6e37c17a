"""Where the time of one update goes on this CPU: matrix products (compute-bound: compiling cannot remove them) against
everything else (elementwise kernels, Python, autograd and dispatch: what fusing and compiling can remove).

SAC: one environment step's share of updates at CleanRL's defaults (policy_frequency 2: per step one critic update,
one actor update with its alpha step, one soft target update), batch 256, HalfCheetah's sizes, K=1 and K=4, built from
pmoe_sac.py's own networks and estimator. PPO: one minibatch step (64 rows, the losses, backward, clipping, Adam) of
pmoe_ppo.py's own Agent and ppo_loss (with pmoe_losses), K=1 and K=5; and one acting step (one row) with and without the
environment. One torch thread. Per item: the wall time (median), the time spent inside matrix products and inside
all other aten ops (timed per op by a dispatch mode, which adds its own per-op overhead), and the op count.
Then the same SAC update and PPO minibatch compiled (torch.compile, default mode), interleaved with eager. As in the
scripts, eager steps torch's fused Adam and compiled the default Adam compiled.

  OMP_NUM_THREADS=1 python benchmarks/rl_speed_profile.py
"""

import collections
import copy
import os
import statistics
import sys
import time
from functools import partial

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pmoe_ppo  # noqa: E402
import pmoe_sac  # noqa: E402

MATMULS = {"aten.mm.default", "aten.addmm.default", "aten.bmm.default"}


class OpTimer(TorchDispatchMode):
    """Seconds spent inside each aten op, and how many calls (forward, backward and optimizer ops alike)."""

    def __init__(self):
        super().__init__()
        self.seconds, self.calls = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds[str(func)] += time.perf_counter() - start
        self.calls[str(func)] += 1
        return out


def wall_ms(fn, n, warmup=10):
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def breakdown(name, fn, n):
    wall = statistics.median(wall_ms(fn, n) for _ in range(3))
    timer = OpTimer()
    with timer:
        for _ in range(n):
            fn()
    matmul = sum(s for op, s in timer.seconds.items() if op in MATMULS) / n * 1e3
    other = sum(s for op, s in timer.seconds.items() if op not in MATMULS) / n * 1e3
    calls = sum(timer.calls.values()) / n
    matmul_calls = sum(c for op, c in timer.calls.items() if op in MATMULS) / n
    print(
        f"| {name} | {wall:.2f} | {matmul:.2f} ({100 * matmul / wall:.0f}%) | {matmul_calls:.0f} | {other:.2f} | "
        f"{calls:.0f} |"
    )
    return wall


def sac_update(num_experts, fused):
    """CleanRL's update lines on pmoe_sac.py's networks; returns (update, update with compiled parts). fused: Adam's
    one-kernel step, as pmoe_sac.py runs eagerly (its --compile runs the default Adam, compiled)."""
    envs = gym.vector.SyncVectorEnv([pmoe_sac.make_env("HalfCheetah-v5", 1, 0, False, "")])
    actor = pmoe_sac.Actor(envs, num_experts)
    qf1, qf2, qf1_target, qf2_target = (pmoe_sac.SoftQNetwork(envs) for _ in range(4))
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=1e-3, fused=fused)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=3e-4, fused=fused)
    log_alpha = torch.zeros(1, requires_grad=True)
    a_optimizer = torch.optim.Adam([log_alpha], lr=1e-3, fused=fused)
    B, obs_dim, A = 256, 17, 6
    obs, next_obs, actions = torch.randn(B, obs_dim), torch.randn(B, obs_dim), torch.rand(B, A) * 2 - 1
    rewards, dones = torch.randn(B), torch.zeros(B)
    alpha = torch.full((1,), 0.2)

    def critic():
        with torch.no_grad():
            next_actions, next_log_pi, _, _ = actor.get_action(next_obs)
            min_next = torch.min(qf1_target(next_obs, next_actions), qf2_target(next_obs, next_actions))
            next_q = rewards + (1 - dones) * 0.99 * (min_next - alpha * next_log_pi).view(-1)
        qf_loss = F.mse_loss(qf1(obs, actions).view(-1), next_q) + F.mse_loss(qf2(obs, actions).view(-1), next_q)
        q_optimizer.zero_grad()
        qf_loss.backward()
        q_optimizer.step()

    def actor_step():
        pi, log_pi, route_loss, _ = pmoe_sac.pmoe_estimator(actor, qf1, qf2, obs)
        actor_loss = (alpha * log_pi - torch.min(qf1(obs, pi), qf2(obs, pi))).mean()
        actor_optimizer.zero_grad()
        (actor_loss + route_loss).backward(inputs=list(actor.parameters()))  # as pmoe_sac.py: no critic gradients
        actor_optimizer.step()
        return log_pi

    def alpha_step(log_pi):
        alpha_loss = (-log_alpha.exp() * (log_pi.detach() - A)).mean()
        a_optimizer.zero_grad()
        alpha_loss.backward()
        a_optimizer.step()
        alpha.copy_(log_alpha.detach().exp())

    def targets():
        for net, target in ((qf1, qf1_target), (qf2, qf2_target)):
            for param, target_param in zip(net.parameters(), target.parameters()):
                target_param.data.lerp_(param.data, 0.005)  # as pmoe_sac.py: LeanRL's in-place form

    def update():
        critic()
        alpha_step(actor_step())
        targets()

    compiled_critic, compiled_actor = torch.compile(critic), torch.compile(actor_step)

    def compiled_update():  # as pmoe_sac.py --compile: critic and actor compiled, alpha and targets eager
        compiled_critic()
        alpha_step(compiled_actor())
        targets()

    def alpha_only():
        alpha_step(log_alpha.detach().expand(B, 1))

    parts = dict(critic=critic, actor=actor_step, alpha=alpha_only, targets=targets)
    return update, compiled_update, parts, (qf1, qf2, obs)


def stacked_scoring(qf1, qf2, obs, num_experts):
    """min(Q1, Q2) of K candidate actions per state (B*K rows, no grad): pmoe_sac.min_q's two critic calls, eager and
    compiled, against one vmap over the two critics' stacked parameters (LeanRL's layout), compiled."""
    actions = torch.rand(obs.shape[0], num_experts, 6) * 2 - 1
    params, buffers = torch.func.stack_module_state([qf1, qf2])
    shell = copy.deepcopy(qf1).to("meta")

    def one_critic(p, b, x, a):
        return torch.func.functional_call(shell, (p, b), (x, a))

    def stacked():
        B, K, A = actions.shape
        obs_k = obs.unsqueeze(1).expand(B, K, obs.shape[-1]).reshape(B * K, -1)
        q = torch.vmap(one_critic, in_dims=(0, 0, None, None))(params, buffers, obs_k, actions.reshape(B * K, A))
        return q.min(0).values.view(B, K)

    with torch.no_grad():
        two_calls = partial(pmoe_sac.min_q, qf1, qf2, obs, actions)
        torch.testing.assert_close(torch.compile(stacked)(), two_calls())
        return two_calls, torch.compile(two_calls), torch.compile(stacked)


def scoring_rate(two_calls, qf1, rows):
    """Is PMOE's label compute-bound? GFLOP/s of the scoring (both critics' three layers on `rows` = B*K candidate
    rows, 2 flops per multiply-add) against one torch.mm of its largest layer's shape, both timed the same way."""
    flops = 2 * 2 * rows * sum(layer.in_features * layer.out_features for layer in (qf1.fc1, qf1.fc2, qf1.fc3))
    a, b = torch.randn(rows, 256), torch.randn(256, 256)
    mm_flops = 2 * rows * 256 * 256
    rate = flops / statistics.median(wall_ms(two_calls, 40) for _ in range(5)) / 1e6
    peak = mm_flops / statistics.median(wall_ms(partial(torch.mm, a, b), 200) for _ in range(5)) / 1e6
    print(f"| {rows} rows: scoring {rate:.1f} GFLOP/s, torch.mm [{rows}, 256] x [256, 256] {peak:.1f} GFLOP/s |")


def ppo_minibatch(num_experts, fused):
    """pmoe_ppo.py's minibatch step and acting; fused as in sac_update."""
    args = pmoe_ppo.Args(num_experts=num_experts)
    args.batch_size, args.minibatch_size = 2048, 64
    envs = gym.vector.SyncVectorEnv(
        [pmoe_ppo.make_env("HalfCheetah-v5", 0, False, "", 0.99)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    use_routing = num_experts > 1
    agent = pmoe_ppo.Agent(envs, num_experts, "pmoe", use_routing)
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-4, eps=1e-5, fused=fused)
    N = args.batch_size
    b_obs, b_actions = torch.randn(N, 17), torch.randn(N, 6)
    with torch.no_grad():
        _, b_logprobs, _, b_values = agent.get_action_and_value(b_obs, b_actions)
    b_values, b_advantages, b_returns = b_values.view(-1), torch.randn(N), torch.randn(N)
    rng = np.random.default_rng(0)

    def make_step(loss_fn, optimizer_step):
        def step():  # the body of pmoe_ppo.py's minibatch loop (ppo_loss includes PMOE's losses)
            mb_inds = rng.integers(0, N, args.minibatch_size)
            loss, *_, clipfrac, _, _ = loss_fn(
                agent, args, b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values, mb_inds
            )
            clipfrac.item()
            torch.isfinite(loss)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer_step()

        return step

    eager = make_step(pmoe_ppo.ppo_loss, optimizer.step)
    compiled = make_step(torch.compile(pmoe_ppo.ppo_loss), torch.compile(optimizer.step))
    next_obs = torch.Tensor(envs.reset(seed=1)[0])

    def act():
        with torch.no_grad():
            return agent.get_action_and_value(next_obs)[0]

    def act_and_step():
        envs.step(act().numpy())

    compiled_policy = torch.compile(torch.no_grad()(agent.get_action_and_value))

    def compiled_act():
        return compiled_policy(next_obs)[0]

    return eager, compiled, act, act_and_step, compiled_act


def eager_vs_compiled(name, eager, compiled, n, rounds=8):
    for _ in range(3):  # compile, and the optimizer's lazy state
        compiled()
    eager_ms, compiled_ms = [], []
    for _ in range(rounds):
        eager_ms.append(wall_ms(eager, n, warmup=2))
        compiled_ms.append(wall_ms(compiled, n, warmup=2))
    e, c = statistics.median(eager_ms), statistics.median(compiled_ms)
    print(f"| {name} | {e:.2f} | {c:.2f} | {e / c:.2f} |")


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.distributions.Distribution.set_default_validate_args(False)  # as both scripts
    print(f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}, {torch.get_num_threads()} thread\n")
    print("| item | wall ms | in matmuls ms (share of wall) | matmul calls | in other ops ms | aten ops |")
    print("| --- | --- | --- | --- | --- | --- |")
    sac, ppo = {}, {}
    for k in (1, 4):
        eager, compiled = sac_update(k, fused=True), sac_update(k, fused=False)
        sac[k] = (eager[0], compiled[1], eager[2], eager[3])
        breakdown(f"SAC update, K={k}", sac[k][0], 40)
        for name, part in sac[k][2].items():
            breakdown(f"  of which {name}, K={k}", part, 40)
    for k in (1, 5):
        eager, compiled = ppo_minibatch(k, fused=True), ppo_minibatch(k, fused=False)
        ppo[k] = (eager[0], compiled[1], eager[2], eager[3], compiled[4])
        breakdown(f"PPO minibatch step, K={k}", ppo[k][0], 100)
        breakdown(f"PPO acting (1 row), K={k}", ppo[k][2], 300)
        breakdown(f"PPO acting + env step, K={k}", ppo[k][3], 300)
    print("\n| item | eager ms | compiled ms | eager / compiled |\n| --- | --- | --- | --- |")
    for k in (1, 4):
        eager_vs_compiled(f"SAC update, K={k}", sac[k][0], sac[k][1], 15)
    two_calls, compiled_two_calls, compiled_stacked = stacked_scoring(*sac[4][3], 4)
    with torch.no_grad():
        eager_vs_compiled("SAC scoring of K=4 candidates, two critic calls", two_calls, compiled_two_calls, 40)
        eager_vs_compiled("SAC scoring of K=4 candidates, stacked critics (vmap)", two_calls, compiled_stacked, 40)
    for k in (1, 5):
        eager_vs_compiled(f"PPO minibatch step, K={k}", ppo[k][0], ppo[k][1], 50)
        eager_vs_compiled(f"PPO acting (1 row), K={k}", ppo[k][2], ppo[k][4], 200)
    print("\n| PMOE's label (eager): the scoring's matrix-product rate against the CPU's |\n| --- |")
    with torch.no_grad():
        scoring_rate(two_calls, sac[4][3][0], 4 * sac[4][3][2].shape[0])
    print(f"\nload average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
