"""PMOE-SAC: SAC with a probabilistic mixture-of-experts policy (Ren et al. 2021, arXiv 2104.09122).

A minimal diff of CleanRL's sac_continuous_action.py; the long explanations are in docs/pmoe_sac.md.
  python pmoe_sac.py                  # HalfCheetah-v5, K=4, 20k steps: minutes on a laptop CPU
  python pmoe_sac.py --total-timesteps 1000000  # CleanRL's and the paper's budget (~7 h on one CPU core; use a GPU)
  python pmoe_sac.py --num-experts 1  # plain SAC on the same code path
  python pmoe_sac.py --save-model     # later: python pmoe_sac.py --model-path runs/<run>/pmoe_sac.cleanrl_model
The diff: a mixture of K tanh-Gaussian experts, routed from detached trunk features; the actor update scores one
sample per expert with min(Q1, Q2), trains the best expert k* only and regresses the routing weights onto one_hot(k*)
("frequency approximate gradient"); --gradient-estimator gumbel|reinforce baselines; gymnasium 1.x; save and eval.
"""

import copy
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be enabled by default"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "cleanRL"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    save_model: bool = False
    """whether to save the weights and args to `runs/{run_name}/{exp_name}.cleanrl_model`"""
    model_path: Optional[str] = None
    """skip training: only evaluate this `.cleanrl_model` file written by `--save-model`"""
    eval_episodes: int = 10
    """the number of deterministic evaluation episodes (`eval/episodic_return`) at the end"""
    # Algorithm specific arguments
    env_id: str = "HalfCheetah-v5"
    """the environment id of the task"""
    total_timesteps: int = 20000
    """total timesteps of the experiments (CleanRL: 1000000; 20000 keeps the default run to minutes on a CPU)"""
    num_envs: int = 1
    """the number of parallel game environments"""
    buffer_size: int = 1000000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient"""
    batch_size: int = 256
    """the batch size of sample from the replay memory"""
    learning_starts: int = 5000
    """timestep to start learning (uniform-random actions before it)"""
    policy_lr: float = 3e-4
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q network optimizer (and of alpha, as CleanRL)"""
    policy_frequency: int = 2
    """the frequency of training policy (delayed)"""
    target_network_frequency: int = 1
    """the frequency of updates for the target networks"""
    alpha: float = 0.2
    """entropy regularization coefficient"""
    autotune: bool = True
    """automatic tuning of the entropy coefficient"""
    hidden_dim: int = 256
    """the width of the two hidden layers of the actor and of each critic"""
    # PMOE specific arguments
    num_experts: int = 4
    """K, the number of mixture experts (1 = plain SAC on the same code path)"""
    gradient_estimator: Literal["pmoe", "gumbel", "reinforce"] = "pmoe"
    """how the expert choice learns: PMOE frequency loss, Gumbel-Softmax, or score-ratio (docs/pmoe_sac.md)"""
    route_coef: float = 1.0
    """weight of the routing loss (pmoe: MSE to one_hot(k*); reinforce: score-function loss)"""
    gumbel_tau: float = 1.0
    """the Gumbel-Softmax temperature (gumbel only)"""
    eval_expert: Literal["sample", "argmax_w", "argmax_q"] = "sample"
    """expert whose mean acts at evaluation: sampled from w (official code), argmax w, or argmax min-Q"""


def make_env(env_id, seed):  # CleanRL's capture_video is left out: RecordVideo needs moviepy, not in requirements.txt
    def thunk():
        env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)  # per sub-env: correct under any autoreset mode
        env.action_space.seed(seed)
        return env

    return thunk


def validate(args):
    """Bad input: one line on stderr naming the flag and the fix, exit code 2, no traceback."""

    def check(ok, flag, fix):
        if not ok:
            print(f"error: {flag}: {fix}", file=sys.stderr)
            raise SystemExit(2)

    if args.model_path is not None:
        return check(
            os.path.isfile(args.model_path), "--model-path", f"no file {args.model_path!r}; use a --save-model file"
        )
    check(args.num_experts >= 1, "--num-experts", f"got {args.num_experts}; use 1 (plain SAC) or more")
    check(args.batch_size <= args.buffer_size, "--batch-size", f"{args.batch_size} > --buffer-size; lower it")
    check(args.learning_starts <= args.total_timesteps, "--learning-starts", "is above --total-timesteps; lower it")
    try:  # last: making a MuJoCo env may print the simulator's own warnings
        env = gym.make(args.env_id)
    except (gym.error.Error, ImportError) as e:  # unknown name, version or namespace
        check(False, "--env-id", f"cannot make {args.env_id!r} ({str(e).splitlines()[0]}); try HalfCheetah-v5")
    env.close()
    check(
        isinstance(env.action_space, gym.spaces.Box),
        "--env-id",
        f"{args.env_id}'s actions are discrete; SAC needs a Box",
    )


class ReplayBuffer:
    """Uniform replay on numpy ring buffers (CleanRL imports SB3's 600-line buffer; this keeps one file)."""

    def __init__(self, buffer_size, obs_dim, act_dim, device):
        dims = dict(observations=obs_dim, next_observations=obs_dim, actions=act_dim, rewards=1, dones=1)
        self.data = {key: np.zeros((buffer_size, dim), np.float32) for key, dim in dims.items()}
        self.buffer_size, self.device, self.pos, self.size = buffer_size, device, 0, 0

    def add(self, obs, next_obs, actions, rewards, terminations, infos):
        """One row per sub-env. SAME_STEP autoreset: the true last obs of an ended episode is in infos["final_obs"]."""
        real_next_obs = next_obs.copy()
        for i in np.nonzero(infos.get("_final_obs", []))[0]:
            real_next_obs[i] = infos["final_obs"][i]
        idx = (self.pos + np.arange(len(obs))) % self.buffer_size
        for key, value in zip(self.data, (obs, real_next_obs, actions, rewards, terminations)):
            self.data[key][idx] = np.asarray(value).reshape(len(idx), -1)  # dones = terminations, not truncations
        self.pos, self.size = (self.pos + len(idx)) % self.buffer_size, min(self.size + len(idx), self.buffer_size)

    def sample(self, batch_size):
        idx = np.random.randint(0, self.size, size=batch_size)
        return SimpleNamespace(**{key: torch.as_tensor(x[idx], device=self.device) for key, x in self.data.items()})


# ALGO LOGIC: initialize agent here:
class SoftQNetwork(nn.Module):
    def __init__(self, env, hidden_dim=256):
        super().__init__()
        in_dim = np.prod(env.single_observation_space.shape) + np.prod(env.single_action_space.shape)
        self.fc1 = nn.Linear(int(in_dim), hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 1)

    def forward(self, x, a):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(torch.cat([x, a], 1))))))


class Actor(nn.Module):
    def __init__(self, env, num_experts=4, hidden_dim=256):
        super().__init__()
        self.K, self.act_dim = num_experts, int(np.prod(env.single_action_space.shape))
        self.fc1 = nn.Linear(int(np.prod(env.single_observation_space.shape)), hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc_mean = nn.Linear(hidden_dim, self.K * self.act_dim)  # rows [k*A, (k+1)*A) belong to expert k
        self.fc_logstd = nn.Linear(hidden_dim, self.K * self.act_dim)
        self.fc_route = nn.Linear(hidden_dim, self.K)  # routing head: mixing logits g(s), w(s) = softmax(g(s))
        high, low = env.single_action_space.high, env.single_action_space.low  # action rescaling
        self.register_buffer("action_scale", torch.tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, x):
        """x [B, O] -> mixing logits [B, K], expert means [B, K, A], expert log-stds [B, K, A]."""
        h = F.relu(self.fc2(F.relu(self.fc1(x))))  # [B, H]
        log_std = -5 + 3.5 * (
            torch.tanh(self.fc_logstd(h)).view(-1, self.K, self.act_dim) + 1
        )  # in [-5, 2], as CleanRL
        # h.detach() as in the official code: the routing loss trains the routing head only, never the shared trunk
        return self.fc_route(h.detach()), self.fc_mean(h).view(-1, self.K, self.act_dim), log_std

    def squash(self, u):
        return torch.tanh(u) * self.action_scale + self.action_bias

    def get_action(self, x, mixture_logp=False):
        """Act with one expert z ~ Cat(w(x)) per row: action [B, A], log-prob [B], z's mean action [B, A], z [B]."""
        mix_logits, mean, log_std = self(x)
        z = sample_expert(mix_logits)
        mean_z, log_std_z = pick(mean, z), pick(log_std, z)  # [B, A]
        u = mean_z + log_std_z.exp() * torch.randn_like(mean_z)  # for reparameterization trick (mean + std * N(0,1))
        log_prob = (
            mixture_log_prob(u, mix_logits, mean, log_std, self.action_scale)
            if mixture_logp
            else tanh_gaussian_log_prob(u, mean_z, log_std_z, self.action_scale)
        )  # [B]
        return self.squash(u), log_prob, self.squash(mean_z), z


def pick(x, idx):
    """Row-wise gather: x [B, K, ...], idx [B] -> x[b, idx[b]] of shape [B, ...]."""
    return x[torch.arange(x.shape[0], device=x.device), idx]


def sample_expert(mix_logits):
    """z ~ Cat(softmax(mix_logits)), [B, K] -> [B], by Gumbel-max: no validation sync, no raise on NaN (see main)."""
    return (mix_logits - torch.empty_like(mix_logits).exponential_().log()).argmax(-1)


def tanh_gaussian_log_prob(u, mean, log_std, action_scale):
    """log pi_k(a|s) of a = scale * tanh(u) + bias, u ~ N(mean, exp(log_std)^2): [..., A] -> [...] (CleanRL's +1e-6)."""
    log_normal = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return (log_normal - torch.log(action_scale * (1 - torch.tanh(u).pow(2)) + 1e-6)).sum(-1)


def mixture_log_prob(u, mix_logits, mean, log_std, action_scale):
    """log sum_k w_k pi_k(a|s) of a = squash(u): u [..., A], mix_logits [..., K], mean, log_std [..., K, A] -> [...]."""
    log_probs = tanh_gaussian_log_prob(u.unsqueeze(-2), mean, log_std, action_scale)  # [..., K]
    return torch.logsumexp(F.log_softmax(mix_logits, -1) + log_probs, -1)


def min_q(qf1, qf2, obs, actions):
    """min(Q1, Q2) of K actions per state, one batched pass over B*K rows: obs [B, O], actions [B, K, A] -> [B, K]."""
    B, K, A = actions.shape
    obs_k = obs.unsqueeze(1).expand(B, K, obs.shape[-1]).reshape(B * K, -1)  # [B*K, O]
    return torch.min(qf1(obs_k, actions.reshape(B * K, A)), qf2(obs_k, actions.reshape(B * K, A))).view(B, K)


def actor_losses(actor, qf1, qf2, obs, alpha, args):
    """actor_loss, route_loss, the chosen action's log-prob [B] (detached, for alpha) and the chosen expert [B]."""
    mix_logits, mean, log_std = actor(obs)  # [B, K], [B, K, A], [B, K, A]
    u_all = mean + log_std.exp() * torch.randn_like(mean)  # one reparameterised sample per expert [B, K, A]
    if args.gradient_estimator == "gumbel":  # Jang et al. 2017, straight-through; no routing loss
        gumbels = -torch.empty_like(mix_logits).exponential_().log()  # Gumbel(0, 1) noise [B, K]
        y = F.softmax((F.log_softmax(mix_logits, -1) + gumbels) / args.gumbel_tau, -1)  # relaxed one-hot [B, K]
        k = y.argmax(-1)
        y_hard = F.one_hot(k, actor.K).to(y) - y.detach() + y  # forward: exactly expert k; backward: through soft y
        u = (y_hard.unsqueeze(-1) * u_all).sum(1)  # [B, A]
        log_pi = mixture_log_prob(u, mix_logits, mean, log_std, actor.action_scale)
        route_loss = torch.zeros((), device=obs.device)
    else:
        with torch.no_grad():  # score every expert's sample without a graph; gradients flow via the choice below
            scored = actor.K > 1 or args.gradient_estimator == "reinforce"
            q_all = min_q(qf1, qf2, obs, actor.squash(u_all)) if scored else torch.zeros_like(mix_logits)  # [B, K]
        if args.gradient_estimator == "pmoe":
            k = q_all.argmax(-1)  # k*: the expert whose sample the critics rate best
            u = pick(u_all, k)
            log_pi = tanh_gaussian_log_prob(u, pick(mean, k), pick(log_std, k), actor.action_scale)  # k*'s own density
            # frequency approximate gradient: E[one_hot(k*)] = P(k* = k | s), so w(s) regresses onto those frequencies
            route_loss = F.mse_loss(F.softmax(mix_logits, -1), F.one_hot(k, actor.K).to(mix_logits))
        else:  # reinforce: score-ratio for the discrete choice, pathwise inside the sampled expert
            k = sample_expert(mix_logits)
            u = pick(u_all, k)
            log_pi = mixture_log_prob(u, mix_logits, mean, log_std, actor.action_scale)
            with torch.no_grad():  # soft value of every expert's sample; their mean over K is the baseline
                lp_all = mixture_log_prob(
                    u_all, mix_logits[:, None], mean[:, None], log_std[:, None], actor.action_scale
                )
                v_all = q_all - alpha * lp_all  # [B, K]
            route_loss = -(pick(F.log_softmax(mix_logits, -1), k) * (pick(v_all, k) - v_all.mean(-1))).mean()
    q = min_q(qf1, qf2, obs, actor.squash(u).unsqueeze(1)).squeeze(1)  # [B], pathwise through the chosen action
    return (alpha * log_pi - q).mean(), route_loss, log_pi.detach(), k


@torch.no_grad()
def evaluate(actor, qf1, qf2, env_id, eval_episodes, seed, eval_expert, device):
    """Deterministic evaluation: act with the chosen expert's mean action squash(mu_z). Returns episodic returns."""
    env, returns = gym.make(env_id), []
    for episode in range(eval_episodes):
        (obs, _), done, returns = env.reset(seed=seed + episode), False, returns + [0.0]
        while not done:
            x = torch.tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)  # [1, O]
            mix_logits, mean, _ = actor(x)
            mean_actions = actor.squash(mean)  # [1, K, A]
            scores = min_q(qf1, qf2, x, mean_actions) if eval_expert == "argmax_q" else mix_logits  # [1, K]
            z = sample_expert(mix_logits) if eval_expert == "sample" else scores.argmax(-1)
            obs, reward, termination, truncation, _ = env.step(pick(mean_actions, z)[0].cpu().numpy())
            returns[-1], done = returns[-1] + float(reward), termination or truncation
    env.close()
    return returns


def main(args: Args) -> dict:
    validate(args)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.model_path is not None:  # evaluation alone: rebuild the networks from the saved args
        checkpoint = torch.load(args.model_path, map_location=device, weights_only=True)
        saved, env = Args(**checkpoint["args"]), gym.make(checkpoint["args"]["env_id"])
        spaces = SimpleNamespace(single_observation_space=env.observation_space, single_action_space=env.action_space)
        actor = Actor(spaces, saved.num_experts, saved.hidden_dim).to(device)
        qf1, qf2 = SoftQNetwork(spaces, saved.hidden_dim).to(device), SoftQNetwork(spaces, saved.hidden_dim).to(device)
        for name, net in dict(actor=actor, qf1=qf1, qf2=qf2).items():
            net.load_state_dict(checkpoint[name])
        returns = evaluate(actor, qf1, qf2, saved.env_id, args.eval_episodes, args.seed, args.eval_expert, device)
        print(f"eval/episodic_return={np.mean(returns):.1f} over {len(returns)} episodes ({args.eval_expert} expert)")
        return {"eval_return": float(np.mean(returns)), "eval_returns": returns}
    if args.track:  # wandb lazily; no monitor_gym, which is broken with gymnasium >= 1.0 (wandb#11193)
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
        "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    )

    # env setup: SAME_STEP resets a sub-env inside the step that ends its episode (gymnasium 0.29 semantics)
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, args.seed + i) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    actor = Actor(envs, args.num_experts, args.hidden_dim).to(device)
    qf1, qf2 = SoftQNetwork(envs, args.hidden_dim).to(device), SoftQNetwork(envs, args.hidden_dim).to(device)
    qf1_target, qf2_target = copy.deepcopy(qf1), copy.deepcopy(qf2)
    target_params = [*qf1_target.parameters(), *qf2_target.parameters()]
    q_optimizer = optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    actor_optimizer = optim.Adam(list(actor.parameters()), lr=args.policy_lr)  # trunk, expert heads, routing head

    # Automatic entropy tuning; alpha stays a tensor so no update forces a host sync (CleanRL calls .item())
    if args.autotune:
        target_entropy = -float(np.prod(envs.single_action_space.shape))
        log_alpha = torch.zeros(1, requires_grad=True, device=device)
        alpha = log_alpha.exp().detach()
        a_optimizer = optim.Adam([log_alpha], lr=args.q_lr)
    else:
        alpha = torch.tensor(args.alpha, device=device)
    mixture_logp = args.gradient_estimator != "pmoe"  # the baselines use the mixture density, pmoe the expert's own
    rb = ReplayBuffer(
        args.buffer_size, envs.single_observation_space.shape[0], envs.single_action_space.shape[0], device
    )
    usage = torch.zeros(args.num_experts, device=device)  # how often each expert acted since the last log
    episodic_returns, qf_loss, actor_loss, route_loss, alpha_loss, k_star = (
        [],
        None,
        None,
        None,
        None,
        torch.zeros(0).long(),
    )
    start_time = learn_start_time = time.time()

    # TRY NOT TO MODIFY: start the game
    obs, _ = envs.reset(seed=args.seed)
    for global_step in range(args.total_timesteps):
        if global_step == args.learning_starts:
            learn_start_time = time.time()  # SPS after warm-up: random steps are cheap and inflate CleanRL's SPS
        # ALGO LOGIC: put action logic here
        if global_step < args.learning_starts:
            actions = np.array([envs.single_action_space.sample() for _ in range(envs.num_envs)])
        else:
            actions, _, _, z = actor.get_action(torch.Tensor(obs).to(device))
            usage += torch.bincount(z, minlength=args.num_experts)
            actions = actions.detach().cpu().numpy()

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        # TRY NOT TO MODIFY: record rewards for plotting purposes (SAME_STEP: the ending step's info is "final_info")
        if "final_info" in infos and "_episode" in infos["final_info"]:
            for i in np.nonzero(infos["final_info"]["_episode"])[0]:
                episodic_returns.append(float(infos["final_info"]["episode"]["r"][i]))
                print(f"global_step={global_step}, episodic_return={episodic_returns[-1]:.1f}")
                writer.add_scalar("charts/episodic_return", episodic_returns[-1], global_step)
                writer.add_scalar("charts/episodic_length", infos["final_info"]["episode"]["l"][i], global_step)
        # TRY NOT TO MODIFY: save data to replay buffer; handle `final_obs`
        rb.add(obs, next_obs, actions, rewards, terminations, infos)
        obs = next_obs  # TRY NOT TO MODIFY: CRUCIAL step easy to overlook

        # ALGO LOGIC: training.
        if global_step > args.learning_starts:
            data = rb.sample(args.batch_size)
            with torch.no_grad():  # the target acts with one expert z' ~ Cat(w(s')) per next state
                next_state_actions, next_state_log_pi, _, _ = actor.get_action(data.next_observations, mixture_logp)
                qf1_next_target = qf1_target(data.next_observations, next_state_actions)
                qf2_next_target = qf2_target(data.next_observations, next_state_actions)
                min_qf_next_target = torch.min(qf1_next_target, qf2_next_target).view(-1) - alpha * next_state_log_pi
                next_q_value = data.rewards.flatten() + (1 - data.dones.flatten()) * args.gamma * min_qf_next_target
            qf1_a_values = qf1(data.observations, data.actions).view(-1)
            qf2_a_values = qf2(data.observations, data.actions).view(-1)
            qf1_loss = F.mse_loss(qf1_a_values, next_q_value)
            qf2_loss = F.mse_loss(qf2_a_values, next_q_value)
            qf_loss = qf1_loss + qf2_loss
            # optimize the model: the critic first, then the actor against the updated critics
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if global_step % args.policy_frequency == 0:  # TD 3 Delayed update support
                for _ in range(args.policy_frequency):  # compensate for the delay by doing 'policy_frequency' updates
                    actor_loss, route_loss, log_pi, k_star = actor_losses(
                        actor, qf1, qf2, data.observations, alpha, args
                    )
                    actor_optimizer.zero_grad()
                    # inputs=: autograd skips the critics' weight gradients, which the actor step never uses
                    (actor_loss + args.route_coef * route_loss).backward(inputs=list(actor.parameters()))
                    actor_optimizer.step()
                    if args.autotune:  # on the chosen action's log-prob (pmoe: expert k*'s own density)
                        alpha_loss = (-log_alpha.exp() * (log_pi + target_entropy)).mean()
                        a_optimizer.zero_grad()
                        alpha_loss.backward()
                        a_optimizer.step()
                        alpha = log_alpha.exp().detach()
            if global_step % args.target_network_frequency == 0:  # update the target networks
                for param, target_param in zip([*qf1.parameters(), *qf2.parameters()], target_params):
                    target_param.data.lerp_(param.data, args.tau)  # tau * param + (1 - tau) * target

            if global_step % 100 == 0:  # the loop's only host syncs (.item(), .tolist()) happen here
                stats = dict(
                    qf1_values=qf1_a_values.mean(),
                    qf2_values=qf2_a_values.mean(),
                    qf1_loss=qf1_loss,
                    qf2_loss=qf2_loss,
                    qf_loss=qf_loss / 2.0,
                    actor_loss=actor_loss,
                    route_loss=route_loss,
                    alpha=alpha,
                    alpha_loss=alpha_loss,
                )
                stats = {key: value.item() for key, value in stats.items() if value is not None}
                if not all(math.isfinite(value) for value in stats.values()):
                    raise SystemExit(
                        f"error: non-finite loss at global_step={global_step} ({stats}): the run diverged; "
                        "lower --q-lr / --policy-lr or try another --seed"
                    )
                for key, value in stats.items():
                    writer.add_scalar(f"losses/{key}", value, global_step)
                w = F.softmax(actor(data.observations)[0], -1).detach()  # [B, K]
                writer.add_scalar(
                    "charts/route_entropy", -(w * w.clamp_min(1e-12).log()).sum(-1).mean().item(), global_step
                )
                usage_frac = (usage / usage.sum().clamp_min(1)).tolist()  # the experts that acted since the last log
                best_frac = (
                    torch.bincount(k_star, minlength=args.num_experts) / max(len(k_star), 1)
                ).tolist()  # k* histogram
                for k in range(args.num_experts):
                    writer.add_scalar(f"charts/expert_usage_{k}", usage_frac[k], global_step)
                    writer.add_scalar(f"charts/best_expert_frac_{k}", best_frac[k], global_step)
                usage.zero_()
                sps = int(global_step / (time.time() - start_time))
                sps_learning = int((global_step - args.learning_starts) / (time.time() - learn_start_time))
                print("SPS:", sps, "SPS after learning_starts:", sps_learning)
                writer.add_scalar("charts/SPS", sps, global_step)
                writer.add_scalar("charts/SPS_after_learning_starts", sps_learning, global_step)

    end_time = time.time()
    envs.close()
    model_path = f"runs/{run_name}/{args.exp_name}.cleanrl_model" if args.save_model else None
    if args.save_model:  # weights and args, to a temp file then renamed: a crash never leaves half a file
        checkpoint = dict(actor=actor.state_dict(), qf1=qf1.state_dict(), qf2=qf2.state_dict(), args=vars(args))
        torch.save(checkpoint, model_path + ".tmp")
        os.replace(model_path + ".tmp", model_path)
    eval_returns = evaluate(actor, qf1, qf2, args.env_id, args.eval_episodes, args.seed, args.eval_expert, device)
    for idx, episodic_return in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", episodic_return, idx)
        print(f"eval_episode={idx}, episodic_return={episodic_return:.1f} ({args.eval_expert} expert)")
    writer.close()
    last = dict(qf_loss=qf_loss, actor_loss=actor_loss, route_loss=route_loss, alpha=alpha)
    return dict(
        final_return=float(np.mean(episodic_returns[-10:])) if episodic_returns else None,  # last 10 episodes
        episodes=len(episodic_returns),
        eval_return=float(np.mean(eval_returns)) if eval_returns else None,
        sps=args.total_timesteps / (end_time - start_time),
        model_path=model_path,
        sps_after_learning_starts=(args.total_timesteps - args.learning_starts) / (end_time - learn_start_time),
        **{name: None if value is None else value.item() for name, value in last.items()},
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
