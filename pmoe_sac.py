"""PMOE-SAC: SAC with a probabilistic mixture-of-experts policy (Ren et al. 2021, arXiv 2104.09122).

A minimal diff of CleanRL's cleanrl/sac_continuous_action.py: `diff -w` against it shows the method; docs/pmoe_sac.md
explains each hunk. Official code: github.com/JieRen98/rlkit-pmoe (rlkit/torch/PMOEsac/).
  python pmoe_sac.py                                  # Hopper-v5, K=4, 20k steps (times: benchmarks/results_*.md)
  python pmoe_sac.py --num-experts 1                  # plain SAC on the same code path
  python pmoe_sac.py --gradient-estimator gumbel      # or reinforce; --policy-type gating|mcp: the MoE baselines
  python pmoe_sac.py --save-model                     # then: --eval-only --model-path runs/<run>/pmoe_sac.cleanrl_model
  python pmoe_sac.py --eval-every 5000 --label-samples 8   # an eval curve; k* ranked by 8 draws per expert
The diff: K tanh-Gaussian experts and a routing head; the actor update samples every expert, lets min(Q1, Q2) pick the
best one k*, trains k* alone with SAC's loss and regresses the routing weights onto one_hot(k*) (the "frequency
approximate gradient"). Also: gymnasium 1.x, an inlined replay buffer, a progress bar, saving, periodic and final
evaluation, and LeanRL's opt-in `--compile` (same update functions compiled; docs/pmoe_sac.md, Speed).
"""

import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from glob import glob
from types import SimpleNamespace
from typing import Literal, Optional

import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import tyro
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
    """torch.compile the update functions and the acting policy: same math, a compile at the first update"""
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
    """whether to save the weights and args to `runs/{run_name}/{exp_name}.cleanrl_model`"""
    eval_only: bool = False
    """skip training: only evaluate the `--model-path` file that `--save-model` wrote"""
    model_path: Optional[str] = None
    """the `.cleanrl_model` file that `--eval-only` evaluates"""
    eval_episodes: int = 10
    """the number of mean-action evaluation episodes per expert choice (`eval/episodic_return*`), after training"""
    eval_every: int = 0
    """also evaluate every this many steps, from step 0, logged at that step (0: only after training)"""

    # Algorithm specific arguments
    env_id: str = "Hopper-v5"
    """the environment id of the task"""
    total_timesteps: int = 20000
    """total timesteps of the experiments"""
    num_envs: int = 1
    """the number of parallel game environments"""
    buffer_size: int = int(1e6)
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient (default: 0.005)"""
    batch_size: int = 256
    """the batch size of sample from the reply memory"""
    learning_starts: int = 5000
    """timestep to start learning"""
    policy_lr: float = 3e-4
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q network network optimizer"""
    policy_frequency: int = 2
    """the frequency of training policy (delayed)"""
    target_network_frequency: int = 1  # Denis Yarats' implementation delays this by 2.
    """the frequency of updates for the target nerworks"""
    alpha: float = 0.2
    """Entropy regularization coefficient."""
    autotune: bool = True
    """automatic tuning of the entropy coefficient"""

    # PMOE specific arguments
    num_experts: int = 4
    """K, the number of experts (1 = plain SAC on the same code path)"""
    policy_type: Literal["pmoe", "gating", "mcp"] = "pmoe"
    """pmoe: a mixture of the K experts; gating / mcp: the MoE baselines, one Gaussian composed from them"""
    gradient_estimator: Literal["pmoe", "gumbel", "reinforce"] = "pmoe"
    """how the expert choice learns: PMOE's frequency loss, or the Gumbel-Softmax / score-ratio baselines"""
    route_coef: float = 1.0
    """weight of the routing loss (pmoe: MSE to one_hot(k*); reinforce: score-function loss)"""
    gumbel_tau: float = 1.0
    """the Gumbel-Softmax temperature (gumbel only)"""
    eval_expert: Literal["sample", "argmax"] = "sample"
    """the expert whose mean acts in `eval/episodic_return`: sampled from w(s) (official code) or argmax w(s)"""
    label_samples: int = 1
    """M: rank the experts by the mean min(Q1, Q2) of M draws each; draw 1 is the trained candidate (1: official)"""


def mujoco_warning(message):
    """MuJoCo 4 deprecates half_cheetah.xml's `settotalmass`: drop that one message, forward the rest as Python
    warnings. Any Python handler also stops MuJoCo's default one, which writes MUJOCO_LOG.TXT into the working dir."""
    if "settotalmass" not in message:
        warnings.warn(f"MuJoCo: {message}", stacklevel=2)


mujoco.set_mju_user_warning(mujoco_warning)


def make_env(env_id, seed, idx, capture_video, run_name):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed)
        return env

    return thunk


def validate(args):
    """Bad input: one line on stderr naming the flag and the fix, exit code 2, no traceback."""

    def check(ok, flag, fix):
        if not ok:
            print(f"error: {flag}: {fix}", file=sys.stderr)
            raise SystemExit(2)

    if args.eval_only or args.model_path is not None:
        check(args.eval_only, "--model-path", "is read only with --eval-only; add --eval-only")
        ok = args.model_path is not None and os.path.isfile(args.model_path)
        return check(ok, "--model-path", f"no file {args.model_path!r}; use a --save-model file")
    cuda_graphs_ok = args.compile and args.cuda and torch.cuda.is_available()
    check(cuda_graphs_ok or not args.cudagraphs, "--cudagraphs", "needs --compile and a CUDA GPU; on a CPU drop it")
    check(args.label_samples >= 1, "--label-samples", f"got {args.label_samples}; use 1 (official) or more")
    check(args.num_experts >= 1, "--num-experts", f"got {args.num_experts}; use 1 (plain SAC) or more")
    check(args.batch_size <= args.buffer_size, "--batch-size", f"{args.batch_size} > --buffer-size; lower it")
    check(0 <= args.learning_starts < args.total_timesteps, "--learning-starts", "use 0 <= it < --total-timesteps")
    try:
        env = gym.make(args.env_id)
    except (gym.error.Error, ImportError) as e:  # unknown name, version or namespace
        check(False, "--env-id", f"cannot make {args.env_id!r} ({str(e).splitlines()[0]}); try Hopper-v5")
    env.close()
    check(isinstance(env.action_space, gym.spaces.Box), "--env-id", f"{args.env_id}'s actions are discrete; use a Box")


class ReplayBuffer:
    """Uniform replay on numpy ring buffers with the signature of the SB3 buffer CleanRL imports (one file here)."""

    def __init__(
        self, buffer_size, observation_space, action_space, device, n_envs=1, handle_timeout_termination=False
    ):
        assert not handle_timeout_termination, "dones are terminations; truncations bootstrap"
        obs_shape, act_shape = observation_space.shape, action_space.shape
        dims = dict(observations=obs_shape, next_observations=obs_shape, actions=act_shape, rewards=(), dones=())
        self.data = {key: np.zeros((buffer_size, int(np.prod(dim))), np.float32) for key, dim in dims.items()}
        self.buffer_size, self.device, self.pos, self.size = buffer_size, device, 0, 0

    def add(self, obs, next_obs, action, reward, done, infos):
        """One row per sub-env."""
        rows = dict(observations=obs, next_observations=next_obs, actions=action, rewards=reward, dones=done)
        idx = (self.pos + np.arange(len(obs))) % self.buffer_size
        for key, value in rows.items():
            self.data[key][idx] = np.asarray(value).reshape(len(idx), -1)
        self.pos, self.size = (self.pos + len(idx)) % self.buffer_size, min(self.size + len(idx), self.buffer_size)

    def sample(self, batch_size):
        idx = np.random.randint(0, self.size, size=batch_size)
        return SimpleNamespace(**{key: torch.as_tensor(x[idx], device=self.device) for key, x in self.data.items()})


# ALGO LOGIC: initialize agent here:
class SoftQNetwork(nn.Module):
    def __init__(self, env):
        super().__init__()
        self.fc1 = nn.Linear(
            np.array(env.single_observation_space.shape).prod() + np.prod(env.single_action_space.shape),
            256,
        )
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


LOG_STD_MAX = 2
LOG_STD_MIN = -5


def pick(x, idx):
    """Row-wise gather: x [B, K, ...], idx [B] -> x[b, idx[b]] of shape [B, ...]."""
    return x[torch.arange(x.shape[0], device=x.device), idx]


def sample_expert(mix_logits):
    """z ~ Cat(softmax(mix_logits)) by Gumbel-max, [B, K] -> [B]. Categorical would validate w (a host sync)."""
    return (mix_logits - torch.empty_like(mix_logits).exponential_().log()).argmax(-1)


def tanh_gaussian_log_prob(x_t, mean, log_std, action_scale):
    """log pi_k(a|s) of a = scale * tanh(x_t) + bias, x_t ~ N(mean, exp(log_std)^2), summed over A: [..., A] -> [...]
    (CleanRL's Actor.get_action lines; official rlkit/torch/distributions.py::TanhNormal.log_prob)."""
    log_prob = torch.distributions.Normal(mean, log_std.exp()).log_prob(x_t)
    return (log_prob - torch.log(action_scale * (1 - torch.tanh(x_t).pow(2)) + 1e-6)).sum(-1)


def mixture_log_prob(x_t, mix_logits, mean, log_std, action_scale):
    """log pi(a|s) = log sum_k w_k pi_k(a|s), the GMM policy of arXiv 2104.09122: x_t [..., A], mix_logits [..., K],
    mean, log_std [..., K, A] -> [...]. logsumexp over log w_k + log pi_k: no underflow in high-dimensional A."""
    log_probs = tanh_gaussian_log_prob(x_t.unsqueeze(-2), mean, log_std, action_scale)  # [..., K]
    return torch.logsumexp(F.log_softmax(mix_logits, -1) + log_probs, -1)


def gating_gaussian(w, mean, log_std):
    """Gating MoE baseline: one Gaussian whose mean and log-std are the w-weighted sums over the experts.
    w [B, K], mean, log_std [B, K, A] -> mean, log_std [B, 1, A]."""
    w = w.unsqueeze(-1)  # [B, K, 1]
    return (w * mean).sum(1, keepdim=True), (w * log_std).sum(1, keepdim=True)


def mcp_gaussian(w, mean, log_std):
    """MCP baseline (Peng et al. 2019, arXiv 1905.09808): the normalised product prod_k N(mu_k, sigma_k^2)^w_k is
    a Gaussian with precision sum_k w_k / sigma_k^2. w [B, K], mean, log_std [B, K, A] -> mean, log_std [B, 1, A]."""
    weighted_precision = w.unsqueeze(-1) * torch.exp(-2 * log_std)  # [B, K, A]
    precision = weighted_precision.sum(1, keepdim=True)  # [B, 1, A]
    return (weighted_precision * mean).sum(1, keepdim=True) / precision, -0.5 * torch.log(precision)


class Actor(nn.Module):
    def __init__(self, env, num_experts=1, policy_type="pmoe"):
        super().__init__()
        self.num_experts, self.policy_type = num_experts, policy_type
        self.fc1 = nn.Linear(np.array(env.single_observation_space.shape).prod(), 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc_mean = nn.Linear(256, num_experts * np.prod(env.single_action_space.shape))
        self.fc_logstd = nn.Linear(256, num_experts * np.prod(env.single_action_space.shape))
        self.fc_route = nn.Linear(256, num_experts)  # the routing head: mixing logits g(s), w(s) = softmax(g(s))
        # action rescaling
        high, low = env.single_action_space.high, env.single_action_space.low
        self.register_buffer("action_scale", torch.tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, x):
        """x [B, O] -> mixing logits [B, K], expert means [B, K, A], expert log-stds [B, K, A]."""
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        mean = self.fc_mean(x).view(x.shape[0], self.num_experts, -1)  # rows [k*A, (k+1)*A) belong to expert k
        log_std = self.fc_logstd(x).view(x.shape[0], self.num_experts, -1)
        log_std = torch.tanh(log_std)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)  # From SpinUp / Denis Yarats
        # detached features, as official TanhPMOEGaussianPolicy.forward: the routing loss trains the routing head only
        mix_logits = self.fc_route(x.detach())
        if self.policy_type != "pmoe":  # gating, mcp: one Gaussian composed from the K experts (a 1-expert mixture)
            compose = gating_gaussian if self.policy_type == "gating" else mcp_gaussian
            mean, log_std = compose(F.softmax(mix_logits, -1), mean, log_std)
            mix_logits = torch.zeros_like(mix_logits[:, :1])
        return mix_logits, mean, log_std

    def squash(self, x_t):
        return torch.tanh(x_t) * self.action_scale + self.action_bias

    def get_action(self, x, mixture_logp=False):
        """Act with one expert z ~ Cat(w(s)) per row (official policies.py::TanhPMOEGaussianPolicy.get_actions).
        Returns the action [B, A], its log-prob [B, 1] (z's own density, or the mixture's), z's mean action, z [B]."""
        mix_logits, means, log_stds = self(x)
        z = sample_expert(mix_logits)
        mean, log_std = pick(means, z), pick(log_stds, z)  # [B, A]
        x_t = torch.distributions.Normal(mean, log_std.exp()).rsample()  # for reparameterization trick
        action = self.squash(x_t)
        log_prob = tanh_gaussian_log_prob(x_t, mean, log_std, self.action_scale).unsqueeze(1)  # CleanRL's lines
        if mixture_logp:  # the gumbel and reinforce baselines use the mixture's density
            log_prob = mixture_log_prob(x_t, mix_logits, means, log_stds, self.action_scale).unsqueeze(1)
        mean = torch.tanh(mean) * self.action_scale + self.action_bias
        return action, log_prob, mean, z


def min_q(qf1, qf2, obs, actions):
    """min(Q1, Q2) of K actions per state in one pass over B*K rows: obs [B, O], actions [B, K, A] -> [B, K]."""
    B, K, A = actions.shape
    obs_k = obs.unsqueeze(1).expand(B, K, obs.shape[-1]).reshape(B * K, -1)  # row b*K + k is state b
    actions = actions.reshape(B * K, A)
    return torch.min(qf1(obs_k, actions), qf2(obs_k, actions)).view(B, K)


def pmoe_estimator(actor, qf1, qf2, obs, label_samples=1):
    """PMOE's frequency approximate gradient (official PMOEsac.py::PMOESACTrainer.train_from_torch). Sample every
    expert, let min(Q1, Q2) pick the best k*, train k* alone with SAC's loss, regress w(s) onto one_hot(k*).
    label_samples = M > 1 ranks by the sum (so the mean) over the candidate and M-1 more draws: a less noisy label.
    Returns the action to train [B, A], its log-prob [B, 1], the routing loss and k* [B]."""
    mix_logits, means, log_stds = actor(obs)  # [B, K], [B, K, A], [B, K, A]
    x_all = torch.distributions.Normal(means, log_stds.exp()).rsample()  # one sample per expert [B, K, A]
    with torch.no_grad():  # k* is a label: the scores need no graph; one expert (K=1, gating, mcp) needs no scores
        scores = min_q(qf1, qf2, obs, actor.squash(x_all)) if means.shape[1] > 1 else torch.zeros_like(mix_logits)
        for _ in range(label_samples - 1 if means.shape[1] > 1 else 0):  # M = 1 draws nothing more: the official rule
            scores += min_q(qf1, qf2, obs, actor.squash(torch.normal(means, log_stds.exp())))
    k = scores.argmax(-1)  # [B]
    x_t = pick(x_all, k)  # [B, A]: gradients reach expert k*'s head rows (and the trunk) only
    log_pi = tanh_gaussian_log_prob(x_t, pick(means, k), pick(log_stds, k), actor.action_scale)  # k*'s own density
    # E[one_hot(k*) | s] = P(k* = k | s): the MSE's gradient moves w(s) toward how often each expert is the best
    route_loss = F.mse_loss(F.softmax(mix_logits, -1), F.one_hot(k, mix_logits.shape[1]).float())
    return actor.squash(x_t), log_pi.unsqueeze(1), route_loss, k


def gumbel_estimator(actor, obs, tau):
    """Gumbel-Softmax baseline (Jang et al. 2017, arXiv 1611.01144), straight-through: the forward pass acts with
    exactly one expert k; the backward pass reaches every routing logit through the relaxed weights y. No route loss."""
    mix_logits, means, log_stds = actor(obs)
    x_all = torch.distributions.Normal(means, log_stds.exp()).rsample()  # [B, K, A]
    gumbels = -torch.empty_like(mix_logits).exponential_().log()  # Gumbel(0, 1) noise [B, K]
    y = F.softmax((F.log_softmax(mix_logits, -1) + gumbels) / tau, -1)  # relaxed one-hot [B, K]
    k = y.argmax(-1)
    y_hard = F.one_hot(k, y.shape[1]).to(y) - y.detach() + y  # forward: one_hot(k); backward: d/dy
    x_t = (y_hard.unsqueeze(-1) * x_all).sum(1)  # [B, A]
    log_pi = mixture_log_prob(x_t, mix_logits, means, log_stds, actor.action_scale)
    return actor.squash(x_t), log_pi.unsqueeze(1), torch.zeros((), device=obs.device), k


def reinforce_estimator(actor, qf1, qf2, obs, alpha):
    """Score-ratio baseline: z ~ Cat(w(s)) learns by REINFORCE with the soft value of each expert's own sample
    (mean over K as baseline); the action is pathwise inside expert z. Log-probs are the mixture's density."""
    mix_logits, means, log_stds = actor(obs)
    x_all = torch.distributions.Normal(means, log_stds.exp()).rsample()  # [B, K, A]
    k = sample_expert(mix_logits)  # no gradient through the draw
    x_t = pick(x_all, k)
    log_pi = mixture_log_prob(x_t, mix_logits, means, log_stds, actor.action_scale)
    with torch.no_grad():
        log_pi_all = mixture_log_prob(x_all, mix_logits[:, None], means[:, None], log_stds[:, None], actor.action_scale)
        v_all = min_q(qf1, qf2, obs, actor.squash(x_all)) - alpha * log_pi_all  # soft values [B, K]
    advantage = pick(v_all, k) - v_all.mean(-1)  # the baseline does not depend on z: still unbiased
    route_loss = -(pick(F.log_softmax(mix_logits, -1), k) * advantage).mean()
    return actor.squash(x_t), log_pi.unsqueeze(1), route_loss, k


def keep_outputs(compiled):
    """--cudagraphs: a CUDA graph's outputs live in memory that its next replay overwrites; return copies instead."""
    return lambda *inputs: tuple(x.clone() for x in compiled(*inputs))


@torch.no_grad()
def evaluate(actor, env_id, eval_episodes, seed, eval_expert, device):
    """Mean-action evaluation: each step, the mean action of expert argmax w(s) or of z ~ Cat(w(s)) drawn anew (official
    MakeDeterministic drops the Gaussian noise, not the expert draw). Episode i: own env, reset(seed=seed + i); all in
    lockstep, one batched forward per step. The forked, seeded generator repeats draws; training's stay as they were."""
    envs = [gym.make(env_id) for _ in range(eval_episodes)]
    obs = np.array([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])  # [N, O]
    returns, running = np.zeros(eval_episodes), np.ones(eval_episodes, dtype=bool)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        while running.any():  # finished rows stay in the batch: the expert draws keep their order
            mix_logits, means, _ = actor(torch.tensor(obs, dtype=torch.float32, device=device))
            z = sample_expert(mix_logits) if eval_expert == "sample" else mix_logits.argmax(-1)
            actions = actor.squash(pick(means, z)).cpu().numpy()  # [N, A]
            for i in np.flatnonzero(running):
                obs[i], reward, termination, truncation, _ = envs[i].step(actions[i])
                returns[i], running[i] = returns[i] + reward, not (termination or truncation)
    return returns.tolist()  # bare MuJoCo envs hold no renderer: nothing to close


def evaluate_saved(args, device):
    """--eval-only: rebuild the actor from the saved args, load its weights, evaluate with the current flags."""
    checkpoint = torch.load(args.model_path, map_location=device, weights_only=True)
    saved = Args(**checkpoint["args"])
    envs = gym.vector.SyncVectorEnv([make_env(saved.env_id, args.seed, 0, False, "")])  # for the spaces
    actor = Actor(envs, saved.num_experts, saved.policy_type).to(device)
    actor.load_state_dict(checkpoint["actor"])
    envs.close()
    returns = evaluate(actor, saved.env_id, args.eval_episodes, args.seed, args.eval_expert, device)
    print(f"eval/episodic_return={np.mean(returns):.1f} over {len(returns)} episodes ({args.eval_expert} expert)")
    return {"eval_return": float(np.mean(returns)), "eval_returns": returns}


def main(args: Args) -> dict:
    validate(args)
    # CleanRL's Normal validates its arguments: a host sync, and a ValueError on NaN before our clear message below
    torch.distributions.Distribution.set_default_validate_args(False)
    if args.eval_only:
        return evaluate_saved(args, torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu"))
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

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup: SAME_STEP resets a sub-env inside the step that ends its episode (gymnasium 0.29's semantics)
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, args.seed + i, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    assert isinstance(envs.single_action_space, gym.spaces.Box), "only continuous action space is supported"

    actor = Actor(envs, args.num_experts, args.policy_type).to(device)
    qf1 = SoftQNetwork(envs).to(device)
    qf2 = SoftQNetwork(envs).to(device)
    qf1_target = SoftQNetwork(envs).to(device)
    qf2_target = SoftQNetwork(envs).to(device)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    # fused: Adam's elementwise ops in one kernel, rounded differently in the last bit (--compile fuses its own)
    q_optimizer = optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr, fused=not args.compile)
    actor_optimizer = optim.Adam(list(actor.parameters()), lr=args.policy_lr, fused=not args.compile)

    # Automatic entropy tuning
    if args.autotune:
        target_entropy = -torch.prod(torch.Tensor(envs.single_action_space.shape).to(device)).item()
        log_alpha = torch.zeros(1, requires_grad=True, device=device)
        alpha = log_alpha.exp().item()
        a_optimizer = optim.Adam([log_alpha], lr=args.q_lr, fused=not args.compile)
    else:
        alpha = args.alpha

    rb = ReplayBuffer(
        args.buffer_size,
        envs.single_observation_space,
        envs.single_action_space,
        device,
        n_envs=args.num_envs,
        handle_timeout_termination=False,
    )
    mixture_logp = args.gradient_estimator != "pmoe"  # the baselines' target uses the mixture density, PMOE z's own
    usage = torch.zeros(args.num_experts, device=device)  # how often each expert acted since the last log
    episodic_returns, postfix, qf_loss, actor_loss, route_loss, alpha_loss = [], {}, None, None, torch.zeros(()), None
    start_time = learn_start_time = time.time()

    # ALGO LOGIC: one update as two functions, so that --compile can compile them; eager runs them as written
    def update_critic(data, alpha):
        with torch.no_grad():
            next_state_actions, next_state_log_pi, _, _ = actor.get_action(data.next_observations, mixture_logp)
            qf1_next_target = qf1_target(data.next_observations, next_state_actions)
            qf2_next_target = qf2_target(data.next_observations, next_state_actions)
            min_qf_next_target = (torch.min(qf1_next_target, qf2_next_target) - alpha * next_state_log_pi).view(-1)
            next_q_value = data.rewards.flatten() + (1 - data.dones.flatten()) * args.gamma * min_qf_next_target

        qf1_a_values = qf1(data.observations, data.actions).view(-1)
        qf2_a_values = qf2(data.observations, data.actions).view(-1)
        qf1_loss = F.mse_loss(qf1_a_values, next_q_value)
        qf2_loss = F.mse_loss(qf2_a_values, next_q_value)
        qf_loss = qf1_loss + qf2_loss

        # optimize the model
        q_optimizer.zero_grad()
        qf_loss.backward()
        q_optimizer.step()
        return qf1_a_values, qf2_a_values, qf1_loss, qf2_loss, qf_loss

    def update_actor(obs, alpha):
        if args.gradient_estimator == "pmoe":
            pi, log_pi, route_loss, k_star = pmoe_estimator(actor, qf1, qf2, obs, args.label_samples)
        elif args.gradient_estimator == "gumbel":
            pi, log_pi, route_loss, k_star = gumbel_estimator(actor, obs, args.gumbel_tau)
        else:
            pi, log_pi, route_loss, k_star = reinforce_estimator(actor, qf1, qf2, obs, alpha)
        qf1_pi = qf1(obs, pi)
        qf2_pi = qf2(obs, pi)
        min_qf_pi = torch.min(qf1_pi, qf2_pi)
        actor_loss = ((alpha * log_pi) - min_qf_pi).mean()

        actor_optimizer.zero_grad()
        # only the actor's gradients: the critics' would be zeroed unused before their next step (CleanRL computes them)
        (actor_loss + args.route_coef * route_loss).backward(inputs=list(actor.parameters()))
        actor_optimizer.step()
        return actor_loss, route_loss, log_pi, k_star

    def log_evaluation(step):  # the argmax and the sampled expert, then the --eval-expert one under the plain tag
        means = {}
        for mode in ("argmax", "sample"):  # one Gaussian (K=1, gating, mcp) acts alike under both: evaluated once
            if mode == "argmax" or (args.num_experts > 1 and args.policy_type == "pmoe"):
                means[mode] = float(np.mean(evaluate(actor, args.env_id, args.eval_episodes, args.seed, mode, device)))
            writer.add_scalar(f"eval/episodic_return_{mode}", means.setdefault(mode, means["argmax"]), step)
        writer.add_scalar("eval/episodic_return", means[args.eval_expert], step)
        return means

    policy = actor.get_action
    if args.compile:  # LeanRL: the same functions, compiled at their first call; shapes never change, so only once
        mode = "reduce-overhead" if args.cudagraphs else None  # inductor's CUDA graphs
        update_critic, update_actor = torch.compile(update_critic, mode=mode), torch.compile(update_actor, mode=mode)
        if args.cudagraphs:  # graphs replay on the GPU: Adam's step counters must live there too (capturable)
            update_critic, update_actor = keep_outputs(update_critic), keep_outputs(update_actor)
            q_optimizer.param_groups[0]["capturable"] = actor_optimizer.param_groups[0]["capturable"] = True
        policy = torch.compile(torch.no_grad()(actor.get_action), mode=mode)  # acting needs no graph
        alpha = torch.full((1,), alpha, device=device)  # a Python float would be baked into the graphs

    # TRY NOT TO MODIFY: start the game
    obs, _ = envs.reset(seed=args.seed)
    progress = tqdm(range(args.total_timesteps), desc=run_name, unit="step", mininterval=1.0)
    for global_step in progress:
        if global_step == args.learning_starts:
            learn_start_time = time.time()  # CleanRL's SPS includes the random warm-up, which is cheap
        if args.eval_every and global_step % args.eval_every == 0 and args.eval_episodes > 0:  # the eval curve
            postfix["eval"] = f"{log_evaluation(global_step)[args.eval_expert]:.1f}"  # after global_step env steps
        # ALGO LOGIC: put action logic here
        if global_step < args.learning_starts:
            actions = np.array([envs.single_action_space.sample() for _ in range(envs.num_envs)])
        else:
            actions, _, _, z = policy(torch.Tensor(obs).to(device))
            usage += torch.bincount(z, minlength=args.num_experts)
            actions = actions.detach().cpu().numpy()

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)

        # TRY NOT TO MODIFY: record rewards for plotting purposes (gymnasium 1.x, SAME_STEP: a batched "final_info")
        if "final_info" in infos and "_episode" in infos["final_info"]:
            for i in np.nonzero(infos["final_info"]["_episode"])[0]:
                episodic_returns.append(float(infos["final_info"]["episode"]["r"][i]))
                writer.add_scalar("charts/episodic_return", infos["final_info"]["episode"]["r"][i], global_step)
                writer.add_scalar("charts/episodic_length", infos["final_info"]["episode"]["l"][i], global_step)
                postfix["episodic_return"] = f"{episodic_returns[-1]:.1f}"
                progress.set_postfix(postfix, refresh=False)

        # TRY NOT TO MODIFY: save data to reply buffer; a truncated episode's last obs is in infos["final_obs"]
        real_next_obs = next_obs.copy()
        for idx, trunc in enumerate(truncations):
            if trunc:
                real_next_obs[idx] = infos["final_obs"][idx]
        rb.add(obs, real_next_obs, actions, rewards, terminations, infos)

        # TRY NOT TO MODIFY: CRUCIAL step easy to overlook
        obs = next_obs

        # ALGO LOGIC: training.
        if global_step > args.learning_starts:
            data = rb.sample(args.batch_size)
            qf1_a_values, qf2_a_values, qf1_loss, qf2_loss, qf_loss = update_critic(data, alpha)

            if global_step % args.policy_frequency == 0:  # TD 3 Delayed update support
                # compensate for the delay by doing 'actor_update_interval' instead of 1
                for _ in range(args.policy_frequency):
                    actor_loss, route_loss, log_pi, k_star = update_actor(data.observations, alpha)

                    if args.autotune:  # on the trained action's log-prob, as the official code (PMOE: k*'s own)
                        alpha_loss = (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()

                        a_optimizer.zero_grad()
                        alpha_loss.backward()
                        a_optimizer.step()
                        # .item() waits for the update to finish (a host sync); --compile keeps alpha a tensor
                        alpha = log_alpha.detach().exp() if args.compile else log_alpha.exp().item()

            # update the target networks: target + tau * (critic - target) in place, one op per tensor (LeanRL's lerp_)
            if global_step % args.target_network_frequency == 0:
                for param, target_param in zip(qf1.parameters(), qf1_target.parameters()):
                    target_param.data.lerp_(param.data, args.tau)
                for param, target_param in zip(qf2.parameters(), qf2_target.parameters()):
                    target_param.data.lerp_(param.data, args.tau)

            if global_step % 100 == 0:
                if not math.isfinite(qf_loss.item() + actor_loss.item() + route_loss.item() + alpha):
                    raise SystemExit(
                        f"error: non-finite loss at global_step={global_step}: the run diverged; "
                        "lower --q-lr / --policy-lr or try another --seed"
                    )
                writer.add_scalar("losses/qf1_values", qf1_a_values.mean().item(), global_step)
                writer.add_scalar("losses/qf2_values", qf2_a_values.mean().item(), global_step)
                writer.add_scalar("losses/qf1_loss", qf1_loss.item(), global_step)
                writer.add_scalar("losses/qf2_loss", qf2_loss.item(), global_step)
                writer.add_scalar("losses/qf_loss", qf_loss.item() / 2.0, global_step)
                writer.add_scalar("losses/actor_loss", actor_loss.item(), global_step)
                writer.add_scalar("losses/alpha", alpha, global_step)
                writer.add_scalar("losses/route_loss", route_loss.item(), global_step)
                if args.policy_type == "pmoe":  # the routing weights w(s), the acting experts and the argmax k*
                    w = F.softmax(actor(data.observations)[0], -1).detach()  # [B, K]
                    route_entropy = -(w * w.clamp_min(1e-12).log()).sum(-1).mean()
                    writer.add_scalar("charts/route_entropy", route_entropy.item(), global_step)
                    best_frac = torch.bincount(k_star, minlength=args.num_experts) / len(k_star)
                    usage_frac = usage / usage.sum().clamp_min(1)  # the experts that acted since the last log
                    for k in range(args.num_experts):
                        writer.add_scalar(f"charts/expert_usage_{k}", usage_frac[k].item(), global_step)
                        writer.add_scalar(f"charts/best_expert_frac_{k}", best_frac[k].item(), global_step)
                usage.zero_()
                sps_learning = int((global_step - args.learning_starts) / (time.time() - learn_start_time))
                postfix["SPS"] = int(global_step / (time.time() - start_time))
                progress.set_postfix(postfix, refresh=False)
                writer.add_scalar("charts/SPS", postfix["SPS"], global_step)
                writer.add_scalar("charts/SPS_after_learning_starts", sps_learning, global_step)
                if args.autotune:
                    writer.add_scalar("losses/alpha_loss", alpha_loss.item(), global_step)

    end_time = time.time()
    envs.close()
    progress.close()
    if args.track and args.capture_video:  # wandb's monitor_gym does not work with gymnasium 1.x' RecordVideo
        for video in sorted(glob(f"videos/{run_name}/*.mp4")):
            wandb.log({"videos": wandb.Video(video)})
    model_path = f"runs/{run_name}/{args.exp_name}.cleanrl_model" if args.save_model else None
    if args.save_model:  # weights and args, to a temp file then renamed: a crash never leaves half a file
        checkpoint = dict(actor=actor.state_dict(), qf1=qf1.state_dict(), qf2=qf2.state_dict(), args=vars(args))
        checkpoint["replay_states"] = rb.sample(1000).observations  # uniform replay states, for rl_diagnose.py
        torch.save(checkpoint, model_path + ".tmp")
        os.replace(model_path + ".tmp", model_path)
        print(f"model saved to {model_path}")
    eval_means = dict(argmax=None, sample=None)  # after training, at step total_timesteps: the eval curve's last point
    if args.eval_episodes > 0:
        eval_means = log_evaluation(args.total_timesteps)
        print(f"eval/episodic_return over {args.eval_episodes} episodes: {eval_means} (argmax / sampled expert)")
    writer.close()
    return dict(
        final_return=float(np.mean(episodic_returns[-10:])) if episodic_returns else None,  # last 10 episodes
        episodes=len(episodic_returns),
        eval_return=eval_means[args.eval_expert],
        eval_return_argmax=eval_means["argmax"],
        eval_return_sample=eval_means["sample"],
        sps=args.total_timesteps / (end_time - start_time),
        sps_after_learning_starts=(args.total_timesteps - args.learning_starts) / (end_time - learn_start_time),
        model_path=model_path,
        qf_loss=None if qf_loss is None else qf_loss.item(),
        actor_loss=None if actor_loss is None else actor_loss.item(),
        route_loss=route_loss.item(),
        alpha=float(alpha),
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
