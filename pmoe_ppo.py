"""PMOE-PPO: PPO with a probabilistic mixture-of-experts policy (Ren et al. 2021, arXiv 2104.09122), a minimal diff
of CleanRL's cleanrl/ppo_continuous_action.py on gymnasium 1.x, MuJoCo v5 (docs/pmoe_ppo.md: each hunk and why).

    python pmoe_ppo.py                            # PMOE, K=5 experts, HalfCheetah-v5, CleanRL's 1M steps
    python pmoe_ppo.py --num-experts 1            # plain CleanRL PPO on the same code path
    python pmoe_ppo.py --eval-only --model-path runs/<run_name>/pmoe_ppo.cleanrl_model
    python pmoe_ppo.py --eval-every 20480         # also evaluate every 10 rollouts: an eval curve over steps

What the diff changes: the actor has K Gaussian experts and a router w(s); the PPO ratio uses the mixture density;
a Q-network fit to the lambda-returns scores one sample per expert and w(s) is regressed onto the best expert's
one-hot (the "frequency approximate gradient"). No official PPO code exists: we follow the co-author's pmoe_ppo.py
(quantumiracle/Popular-RL-Algorithms, PMOE_PPO.train_net). Evaluation: mean actions, argmax and sampled expert.
"""

import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional

import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import tyro
from torch.distributions.normal import Normal
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic` (GPU only); on by default, `--no-torch-deterministic` turns it off"""
    cuda: bool = True
    """use a CUDA GPU when there is one (on by default; `--no-cuda` runs on the CPU)"""
    compile: bool = False
    """torch.compile the minibatch losses, the optimizer step and the acting policy: same math, compiled at start"""
    cudagraphs: bool = False
    """with --compile on a CUDA GPU: compile with inductor's reduce-overhead (CUDA graphs); untested on a GPU here"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "cleanRL"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to capture videos of the agent performances (check out `videos` folder)"""
    save_model: bool = False
    """whether to save model into the `runs/{run_name}` folder"""
    eval_only: bool = False
    """skip training: evaluate the model saved at --model-path"""
    model_path: Optional[str] = None
    """a `.cleanrl_model` file written by --save-model (used with --eval-only)"""
    eval_episodes: int = 10
    """the number of mean-action evaluation episodes (each way: argmax and sampled expert)"""
    eval_every: int = 0
    """also evaluate at the first rollout boundary at or past every multiple of this many steps (0: only at the end)"""

    # Algorithm specific arguments
    env_id: str = "HalfCheetah-v5"
    """the id of the environment"""
    total_timesteps: int = 1000000
    """total timesteps of the experiments"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    num_envs: int = 1
    """the number of parallel game environments"""
    num_steps: int = 2048
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """Toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 32
    """the number of mini-batches"""
    update_epochs: int = 10
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """Toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """Toggles whether or not to use a clipped loss for the value function, as per the paper."""
    ent_coef: float = 0.0
    """coefficient of the entropy (for pmoe: an upper bound of the mixture entropy, exact for K=1)"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: Optional[float] = None
    """the target KL divergence threshold"""

    # PMOE specific arguments
    num_experts: int = 5
    """K, the number of Gaussian experts (1 = plain PPO)"""
    policy_type: Literal["pmoe", "gating", "mcp"] = "pmoe"
    """pmoe: mixture sum_k w_k N_k; gating: one Gaussian of w-weighted means and log-stds; mcp: prod_k N_k^w_k"""
    gradient_estimator: Literal["pmoe", "mixture"] = "pmoe"
    """pmoe: PPO on the mixture + Q-labelled routing loss; mixture: PPO on the mixture likelihood alone (ablation)"""
    route_coef: float = 1.0
    """coefficient of the routing (frequency) loss MSE(w(s), one_hot(argmax_k Q(s, a_k)))"""
    q_coef: float = 1.0
    """coefficient of the Q-network loss MSE(Q(s, a), lambda-return)"""
    eval_expert: Literal["argmax", "sample"] = "argmax"
    """which evaluation is `eval/episodic_return`: expert argmax_k w_k(s), or z ~ Cat(w(s)) as rlkit-pmoe does"""

    # to be filled in runtime (hidden from the CLI)
    batch_size: tyro.conf.Suppress[int] = 0
    """the batch size (computed in runtime)"""
    minibatch_size: tyro.conf.Suppress[int] = 0
    """the mini-batch size (computed in runtime)"""
    num_iterations: tyro.conf.Suppress[int] = 0
    """the number of iterations (computed in runtime)"""


def fail(message):  # bad input: one line on stderr, no traceback, exit code 2
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def validate(args):
    if args.eval_episodes < 1:
        fail(f"--eval-episodes {args.eval_episodes} must be >= 1")
    if args.eval_only and not (args.model_path and os.path.isfile(args.model_path)):
        fail(f"--model-path {args.model_path!r} is not a file: pass the .cleanrl_model written by --save-model")
    if min(args.num_envs, args.num_steps, args.num_minibatches, args.update_epochs) < 1:
        fail("--num-envs, --num-steps, --num-minibatches and --update-epochs must all be >= 1")
    if args.batch_size % args.num_minibatches:
        fail(f"--num-minibatches {args.num_minibatches} must divide num_envs*num_steps={args.batch_size}")
    if args.cudagraphs and not (args.compile and args.cuda and torch.cuda.is_available()):
        fail("--cudagraphs needs --compile and a CUDA GPU; on a CPU drop it")
    if args.eval_only:
        return  # the env id and the architecture come from the checkpoint
    if args.num_experts < 1:
        fail(f"--num-experts {args.num_experts} must be >= 1 (1 = plain PPO)")
    if args.total_timesteps < args.batch_size:
        fail(f"--total-timesteps {args.total_timesteps} is below one rollout ({args.batch_size}): raise it")
    try:  # last: making a MuJoCo env is the slow check
        action_space = gym.make(args.env_id).action_space
    except Exception as e:
        fail(f"--env-id {args.env_id!r} cannot be made ({type(e).__name__}): use a gymnasium id such as HalfCheetah-v5")
    if not isinstance(action_space, gym.spaces.Box):
        fail(f"--env-id {args.env_id} has a {type(action_space).__name__} action space: PPO here needs a Box")


def mujoco_warning(message):
    """mujoco 4 deprecates `settotalmass` (in gymnasium's half_cheetah.xml): its default handler prints that at every
    env creation and writes MUJOCO_LOG.TXT into the working directory. Drop that one; print the others."""
    if "settotalmass" not in message:
        print(f"MuJoCo warning: {message}", file=sys.stderr)


def make_env(env_id, idx, capture_video, run_name, gamma):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}", disable_logger=True)  # no moviepy bar
        else:
            env = gym.make(env_id)
        env = gym.wrappers.FlattenObservation(env)  # deal with dm_control's Dict observation space
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = gym.wrappers.ClipAction(env)
        env = gym.wrappers.NormalizeObservation(env)
        # gymnasium 1.x: TransformObservation takes the observation space as a third argument
        env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), env.observation_space)
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        env = gym.wrappers.TransformReward(env, lambda reward: np.clip(reward, -10, 10))
        return env

    return thunk


def find_wrapper(env, wrapper_class):  # each sub-env holds its own normalisers: walk down its wrapper chain
    while not isinstance(env, wrapper_class):
        env = env.env
    return env


def running_stats(rms):  # a RunningMeanStd as tensors, so the checkpoint loads with torch.load(weights_only=True)
    return {"mean": torch.tensor(rms.mean), "var": torch.tensor(rms.var), "count": torch.tensor(rms.count)}


def mixture_log_prob(action, mix_logits, expert_means, expert_logstds):
    """log pi(a|s) = logsumexp_k [log w_k + log N(a; mu_k, sigma_k)] for pi = sum_k w_k N_k (co-author
    pmoe_ppo.py::PMOE_PPO.get_action_and_value computes log(w . exp(.)), which underflows to -inf in 17-D).
    action [B, A]; mix_logits [B, K]; expert_means, expert_logstds [B, K, A] -> [B]"""
    # the Gaussian density written out: torch's Normal would check its arguments (ops and a host sync) every call
    z = (action.unsqueeze(1) - expert_means) * torch.exp(-expert_logstds)  # [B, K, A]
    expert_log_probs = -(0.5 * z.pow(2) + expert_logstds + 0.5 * np.log(2 * np.pi)).sum(-1)  # [B, K]
    return torch.logsumexp(mix_logits.log_softmax(-1) + expert_log_probs, dim=-1)


def sample_expert(mix_logits):
    """z ~ Cat(softmax(mix_logits)): [B, K] -> [B]. argmax_k w_k / E_k with E_k ~ Exp(1) is the draw torch's
    Categorical(logits=...).sample() makes (multinomial's one-sample path), without its checks and host syncs."""
    w = mix_logits.softmax(-1)
    return (w / torch.empty_like(w).exponential_()).argmax(-1)


def mixture_entropy_bound(mix_logits, expert_logstds):
    """H(w) + sum_k w_k H(N_k) >= H(mixture), which has no closed form. Equality holds for K=1 and for experts
    that do not overlap. mix_logits [B, K]; expert_logstds [B, K, A] -> [B]"""
    log_w = mix_logits.log_softmax(-1)  # [B, K]
    expert_entropy = (0.5 + 0.5 * np.log(2 * np.pi) + expert_logstds).sum(-1)  # [B, K]
    return (log_w.exp() * (expert_entropy - log_w)).sum(-1)


def combine_experts(policy_type, mix_logits, expert_means, expert_logstds):
    """The unimodal MoE baselines, one Gaussian per state. gating: mean and log-std are the w-weighted sums over
    experts. mcp (Peng et al. 2019, arXiv 1905.09808): prod_k N_k^w_k, per dim a Gaussian of precision
    sum_k w_k / sigma_k^2 and mean sum_k (w_k / sigma_k^2) mu_k / precision. [B, K], [B, K, A] x2 -> [B, A] x2"""
    w = mix_logits.softmax(-1).unsqueeze(-1)  # [B, K, 1]
    if policy_type == "gating":
        return (w * expert_means).sum(1), (w * expert_logstds).sum(1)
    weighted_precisions = w * torch.exp(-2 * expert_logstds)  # [B, K, A]
    precision = weighted_precisions.sum(1)  # [B, A]
    return (weighted_precisions * expert_means).sum(1) / precision, -0.5 * precision.log()


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, envs, num_experts, policy_type, use_routing):
        super().__init__()
        self.num_experts, self.policy_type, self.use_routing = num_experts, policy_type, use_routing
        self.action_dim = int(np.prod(envs.single_action_space.shape))
        self.critic = nn.Sequential(
            layer_init(nn.Linear(np.array(envs.single_observation_space.shape).prod(), 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        # all K expert means from one head: [B, K*A]
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(np.array(envs.single_observation_space.shape).prod(), 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, num_experts * self.action_dim), std=0.01),
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, num_experts * self.action_dim))  # per expert and dim
        # the router w(s) = softmax(Linear(obs)), PyTorch's default init (co-author pmoe_ppo.py::Actor)
        self.router = nn.Linear(np.array(envs.single_observation_space.shape).prod(), num_experts)
        if use_routing:  # Q(s, a) exists only to label the best expert for the routing loss
            obs_action_dim = np.array(envs.single_observation_space.shape).prod() + self.action_dim
            self.q_net = nn.Sequential(nn.Linear(obs_action_dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
            self.q_net.append(nn.Linear(64, 1))

    def get_value(self, x):
        return self.critic(x)

    def get_experts(self, x):  # -> router logits [B, K], expert means [B, K, A], expert log-stds [B, K, A]
        expert_means = self.actor_mean(x).view(-1, self.num_experts, self.action_dim)
        expert_logstds = self.actor_logstd.view(1, self.num_experts, self.action_dim).expand_as(expert_means)
        return self.router(x), expert_means, expert_logstds

    def get_action_and_value(self, x, action=None, experts=None):  # experts: get_experts(x), if the caller has it
        if self.num_experts == 1:  # CleanRL's own Gaussian: every 1-expert policy is it, with no router ops
            action_mean = self.actor_mean(x)
            action_logstd = self.actor_logstd.expand_as(action_mean)
        else:
            mix_logits, expert_means, expert_logstds = self.get_experts(x) if experts is None else experts
            if self.policy_type == "pmoe":
                if action is None:  # acting: z ~ Cat(w(s)), then a ~ N(mu_z, sigma_z); the entropy would go unused
                    expert = sample_expert(mix_logits)  # [B]
                    rows = torch.arange(len(x), device=x.device)
                    mean, std = expert_means[rows, expert], expert_logstds[rows, expert].exp()  # [B, A]
                    # torch.normal(mean, std)'s draw without its std >= 0 check, a reduction and a host sync per call
                    action, entropy = mean + std * torch.randn_like(mean), None
                else:
                    entropy = mixture_entropy_bound(mix_logits, expert_logstds)
                logprob = mixture_log_prob(action, mix_logits, expert_means, expert_logstds)
                return action, logprob, entropy, self.critic(x)
            # gating, mcp: one Gaussian composed from the K experts
            action_mean, action_logstd = combine_experts(self.policy_type, mix_logits, expert_means, expert_logstds)
        action_std = torch.exp(action_logstd)
        probs = Normal(action_mean, action_std)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)

    def get_eval_action(self, x, eval_expert):  # the mean of one expert (argmax, or drawn), or of the combined Gaussian
        if self.num_experts == 1:
            return self.actor_mean(x)
        mix_logits, expert_means, expert_logstds = self.get_experts(x)
        if self.policy_type != "pmoe":
            return combine_experts(self.policy_type, mix_logits, expert_means, expert_logstds)[0]
        expert = mix_logits.argmax(-1) if eval_expert == "argmax" else sample_expert(mix_logits)
        return expert_means[torch.arange(len(x), device=x.device), expert]


def compute_gae(rewards, values, dones, next_value, next_done, args):
    """CleanRL's GAE (Schulman et al. 2015, arXiv 1506.02438, eq. 16); dones[t] = 1 when obs[t] starts a new
    episode. rewards, values, dones [T, N]; next_value, next_done [N] -> advantages, lambda-returns [T, N]"""
    advantages = torch.zeros_like(rewards)
    lastgaelam = 0
    for t in reversed(range(args.num_steps)):
        if t == args.num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
    returns = advantages + values
    return advantages, returns


def ppo_loss(agent, args, b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values, mb_inds):
    """CleanRL's minibatch loss: PPO (Schulman et al. 2017, arXiv 1707.06347) eq. 9 with the clipped surrogate of
    eq. 7, on the rows mb_inds of the flat batch, plus PMOE's losses on the same actor forward (agent.use_routing).
    -> loss, pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac, q_loss, route_loss"""
    mb_obs, mb_actions = b_obs[mb_inds], b_actions[mb_inds]
    # one actor forward for both losses: a second one in pmoe_losses cost a seventh of a K=5 minibatch step
    experts = agent.get_experts(mb_obs) if agent.use_routing else None
    _, newlogprob, entropy, newvalue = agent.get_action_and_value(mb_obs, mb_actions, experts)
    # for pmoe a ratio of mixture densities: its gradient reaches w and all K experts
    logratio = newlogprob - b_logprobs[mb_inds]
    ratio = logratio.exp()

    with torch.no_grad():
        # calculate approx_kl http://joschu.net/blog/kl-approx.html
        old_approx_kl = (-logratio).mean()
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()

    mb_advantages = b_advantages[mb_inds]
    if args.norm_adv:
        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

    # Policy loss
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

    # Value loss
    newvalue = newvalue.view(-1)
    if args.clip_vloss:
        v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
        v_clipped = b_values[mb_inds] + torch.clamp(
            newvalue - b_values[mb_inds],
            -args.clip_coef,
            args.clip_coef,
        )
        v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
        v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
        v_loss = 0.5 * v_loss_max.mean()
    else:
        v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

    entropy_loss = entropy.mean()
    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
    q_loss = route_loss = torch.zeros((), device=loss.device)
    if agent.use_routing:
        q_loss, route_loss = pmoe_losses(agent, experts, mb_obs, mb_actions, b_returns[mb_inds])
        loss = loss + args.q_coef * q_loss + args.route_coef * route_loss
    return loss, pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac, q_loss, route_loss


def route_loss_fn(mix_logits, expert_q_values):
    """PMOE's frequency approximate gradient: MSE(w(s), one_hot(argmax_k Q(s, a_k))), the mean over [B, K]
    (rlkit-pmoe PMOEsac.py::PMOESACTrainer.train_from_torch; co-author pmoe_ppo.py::PMOE_PPO.train_net). Its
    expected gradient 2(w_k - f_k(s)) moves w_k(s) to the frequency f_k(s) with which expert k scores best."""
    best = F.one_hot(expert_q_values.argmax(-1), mix_logits.shape[-1]).to(mix_logits.dtype)  # [B, K]
    return F.mse_loss(mix_logits.softmax(-1), best)


def pmoe_losses(agent, experts, mb_obs, mb_actions, mb_returns):
    """PMOE's two extra losses (co-author pmoe_ppo.py::PMOE_PPO.train_net). experts: get_experts(mb_obs); mb_obs
    [M, O], mb_actions [M, A], mb_returns [M] -> q_loss (Q(s, a) regressed onto the lambda-returns), route_loss
    (trains the router only: the router reads the observation, and the experts' samples carry no gradient)"""
    mix_logits, expert_means, expert_logstds = experts
    q_loss = F.mse_loss(agent.q_net(torch.cat([mb_obs, mb_actions], -1)).view(-1), mb_returns)
    with torch.no_grad():  # one fresh sample per expert, scored by Q: [M, K, A] -> [M, K]
        expert_actions = expert_means + expert_logstds.exp() * torch.randn_like(expert_means)
        obs_per_expert = mb_obs.unsqueeze(1).expand(-1, agent.num_experts, -1)  # row b is paired with row b: [M, K, O]
        expert_q = agent.q_net(torch.cat([obs_per_expert, expert_actions], -1)).squeeze(-1)
    return q_loss, route_loss_fn(mix_logits, expert_q)


def keep_outputs(compiled):
    """--cudagraphs: a CUDA graph's outputs live in memory that its next replay overwrites; return copies instead."""
    return lambda *inputs: tuple(x.clone() for x in compiled(*inputs))


def evaluate(agent, args, obs_rms, eval_expert, device):
    """--eval-episodes mean-action episodes, one env each (episode i from reset(seed=args.seed + i)), stepped in
    lockstep: one batched forward per step. Observations are normalised by hand as NormalizeObservation and the clip
    do, with the training statistics frozen (the fix for CleanRL issues #425/#532): the training env's other wrappers
    cost twice the MuJoCo step and evaluation needs none. torch's generator is forked: evaluating during training
    leaves the training draws as they were. obs_rms: {"mean", "var", "count"} -> returns."""
    envs = [gym.wrappers.FlattenObservation(gym.make(args.env_id)) for _ in range(args.eval_episodes)]
    mean, var = obs_rms["mean"].numpy(), obs_rms["var"].numpy()  # float32, as the wrapper keeps them
    low, high = envs[0].action_space.low, envs[0].action_space.high
    obs = np.stack([env.reset(seed=args.seed + i)[0] for i, env in enumerate(envs)])  # [N, O]
    returns, running = np.zeros(len(envs)), np.ones(len(envs), dtype=bool)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(args.seed)  # the sampled-expert evaluation gives the same returns from a saved model
        while running.any():
            x = np.clip(np.float32((obs - mean) / np.sqrt(var + 1e-8)), -10, 10)  # the wrappers' arithmetic [N, O]
            actions = agent.get_eval_action(torch.Tensor(x).to(device), eval_expert).cpu().numpy()  # [N, A]
            for i in np.flatnonzero(running):  # finished rows stay in the batch: the expert draws keep their order
                obs[i], reward, terminated, truncated, _ = envs[i].step(np.clip(actions[i], low, high))
                returns[i], running[i] = returns[i] + reward, not (terminated or truncated)
    return returns.tolist()  # bare MuJoCo envs hold no renderer: nothing to close


def log_evaluation(agent, args, obs_rms, writer, step, device):
    """Evaluate with the argmax and the sampled expert; log and return `eval/episodic_return_*` at `step`.
    One Gaussian (K=1, gating, mcp) acts with the same mean under both rules: one evaluation gives both."""
    means = {}
    for eval_expert in ("argmax", "sample") if agent.num_experts > 1 and agent.policy_type == "pmoe" else ("argmax",):
        returns = evaluate(agent, args, obs_rms, eval_expert, device)
        means[f"eval/episodic_return_{eval_expert}"] = float(np.mean(returns))
    means.setdefault("eval/episodic_return_sample", means["eval/episodic_return_argmax"])
    means["eval/episodic_return"] = means[f"eval/episodic_return_{args.eval_expert}"]
    for name, value in means.items():
        writer.add_scalar(name, value, step)
    return means


def main(args: Args) -> dict:
    args.batch_size = int(args.num_envs * args.num_steps)
    mujoco.set_mju_user_warning(mujoco_warning)
    validate(args)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    # CleanRL's Normal validates its arguments: ops and a host sync per call; a NaN is caught by the loss check below
    torch.distributions.Distribution.set_default_validate_args(False)

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    if args.eval_only:  # the env and the architecture come from the checkpoint, not from the CLI
        ckpt = torch.load(args.model_path, map_location="cpu", weights_only=True)
        for key in ("env_id", "gamma", "num_experts", "policy_type", "gradient_estimator"):
            setattr(args, key, ckpt["args"][key])

    # env setup
    # gymnasium 1.x: SAME_STEP autoreset keeps 0.29's semantics (the finished episode in infos["final_info"])
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name, args.gamma) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    assert isinstance(envs.single_action_space, gym.spaces.Box), "only continuous action space is supported"

    # Q-net and routing loss for PMOE with K > 1 only: K=1 is then CleanRL PPO, gating and mcp are plain PPO
    use_routing = args.policy_type == "pmoe" and args.gradient_estimator == "pmoe" and args.num_experts > 1
    agent = Agent(envs, args.num_experts, args.policy_type, use_routing).to(device)
    # fused: Adam's elementwise ops in one kernel, rounded differently in the last bit (--compile fuses its own)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=not args.compile)
    act, loss_fn, optimizer_step = agent.get_action_and_value, ppo_loss, optimizer.step
    if args.compile:  # LeanRL: the same functions, compiled at their first call; shapes never change, so only once
        mode = "reduce-overhead" if args.cudagraphs else None  # inductor's CUDA graphs
        act = torch.compile(torch.no_grad()(act), mode=mode)  # acting needs no graph
        loss_fn = torch.compile(loss_fn, mode=mode)
        optimizer_step = torch.compile(optimizer_step, mode=mode)
        if args.cudagraphs:  # graphs replay on the GPU: Adam's step counter must live there too (capturable)
            loss_fn = keep_outputs(loss_fn)
            optimizer.param_groups[0]["capturable"] = True
    if args.eval_only:
        agent.load_state_dict(ckpt["model"])
        args.num_iterations, obs_rms = 0, ckpt["obs_rms"]

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape).to(device)
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)
    rewards = torch.zeros((args.num_steps, args.num_envs)).to(device)
    dones = torch.zeros((args.num_steps, args.num_envs)).to(device)
    values = torch.zeros((args.num_steps, args.num_envs)).to(device)

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.Tensor(next_obs).to(device)
    next_done = torch.zeros(args.num_envs).to(device)
    episodic_returns, metrics = [], {}
    progress = tqdm(total=args.num_iterations * args.batch_size, unit="step", disable=args.eval_only)

    for iteration in range(1, args.num_iterations + 1):
        if args.eval_every and global_step % args.eval_every < args.batch_size:  # the eval curve, from step 0
            obs_rms = running_stats(find_wrapper(envs.envs[0], gym.wrappers.NormalizeObservation).obs_rms)
            log_evaluation(agent, args, obs_rms, writer, global_step, device)
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            lrnow = frac * args.learning_rate
            optimizer.param_groups[0]["lr"] = lrnow

        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic
            with torch.no_grad():
                action, logprob, _, value = act(next_obs)
                values[step] = value.flatten()
            actions[step] = action
            # for pmoe the mixture log-density log pi(a|s)
            logprobs[step] = logprob

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            next_done = np.logical_or(terminations, truncations)
            rewards[step] = torch.tensor(reward).to(device).view(-1)
            next_obs, next_done = torch.Tensor(next_obs).to(device), torch.Tensor(next_done).to(device)

            # gymnasium 1.x SAME_STEP: one batched dict of the finished episodes, masked by "_episode"
            if "final_info" in infos and "_episode" in infos["final_info"]:
                for i in np.nonzero(infos["final_info"]["_episode"])[0]:  # logged at the step the episode ends
                    episodic_returns.append(float(infos["final_info"]["episode"]["r"][i]))
                    writer.add_scalar("charts/episodic_return", infos["final_info"]["episode"]["r"][i], global_step)
                    writer.add_scalar("charts/episodic_length", infos["final_info"]["episode"]["l"][i], global_step)

        # bootstrap value if not done
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages, returns = compute_gae(rewards, values, dones, next_value, next_done, args)

        # flatten the batch
        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape((-1,) + envs.single_action_space.shape)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)

        # Optimizing the policy and value network
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                end = start + args.minibatch_size
                mb_inds = b_inds[start:end]

                loss, pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac, q_loss, route_loss = loss_fn(
                    agent, args, b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values, mb_inds
                )  # for pmoe the Q regression and the routing loss included
                clipfracs += [clipfrac.item()]
                if not torch.isfinite(loss):  # CPU: free, clipfrac.item() has synced already
                    raise SystemExit(f"error: non-finite loss at global_step {global_step}: lower --learning-rate")

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer_step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
        with torch.no_grad():  # routing diagnostics over the rollout
            mix_logits, expert_means, expert_logstds = agent.get_experts(b_obs)
            w = mix_logits.softmax(-1)  # [B, K]
            route_entropy = -(w * mix_logits.log_softmax(-1)).sum(-1).mean()
            # how far the experts are from their centre, in units of their std: near 0, Q cannot tell them apart
            deviations = (expert_means - expert_means.mean(1, keepdim=True)) / expert_logstds.exp()  # [B, K, A]

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        metrics = {
            "charts/learning_rate": optimizer.param_groups[0]["lr"],
            "losses/value_loss": v_loss.item(),
            "losses/policy_loss": pg_loss.item(),
            "losses/entropy": entropy_loss.item(),
            "losses/old_approx_kl": old_approx_kl.item(),
            "losses/approx_kl": approx_kl.item(),
            "losses/clipfrac": np.mean(clipfracs),
            "losses/explained_variance": explained_var,
            "losses/q_loss": q_loss.item(),
            "losses/route_loss": route_loss.item(),
            "charts/route_entropy": route_entropy.item(),
            "charts/expert_spread": deviations.pow(2).mean().sqrt().item(),
            "charts/SPS": int(global_step / (time.time() - start_time)),
        }
        for k, usage in enumerate(w.mean(0).tolist()):  # the mean routing weight of expert k over the rollout
            metrics[f"charts/expert_usage_{k}"] = usage
        for name, value in metrics.items():
            writer.add_scalar(name, value, global_step)
        progress.update(args.batch_size)
        last_return = episodic_returns[-1] if episodic_returns else None
        progress.set_postfix(episodic_return=last_return, SPS=metrics["charts/SPS"])
    progress.close()

    summary = dict(metrics, global_step=global_step, episodes=len(episodic_returns))
    summary["final_return"] = float(np.mean(episodic_returns[-10:])) if episodic_returns else float("nan")
    if not args.eval_only:  # evaluation normalises observations with sub-env 0's statistics
        obs_rms = running_stats(find_wrapper(envs.envs[0], gym.wrappers.NormalizeObservation).obs_rms)
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.cleanrl_model"
        # plain tensors and python scalars: loadable with torch.load(weights_only=True)
        checkpoint = {"model": agent.state_dict(), "args": vars(args), "obs_rms": obs_rms}
        torch.save(checkpoint, model_path + ".tmp")
        os.replace(model_path + ".tmp", model_path)  # atomic: a crash never leaves a half-written model
        print(f"model saved to {model_path}")
        summary["model_path"] = model_path

    summary.update(log_evaluation(agent, args, obs_rms, writer, global_step, device))
    print(", ".join(f"{key}={value:.2f}" for key, value in summary.items() if key.startswith("eval/")))

    envs.close()
    writer.close()
    if args.track and args.capture_video:  # wandb's monitor_gym hook does not handle gymnasium 1.x's RecordVideo
        wandb.save(f"videos/{run_name}/*.mp4")
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
