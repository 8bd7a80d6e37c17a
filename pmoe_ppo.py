"""PMOE-PPO (Ren et al., Probabilistic Mixture-of-Experts for Efficient Deep RL, arXiv 2104.09122): a minimal diff
of CleanRL's ppo_continuous_action.py on gymnasium 1.x + MuJoCo v5. Long notes: docs/pmoe_ppo.md.

    python pmoe_ppo.py                                # K=5 experts, HalfCheetah-v5, 1M steps (CleanRL PPO defaults)
    python pmoe_ppo.py --num-experts 1                # plain PPO on the same code path
    python pmoe_ppo.py --gradient-estimator mixture   # ablation: mixture likelihood only, no Q-net, no routing loss
    python pmoe_ppo.py --eval-only --model-path runs/<run_name>/pmoe_ppo.cleanrl_model

Diff vs. the parent: the actor has K Gaussian experts and routing weights w(s); the PPO ratio uses the mixture density
(logsumexp); a Q-net fit to the lambda-returns scores one fresh sample per expert and w(s) is regressed onto
one_hot(argmax) (MSE: the "frequency approximate gradient"); SAME_STEP autoreset; obs statistics saved, frozen at eval.
UNVERIFIED in the paper; we follow the co-author's pmoe_ppo.py (docs/pmoe_ppo.md): mixture density in the ratio (so w
and every expert also get the PPO gradient), router Linear(obs, K), loss pg + vf*v + q + route; no Q-net for K=1.
Evaluation: expert z = argmax_k w_k(s) (--eval-expert sample draws z ~ w, as rlkit does); action = mean of expert z.
"""

import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
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
    """save weights, args and normalisation statistics to `runs/{run_name}`, then evaluate the saved model"""
    eval_only: bool = False
    """skip training: evaluate the model at --model-path"""
    model_path: Optional[str] = None
    """a `.cleanrl_model` file written by --save-model (used with --eval-only)"""
    eval_episodes: int = 10
    """the number of deterministic evaluation episodes"""

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
    """coefficient of the entropy (an upper bound of the mixture entropy, exact for K=1)"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: Optional[float] = None
    """the target KL divergence threshold"""

    # PMOE specific arguments
    num_experts: int = 5
    """K, the number of Gaussian experts in the mixture policy (1 = plain PPO)"""
    gradient_estimator: Literal["pmoe", "mixture"] = "pmoe"
    """pmoe: PPO on the mixture + Q-labelled routing loss; mixture: PPO on the mixture likelihood alone (ablation)"""
    route_coef: float = 1.0
    """coefficient of the routing (frequency) loss MSE(w(s), one_hot(argmax_k Q(s, a_k)))"""
    q_coef: float = 1.0
    """coefficient of the Q-network loss MSE(Q(s, a), lambda-return)"""
    eval_expert: Literal["argmax", "sample"] = "argmax"
    """how evaluation picks the expert: argmax_k w_k(s) (deterministic) or z ~ Cat(w(s)) (rlkit's choice)"""

    # to be filled in runtime (hidden from the CLI)
    batch_size: tyro.conf.Suppress[int] = 0
    minibatch_size: tyro.conf.Suppress[int] = 0
    num_iterations: tyro.conf.Suppress[int] = 0


def fail(message):  # bad input: one line on stderr, no traceback, exit code 2
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def validate(args):
    if args.eval_episodes < 1:
        fail(f"--eval-episodes {args.eval_episodes} must be >= 1")
    if args.eval_only and not (args.model_path and os.path.isfile(args.model_path)):
        fail(f"--model-path {args.model_path!r} is not a file: pass the .cleanrl_model written by --save-model")
    if args.eval_only:
        return  # env id and sizes come from the checkpoint
    if args.num_experts < 1:
        fail(f"--num-experts {args.num_experts} must be >= 1 (1 = plain PPO)")
    if min(args.num_envs, args.num_steps, args.num_minibatches, args.update_epochs) < 1:
        fail("--num-envs, --num-steps, --num-minibatches and --update-epochs must all be >= 1")
    if args.batch_size % args.num_minibatches:
        fail(f"--num-minibatches {args.num_minibatches} must divide num_envs*num_steps={args.batch_size}")
    if args.total_timesteps < args.batch_size:
        fail(f"--total-timesteps {args.total_timesteps} is below one rollout ({args.batch_size}): raise it")
    try:  # last: making a MuJoCo env is the slow check
        action_space = gym.make(args.env_id).action_space
    except Exception as e:
        fail(f"--env-id {args.env_id!r} cannot be made ({type(e).__name__}): use a gymnasium id such as HalfCheetah-v5")
    if not isinstance(action_space, gym.spaces.Box):
        fail(
            f"--env-id {args.env_id} has a {type(action_space).__name__} action space: PMOE-PPO needs a continuous Box"
        )


def make_env(env_id, gamma):
    def thunk():
        env = gym.make(env_id)
        env = gym.wrappers.FlattenObservation(env)
        env = gym.wrappers.RecordEpisodeStatistics(env)  # before NormalizeReward: returns in the env's own scale
        env = gym.wrappers.ClipAction(env)
        env = gym.wrappers.NormalizeObservation(env)
        # gymnasium 1.x: TransformObservation needs the observation space as a third argument
        env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), env.observation_space)
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        env = gym.wrappers.TransformReward(env, lambda reward: np.clip(reward, -10, 10))
        return env

    return thunk


def find_wrapper(env, wrapper_class):  # each sub-env holds its own normalisers: walk down its wrapper chain
    while not isinstance(env, wrapper_class):
        env = env.env
    return env


def running_stats(rms):
    """A RunningMeanStd as plain tensors, so the checkpoint loads with torch.load(weights_only=True)."""
    return {"mean": torch.tensor(rms.mean), "var": torch.tensor(rms.var), "count": torch.tensor(rms.count)}


# ALGO LOGIC: initialize agent here:
def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, envs, num_experts, use_routing):
        super().__init__()
        obs_dim = int(np.prod(envs.single_observation_space.shape))
        self.num_experts, self.act_dim = num_experts, int(np.prod(envs.single_action_space.shape))
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(  # all K expert means from one head: [B, K*A]
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, num_experts * self.act_dim), std=0.01),
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, num_experts * self.act_dim))  # one per expert and dim
        self.router = layer_init(nn.Linear(obs_dim, num_experts), std=0.01)  # w(s) starts ~uniform (co-author: default)
        if use_routing:  # Q(s, a) exists only to label the best expert for the routing loss
            self.q_net = nn.Sequential(
                nn.Linear(obs_dim + self.act_dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
            )

    def get_value(self, x):
        return self.critic(x)

    def get_experts(self, x):  # -> mixture logits [B, K], expert means [B, K, A], expert log-stds [B, K, A]
        expert_means = self.actor_mean(x).view(-1, self.num_experts, self.act_dim)
        expert_log_stds = self.actor_logstd.view(1, self.num_experts, self.act_dim).expand_as(expert_means)
        return self.router(x), expert_means, expert_log_stds

    def get_action_and_value(self, x):  # rollout: z ~ Cat(w(s)), then a ~ N(mu_z, sigma_z); logprob of the mixture
        mix_logits, expert_means, expert_log_stds = self.get_experts(x)
        expert = torch.multinomial(mix_logits.softmax(-1), 1).squeeze(-1)  # [B]
        rows = torch.arange(len(x), device=x.device)
        mean, log_std = expert_means[rows, expert], expert_log_stds[rows, expert]  # the chosen expert's [B, A]
        action = mean + log_std.exp() * torch.randn_like(mean)  # [B, A]
        return action, mixture_log_prob(action, mix_logits, expert_means, expert_log_stds), self.critic(x), expert


def mixture_log_prob(action, mix_logits, expert_means, expert_log_stds):
    """log pi(a|s) = logsumexp_k [log w_k + sum_d log N(a_d; mu_kd, sigma_kd)], pi = sum_k w_k pi_k. action [B, A],
    mix_logits [B, K], expert_means/log_stds [B, K, A] -> [B]. log(w . exp(.)) would underflow to -inf in 17-D."""
    z = (action.unsqueeze(1) - expert_means) * torch.exp(-expert_log_stds)  # [B, K, A]
    expert_log_probs = (-0.5 * z.pow(2) - expert_log_stds - 0.5 * np.log(2 * np.pi)).sum(-1)  # [B, K]
    return torch.logsumexp(mix_logits.log_softmax(-1) + expert_log_probs, dim=-1)  # [B]


def mixture_entropy_bound(mix_logits, expert_log_stds):
    """H(w) + sum_k w_k H(N_k) >= H(mixture): the mixture entropy has no closed form; equal to it for K=1. -> [B]"""
    log_w = mix_logits.log_softmax(-1)  # [B, K]
    expert_entropy = (0.5 + 0.5 * np.log(2 * np.pi) + expert_log_stds).sum(-1)  # [B, K]
    return (log_w.exp() * (expert_entropy - log_w)).sum(-1)


def route_loss_fn(mix_logits, expert_q_values):
    """PMOE frequency approximate gradient MSE(w(s), one_hot(argmax_k Q(s, a_k))), mean over [B, K]: its expected
    gradient 2(w_k - f_k(s)) drives w_k(s) to the frequency f_k(s) with which expert k scores best."""
    best = F.one_hot(expert_q_values.argmax(-1), mix_logits.shape[-1]).to(mix_logits.dtype)  # [B, K]
    return F.mse_loss(mix_logits.softmax(-1), best)


def compute_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """CleanRL's GAE; dones[t] = 1 when obs[t] starts a new episode. rewards, values, dones [T, N]; next_value,
    next_done [N] -> advantages [T, N], lambda-returns [T, N]."""
    advantages, lastgaelam = torch.zeros_like(rewards), 0
    for t in reversed(range(rewards.shape[0])):
        nextnonterminal = 1.0 - (next_done if t == rewards.shape[0] - 1 else dones[t + 1])
        nextvalues = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages, advantages + values


def evaluate(model_path, eval_episodes, eval_expert, device, seed, writer=None):
    """Deterministic episodes of a saved model, with the saved obs statistics frozen. -> (returns, eval obs_rms)"""
    ckpt = torch.load(model_path, map_location="cpu", weights_only=True)  # load_state_dict copies to device
    saved = ckpt["args"]  # the env and the architecture come from the checkpoint, not from the CLI
    envs = gym.vector.SyncVectorEnv(
        [make_env(saved["env_id"], saved["gamma"])], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    obs_norm, stats = find_wrapper(envs.envs[0], gym.wrappers.NormalizeObservation), ckpt["obs_rms"][0]  # sub-env 0's
    obs_norm.obs_rms.mean, obs_norm.obs_rms.var, obs_norm.obs_rms.count = (
        stats[k].numpy() for k in ("mean", "var", "count")
    )
    obs_norm.update_running_mean = False  # gymnasium >= 1.0: freeze, the fix for CleanRL issues #425/#532
    find_wrapper(envs.envs[0], gym.wrappers.NormalizeReward).update_running_mean = False
    agent = Agent(envs, saved["num_experts"], saved["gradient_estimator"] == "pmoe" and saved["num_experts"] > 1).to(
        device
    )
    agent.load_state_dict(ckpt["model"])
    episodic_returns, (obs, _) = [], envs.reset(seed=seed)
    while len(episodic_returns) < eval_episodes:
        with torch.no_grad():
            mix_logits, expert_means, _ = agent.get_experts(torch.Tensor(obs).to(device))
            expert = (
                mix_logits.argmax(-1) if eval_expert == "argmax" else torch.multinomial(mix_logits.softmax(-1), 1)[:, 0]
            )
            action = expert_means[torch.arange(len(expert), device=device), expert]  # [1, A], the chosen expert's mean
        obs, _, _, _, infos = envs.step(action.cpu().numpy())
        if "final_info" in infos and "_episode" in infos["final_info"]:
            episodic_returns += infos["final_info"]["episode"]["r"][infos["final_info"]["_episode"]].tolist()
    envs.close()
    for idx, episodic_return in enumerate(episodic_returns if writer is not None else []):
        writer.add_scalar("eval/episodic_return", episodic_return, idx)
    print(f"eval/episodic_return mean={np.mean(episodic_returns):.2f} over {len(episodic_returns)} episodes")
    return episodic_returns, obs_norm.obs_rms


def main(args: Args) -> dict:
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // max(args.num_minibatches, 1))
    args.num_iterations = args.total_timesteps // args.batch_size
    validate(args)
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
    table = "\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.eval_only:
        episodic_returns, _ = evaluate(args.model_path, args.eval_episodes, args.eval_expert, device, args.seed, writer)
        writer.close()
        return {"eval_return": float(np.mean(episodic_returns)), "eval_returns": episodic_returns}
    # env setup: SAME_STEP autoreset reproduces gymnasium 0.29 semantics (terminal info in infos["final_info"])
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, args.gamma) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    K = args.num_experts
    # K=1 or the mixture ablation train no Q-net and no routing loss: K=1 is then exactly CleanRL PPO
    use_routing = args.gradient_estimator == "pmoe" and K > 1
    agent = Agent(envs, K, use_routing).to(device)
    optimizer = torch.optim.Adam(
        agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True
    )  # fused: same math, faster
    ppo_params = [p for name, p in agent.named_parameters() if not name.startswith("q_net.")]
    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape).to(device)
    experts = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long).to(device)  # chosen expert z
    # logprobs holds the mixture log-density log pi(a|s) of the executed action
    logprobs, rewards, dones, values = (torch.zeros((args.num_steps, args.num_envs)).to(device) for _ in range(4))
    # TRY NOT TO MODIFY: start the game
    global_step, episode_returns = 0, []
    q_loss = route_loss = torch.zeros(())
    start_time = time.time()
    next_obs = torch.Tensor(envs.reset(seed=args.seed)[0]).to(device)
    next_done = torch.zeros(args.num_envs).to(device)

    for iteration in range(1, args.num_iterations + 1):
        if args.anneal_lr:  # Annealing the rate if instructed to do so.
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done
            # ALGO LOGIC: action logic
            with torch.no_grad():
                action, logprob, value, expert = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step], experts[step], logprobs[step] = action, expert, logprob
            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            next_done = np.logical_or(terminations, truncations)
            rewards[step] = torch.tensor(reward).to(device).view(-1)
            next_obs, next_done = torch.Tensor(next_obs).to(device), torch.Tensor(next_done).to(device)
            # SAME_STEP: the ended episode's RecordEpisodeStatistics info is in infos["final_info"],
            # masked by "_episode"
            if "final_info" in infos and "_episode" in infos["final_info"]:
                episodes_over, episode = np.nonzero(infos["final_info"]["_episode"])[0], infos["final_info"]["episode"]
                for episodic_return, episodic_length in zip(episode["r"][episodes_over], episode["l"][episodes_over]):
                    print(f"global_step={global_step}, episodic_return={episodic_return}")
                    writer.add_scalar("charts/episodic_return", episodic_return, global_step)
                    writer.add_scalar("charts/episodic_length", episodic_length, global_step)
                    episode_returns.append(float(episodic_return))

        # bootstrap value if not done (CleanRL: truncations are treated as terminations)
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(-1)
            advantages, returns = compute_gae(
                rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda
            )

        # flatten the batch
        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
        b_actions = actions.reshape((-1,) + envs.single_action_space.shape)
        b_logprobs, b_advantages, b_returns, b_values = (x.reshape(-1) for x in (logprobs, advantages, returns, values))

        # Optimizing the policy and value network
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                mb_inds = b_inds[start : start + args.minibatch_size]
                # CleanRL's get_action_and_value(obs, action), unrolled: the routing loss reuses the expert outputs
                mix_logits, expert_means, expert_log_stds = agent.get_experts(b_obs[mb_inds])
                newlogprob = mixture_log_prob(b_actions[mb_inds], mix_logits, expert_means, expert_log_stds)
                entropy, newvalue = mixture_entropy_bound(mix_logits, expert_log_stds), agent.get_value(b_obs[mb_inds])
                logratio = newlogprob - b_logprobs[mb_inds]  # mixture ratio: gradient reaches w and all K experts
                ratio = logratio.exp()
                with torch.no_grad():
                    # calculate approx_kl http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]
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
                        newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef
                    )
                    v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()
                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
                if use_routing:
                    mb_obs = b_obs[mb_inds]  # [M, O]
                    # Q(s, a) regressed onto the lambda-returns R = A_GAE + V_old (the co-author's "td_target")
                    q_loss = F.mse_loss(
                        agent.q_net(torch.cat([mb_obs, b_actions[mb_inds]], -1)).view(-1), b_returns[mb_inds]
                    )
                    with torch.no_grad():  # one fresh sample per expert, scored by Q: [M, K, A] -> [M, K]
                        expert_actions = expert_means + expert_log_stds.exp() * torch.randn_like(expert_means)
                        expert_q = agent.q_net(torch.cat([mb_obs.unsqueeze(1).expand(-1, K, -1), expert_actions], -1))
                    route_loss = route_loss_fn(mix_logits, expert_q.squeeze(-1))  # trains the router only
                    loss = loss + args.q_coef * q_loss + args.route_coef * route_loss
                if not torch.isfinite(loss):  # sync point; free on CPU, where .item() above already syncs
                    raise SystemExit(f"error: non-finite loss at global_step {global_step}: lower --learning-rate")
                optimizer.zero_grad()
                loss.backward()
                # clip the PPO parameters as CleanRL does; the Q-net stays out so its loss cannot shrink the PPO step
                nn.utils.clip_grad_norm_(ppo_params, args.max_grad_norm)
                optimizer.step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
        with torch.no_grad():
            w = agent.router(b_obs).softmax(-1)  # [B, K] routing weights over the rollout
            route_entropy = -(w * w.clamp_min(1e-12).log()).sum(-1).mean()
            expert_usage = torch.bincount(experts.flatten(), minlength=K) / args.batch_size  # [K]

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        metrics = {
            "charts/learning_rate": optimizer.param_groups[0]["lr"],
            "losses/value_loss": v_loss.item(),
            "losses/policy_loss": pg_loss.item(),
            "losses/entropy": entropy_loss.item(),
            "losses/old_approx_kl": old_approx_kl.item(),
            "losses/approx_kl": approx_kl.item(),
            "losses/clipfrac": np.mean(clipfracs),
            "losses/explained_variance": float(explained_var),
            "losses/q_loss": q_loss.item(),
            "losses/route_loss": route_loss.item(),
            "charts/route_entropy": route_entropy.item(),
            "charts/SPS": int(global_step / (time.time() - start_time)),
            **{f"charts/expert_usage_{k}": usage for k, usage in enumerate(expert_usage.tolist())},
        }
        for name, value in metrics.items():
            writer.add_scalar(name, value, global_step)
        print("SPS:", metrics["charts/SPS"])

    summary = dict(
        metrics,
        global_step=global_step,
        episodes=len(episode_returns),
        sps=metrics["charts/SPS"],
        final_return=float(np.mean(episode_returns[-10:])) if episode_returns else float("nan"),
    )
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.cleanrl_model"
        checkpoint = {  # plain tensors and python scalars: loadable with torch.load(weights_only=True)
            "model": agent.state_dict(),
            "args": vars(args),
            "obs_rms": [
                running_stats(find_wrapper(env, gym.wrappers.NormalizeObservation).obs_rms) for env in envs.envs
            ],
        }
        torch.save(checkpoint, model_path + ".tmp")
        os.replace(model_path + ".tmp", model_path)  # atomic: a crash never leaves a half-written model
        print(f"model saved to {model_path}")
        episodic_returns, _ = evaluate(model_path, args.eval_episodes, args.eval_expert, device, args.seed, writer)
        summary.update(model_path=model_path, eval_return=float(np.mean(episodic_returns)))

    envs.close()
    writer.close()
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
