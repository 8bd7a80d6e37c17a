"""Discrete-token GRPO for LLM reasoning: the baseline of SofT-GRPO (Zheng & Lee, arXiv 2511.06411).

The loss is verl's GRPO as the SofT-GRPO code runs it (group advantages, PPO dual-clip, k3 KL, token-mean); rollouts
come from our own KV-cache decode loop, and evaluation grades with math-verify as the official eval does. Read it in
order: Args, the GRPO helpers, main; then the task, grader and toy model it runs on. `sofT_grpo.py` (its child)
changes the rollout's thinking steps, their log-density and the evaluation; `discrete_grpo_fsdp.py` adds torchrun +
FSDP2, resumable checkpoints, compiled decoding and the 3B/7B presets. Notes: docs/discrete_grpo.md
    python discrete_grpo.py                                   # toy task + tiny model on a laptop CPU
    python discrete_grpo.py --preset r1-distill-qwen-1.5b     # the paper's setting, one GPU
    python discrete_grpo.py --preset r1-distill-qwen-1.5b --model-name-or-path ./ckpt --eval-only  # MATH-500, n 32
    python discrete_grpo.py --track --dr-grpo --loss-agg-mode seq-mean-token-sum-norm
"""

import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, replace
from typing import Literal, Optional

import torch
import tyro
from latex2sympy2_extended import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from tokenizers import AddedToken, pre_tokenizers
from torch.utils.checkpoint import checkpoint
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
)

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
PresetName = Literal["toy", "r1-distill-qwen-1.5b"]


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # the name of this experiment
    seed: int = 1  # seed of sampling and data order (the toy base model has its own fixed seed)
    track: bool = False  # if toggled, this experiment will be tracked with Weights and Biases
    wandb_project_name: str = "softgrpo"  # the wandb's project name
    wandb_entity: Optional[str] = None  # the entity (team) of wandb's project
    preset: PresetName = "toy"  # named setting applied first (explicit flags win): the toy or a paper base model
    output_dir: str = "runs"  # TensorBoard logs, eval JSON and checkpoints go to OUTPUT_DIR/<run_name>
    eval_every: int = 0  # evaluate every N steps (0: only before and after training)
    eval_only: bool = False  # evaluate the model and exit without training
    log_completions_every: int = 10  # write a few sample completions as text to TensorBoard every N steps
    # Model and data
    model_name_or_path: Optional[str] = None  # Hub id or local folder; None: the toy base model (built once, cached)
    dataset: Optional[str] = None  # training problems: a .jsonl/.json/.parquet file or a Hub dataset id; None: toy
    eval_dataset: Optional[str] = None  # held-out problems (file or Hub id); None: toy split, or last rows of --dataset
    problem_field: Optional[str] = None  # problem text field (None: auto-detect problem/question/prompt/query)
    answer_field: Optional[str] = None
    """answer field (None: answer/final_answer/solution); GSM8K's `#### n` and a solution's \\boxed{} are unwrapped"""
    max_prompt_length: int = 1024  # longer prompts (tokens, after the chat template) are skipped and counted
    dtype: Literal["float32", "bfloat16"] = "float32"
    """compute dtype; the weights and AdamW states stay fp32 (bf16 weights would round lr-1e-6 updates away)"""
    gradient_checkpointing: bool = False  # trade compute for memory in the training forward pass
    # Toy task and toy base model (used when --model-name-or-path / --dataset are not given)
    toy_num_ops: int = 2  # difficulty: number of +/- operations per problem
    toy_max_operand: int = 9  # operands are drawn from 1..toy_max_operand
    toy_hidden_size: int = 96  # hidden size of the tiny Qwen2 model
    toy_num_layers: int = 3  # decoder layers of the tiny Qwen2 model
    toy_sft_steps: int = 600  # supervised warm-start steps on worked solutions
    toy_teacher_slip: float = 0.5  # fraction of SFT solutions that box the previous line's result (room for RL)
    toy_branching: bool = False
    """sums of toy_num_ops + 1 terms added in any order, a slip while thinking: the decision is inside <think>"""
    toy_branching_slip: tuple[float, float] = (0.1, 0.3)
    """--toy-branching: the teacher's chance to write a line's result one too high, one-digit / two-digit result"""
    toy_cache_dir: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")  # toy base model cache
    # GRPO
    total_steps: int = 60  # rollout + update steps
    learning_rate: float = 1e-4  # AdamW learning rate (the paper: 1e-6)
    max_grad_norm: float = 1.0  # gradient clipping norm
    group_size: int = 8  # G: completions sampled per prompt
    prompts_per_step: int = 16  # prompts per rollout step (the paper: 64)
    mini_batch_prompts: int = 8  # prompts per PPO mini-batch = per optimizer step (the paper: 32, 2 updates per step)
    micro_batch_size: int = 64  # completions per forward/backward (at most a mini-batch); gradients accumulate
    rollout_batch_size: int = 128  # completions decoded together (bounds the KV-cache memory), in training and eval
    max_new_tokens: int = 48  # maximum completion length in training
    temperature: float = 1.0  # sampling temperature of training rollouts and their log-probs (0: greedy)
    top_k: int = 0  # top-k filter of training rollouts (0: off)
    top_p: float = 1.0  # top-p filter of training rollouts (1.0: off)
    clip_eps: float = 0.2  # PPO clip epsilon
    clip_eps_high: Optional[float] = None  # upper clip epsilon (DAPO clip-higher, e.g. 0.28); None: --clip-eps
    dual_clip: float = 3.0  # dual-clip constant c: the loss of a negative-advantage token is capped at -A*c
    beta: float = 0.001  # k3 KL coefficient to the frozen reference model (0: no reference model is loaded)
    loss_agg_mode: AggMode = "token-mean"  # per-token loss averaging (verl's names; *-sum-norm is Dr. GRPO's)
    dr_grpo: bool = False  # Dr. GRPO advantages R - mean, without the group std
    # Evaluation
    eval_problems: int = 200  # number of held-out problems
    eval_samples: int = 8  # n samples per problem; Pass@k for k = 1, 2, 4, ... n
    eval_temperature: float = 0.6  # eval sampling temperature (the paper: 0.6 for discrete models; 0: greedy)
    eval_top_k: int = 30  # eval top-k (the paper: 30)
    eval_top_p: float = 0.95  # eval top-p (the paper: 0.95)
    eval_max_new_tokens: Optional[int] = None  # maximum completion length at evaluation (None: --max-new-tokens)
    eval_grader: Literal["math-verify", "rule"] = "math-verify"
    """grader behind eval Pass@k: math-verify (the official eval) or rule (the training reward); both are logged"""


# ALGO LOGIC: GRPO. One sampling step, the rollout, the log-probs, the group advantages, the clipped loss, the update
def sample_step(logits, embed, generator, temperature: float, top_k: int, top_p: float):
    """One decode step. logits: [B, V] fp32. Returns the token [B], the next input embedding [B, H] and what the
    trainer must store to score this action later (for discrete tokens: the token itself)."""
    if temperature == 0:
        tok = logits.argmax(-1)  # greedy
    else:
        logits = logits / temperature
        if top_k > 0:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p < 1.0:
            sorted_logits, order = logits.sort(-1, descending=True)
            probs = sorted_logits.softmax(-1)
            drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        tok = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)  # [B]
    return tok, embed(tok), tok


@torch.no_grad()
def rollout(model, prompt_ids, prompt_mask, max_new_tokens: int, stop_ids, generator, **sampling) -> dict:
    """Batched KV-cache decoding fed with inputs_embeds. prompt_ids, prompt_mask: [B, P], left-padded.
    Returns completion_ids / completion_mask [B, T]; the mask runs up to and including the first stop token."""
    embed, attn = model.get_input_embeddings(), prompt_mask
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # [B, P]: left padding must not shift the positions
    cache = DynamicCache(config=model.config)  # `cache=`: transformers 5.24 renamed past_key_values
    inputs, done, tokens = embed(prompt_ids), torch.zeros_like(prompt_ids[:, 0], dtype=torch.bool), []
    for _ in range(max_new_tokens):
        out = model(
            inputs_embeds=inputs, attention_mask=attn, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1
        )
        tok, next_embed, _ = sample_step(out.logits[:, -1].float(), embed, generator, **sampling)
        tokens.append(tok)
        done |= torch.isin(tok, stop_ids)
        if done.all():  # a host sync; rows that finished early keep decoding, masked out below
            break
        inputs = next_embed[:, None]  # [B, 1, H]
        attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], 1)
        pos = pos[:, -1:] + 1
    ids = torch.stack(tokens, 1)  # [B, T]
    stop = torch.isin(ids, stop_ids).long()
    return {"completion_ids": ids, "completion_mask": (stop.cumsum(1) - stop == 0).long()}


def generate(model, tok, rows: list, chunk: int, max_new_tokens: int, stop_ids, generator, **sampling):
    """Rollouts for rows, decoded `chunk` rows at a time (bounds the KV-cache memory).
    Prompts are left-padded to one P; completions are right-padded with zeros to one T."""
    P = max(len(r["prompt_ids"]) for r in rows)
    prompt_ids, prompt_mask = [], []
    for r in rows:
        pad = P - len(r["prompt_ids"])
        prompt_ids.append([tok.pad_token_id] * pad + r["prompt_ids"])
        prompt_mask.append([0] * pad + [1] * len(r["prompt_ids"]))
    prompt_ids = torch.tensor(prompt_ids, device=stop_ids.device)  # [B, P]
    prompt_mask = torch.tensor(prompt_mask, device=stop_ids.device)
    outs = []
    for i in range(0, len(rows), chunk):
        ids, mask = prompt_ids[i : i + chunk], prompt_mask[i : i + chunk]
        outs.append(rollout(model, ids, mask, max_new_tokens, stop_ids, generator, **sampling))
    T = max(o["completion_ids"].shape[1] for o in outs)
    batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}
    for key in outs[0]:  # every stored [b, t, ...] tensor
        batch[key] = torch.cat([pad_right(o[key], T) for o in outs])
    return batch


def pad_right(x, T: int):
    """Zero-pad a [b, t, ...] tensor to [b, T, ...]."""
    return torch.cat([x, x.new_zeros(x.shape[0], T - x.shape[1], *x.shape[2:])], 1)


LOGPROB_CHUNK = 256  # completion positions scored at a time: the fp32 logits never exceed [B, 256, V]


def chunk_logprobs(h, lm_head, ids, temperature: float) -> tuple:
    """One chunk of positions, h: [B, c, H] -> log softmax(z)[ids] computed as z[ids] - logsumexp(z), with
    z = lm_head(h) / T in fp32, and the entropy (no grad): two [B, c] tensors. The [B, c, V] logits live only here."""
    logits = lm_head(h).float() / temperature  # [B, c, V]
    lse = logits.logsumexp(-1)  # [B, c]
    with torch.no_grad():
        entropy = lse - (logits.softmax(-1) * logits).sum(-1)  # logged only
    return logits.gather(-1, ids[..., None]).squeeze(-1) - lse, entropy


def token_logprobs(model, batch: dict, temperature: float) -> tuple:
    """log pi(a_t | s_t) of every completion token, an fp32 log-softmax over the full vocabulary computed in chunks
    over T, plus the entropy (no grad). Used for the new, old and reference policies. Returns two [B, T] tensors."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)  # [B, P+T]
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    T = batch["completion_ids"].shape[1]
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    # The model's own forward returns the final hidden states; its lm_head runs on one position only
    # (logits_to_keep=1), and the chunks below apply it to the rest.
    kw = dict(attention_mask=attn, position_ids=position_ids, use_cache=False, logits_to_keep=1)
    out = model(input_ids=ids, output_hidden_states=True, **kw)
    # Position s predicts token s+1, so completion token t is scored by the hidden state at t-1, the last prompt
    # position for t = 0: keep the last T+1 positions and drop the final one, which scores no completion token.
    h = out.hidden_states[-1][:, -(T + 1) : -1]  # [B, T, H], after the final norm
    lm_head, scale = model.get_output_embeddings(), temperature if temperature > 0 else 1.0  # T = 0 scored at T = 1
    chunks = []
    for s in range(0, T, LOGPROB_CHUNK):  # checkpointed: the backward pass recomputes a chunk's logits too
        part = slice(s, s + LOGPROB_CHUNK)
        chunk = (h[:, part], lm_head, batch["completion_ids"][:, part], scale)
        chunks.append(checkpoint(chunk_logprobs, *chunk, use_reentrant=False))
    logp, entropy = (torch.cat(x, 1) for x in zip(*chunks))  # [B, T] each
    return logp, entropy


def group_advantages(rewards, group_size: int, scale: bool = True):
    """rewards: [N*G] grouped by prompt -> [N*G] advantages (R - mean) / (std + 1e-6), std unbiased
    (verl core_algos.py::compute_grpo_outcome_advantage). Dr. GRPO (scale=False): R - mean."""
    r = rewards.view(-1, group_size)  # [N, G]
    a = r - r.mean(1, keepdim=True)
    if scale:
        a = a / (r.std(1, keepdim=True) + 1e-6)
    return a.view(-1)


def grpo_loss(
    logp,
    logp_old,
    logp_ref,
    advantages,
    mask,
    clip_eps=0.2,
    clip_eps_high=None,
    dual_clip=3.0,
    beta=0.0,
    loss_agg_mode="token-mean",
    max_len=None,
    token_total=None,
    seq_total=None,
) -> tuple:
    """verl's GRPO policy loss (core_algos.py::compute_policy_loss, kl_penalty, agg_loss).
    logp, logp_old, logp_ref, mask: [B, T]; advantages: [B]. Returns the scalar loss and detached statistics.
    token_total, seq_total: the valid tokens and the rows of the whole mini-batch, over all its micro-batches
    (default: this call's), so that the micro-batch losses sum to the mini-batch's mean loss."""
    adv = advantages[:, None]  # [B, 1], broadcast over tokens
    ratio = torch.exp(logp - logp_old)  # [B, T]
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + hi))  # PPO clip
    pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip), pg)  # dual clip: bounded loss when A < 0
    d = logp_ref - logp if beta > 0 else torch.zeros_like(logp)  # no reference model when beta = 0
    kl = (torch.exp(d) - d - 1).clamp(-10, 10)  # k3 ("low_var_kl"): >= 0, 0 when equal; clamped as in verl
    per_token, m = pg + beta * kl, mask.float()
    seq_sum, seq_len = (per_token * m).sum(1), m.sum(1)  # [B]
    tokens = m.sum() if token_total is None else token_total
    rows = m.shape[0] if seq_total is None else seq_total
    if loss_agg_mode == "token-mean":  # verl/DAPO: every valid token of the mini-batch weighs the same
        loss = seq_sum.sum() / max(tokens, 1)
    elif loss_agg_mode == "seq-mean-token-mean":  # original GRPO: 1/|o_i| per sequence
        loss = (seq_sum / seq_len.clamp(min=1)).sum() / rows
    elif loss_agg_mode == "seq-mean-token-sum":
        loss = seq_sum.sum() / rows
    else:  # "seq-mean-token-sum-norm", Dr. GRPO: a constant denominator B * max_len
        loss = seq_sum.sum() / (rows * (max_len or m.shape[1]))
    clipped = ((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + hi) & (adv > 0))

    def masked_mean(x):
        return ((x * m).sum() / m.sum().clamp(min=1)).detach()

    return loss, {"kl": masked_mean(kl), "clip_ratio/region_mean": masked_mean(clipped.float())}


def split_batch(batch: dict, size: int) -> list:
    """Consecutive slices of `size` rows of every tensor in the batch: the mini- and micro-batches."""
    starts = range(0, len(batch["advantages"]), size)
    return [{k: v[i : i + size] for k, v in batch.items()} for i in starts]


def old_and_ref_logprobs(model, ref_model, batch: dict, args: Args, device) -> tuple:
    """log pi_old and log pi_ref of every completion token, [B, T] each, scored by the training model on the
    update's micro-batches (so the first ratio is exactly 1); pi_ref is pi_old when there is no KL term."""
    micros = split_batch(batch, micro_size(args))
    score = dict(temperature=args.temperature)
    with torch.no_grad(), autocast(args, device):
        logp_old = torch.cat([token_logprobs(model.train(), mb, **score)[0] for mb in micros])
        if ref_model is None:
            return logp_old, logp_old
        return logp_old, torch.cat([token_logprobs(ref_model, mb, **score)[0] for mb in micros])


def ppo_update(model, optimizer, batch: dict, args: Args, device, step: int = 0) -> tuple:
    """PPO mini-batches, one optimizer step each; micro-batches accumulate gradients. The loss is normalised by the
    whole mini-batch (all its micro-batches), so splitting a mini-batch does not change the step.
    Returns the per-micro-batch statistics and the last gradient norm."""
    G, stats = args.group_size, []
    loss_kw = dict(clip_eps=args.clip_eps, clip_eps_high=args.clip_eps_high, dual_clip=args.dual_clip, beta=args.beta)
    loss_kw.update(loss_agg_mode=args.loss_agg_mode, max_len=args.max_new_tokens)
    for mini in split_batch(batch, args.mini_batch_prompts * G):
        loss_kw.update(token_total=mini["completion_mask"].sum().item(), seq_total=len(mini["advantages"]))
        optimizer.zero_grad()
        micros = split_batch(mini, micro_size(args))
        for mb in micros:
            with autocast(args, device):
                logp, entropy = token_logprobs(model, mb, args.temperature)
            loss, st = grpo_loss(
                logp, mb["logp_old"], mb["logp_ref"], mb["advantages"], mb["completion_mask"], **loss_kw
            )
            if not torch.isfinite(loss):
                raise SystemExit(f"error: non-finite loss at step {step}: lower --learning-rate or use --dtype float32")
            loss.backward()  # gradients accumulate over the micro-batches: their losses sum to the mini-batch's
            st["entropy"] = entropy[mb["completion_mask"].bool()].mean()
            stats.append({"loss": loss.detach() * len(micros), **st})  # averages to the mini-batch loss
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
    return stats, grad_norm


def autocast(args: Args, device):
    """--dtype bfloat16: bf16 matmuls over fp32 weights, whose small updates bf16 weights would round away."""
    return torch.autocast(device.type, torch.bfloat16, enabled=args.dtype == "bfloat16")


def main(args: Args) -> dict:
    validate(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CUDA_VISIBLE_DEVICES= forces the CPU
    path = args.model_name_or_path or build_toy_base(args)
    random.seed(args.seed)  # after the toy build, which seeds itself: a cached and a fresh toy give the same run
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = True
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0][:100]
        fail("--model-name-or-path", f"cannot load {path!r} ({reason}): pass a Hub id or a model folder")
    tok.pad_token = tok.pad_token or tok.eos_token  # Llama has none; masks, not pad ids, mark the padding here
    train_rows, eval_rows, n_skipped = load_data(args, tok)

    def load_model(dtype=torch.float32):  # fp32 master weights; --dtype sets the compute dtype
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    model = load_model()  # after the data checks: bad input fails before a large download
    eos = model.generation_config.eos_token_id  # int or list (Llama-3 instruct stops at <|eot_id|> too)
    eos_ids = {tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
    stop_ids = torch.tensor(sorted(eos_ids), device=device)
    run_name = f"{os.path.basename(path.rstrip('/'))}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join(args.output_dir, run_name)
    if args.track:
        import wandb

        project = dict(project=args.wandb_project_name, entity=args.wandb_entity)
        wandb.init(**project, name=run_name, config=vars(args), sync_tensorboard=True, save_code=True)
    writer = SummaryWriter(run_dir)
    table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
    print(f"{run_name}: {len(train_rows)} train / {len(eval_rows)} eval prompts, {n_skipped} skipped as too long")
    generator = torch.Generator(device).manual_seed(args.seed)  # every sampling draw: reproducible rollouts
    summary = {"run_dir": run_dir, "skipped_prompts": n_skipped}

    def run_eval(step: int) -> dict:
        """n samples per held-out problem with the eval sampling flags: Pass@k (--eval-grader), both accuracies.
        Returns them by name and writes them to TensorBoard and to RUN_DIR/eval_step<step>.json."""
        t0, n = time.time(), args.eval_samples
        todo = []  # each problem n times in a row
        for r in eval_rows:
            todo += [r] * n
        max_new, chunk = args.eval_max_new_tokens or args.max_new_tokens, args.rollout_batch_size
        eval_generator = torch.Generator(device).manual_seed(args.seed)  # its own draws: training's stay as they were
        sampling = dict(temperature=args.eval_temperature, top_k=args.eval_top_k, top_p=args.eval_top_p)
        with autocast(args, device):
            out = generate(model.eval(), tok, todo, chunk, max_new, stop_ids, eval_generator, **sampling)
        counts = correct_counts(decode(tok, out), todo, n)
        res = grade(counts, n, args.eval_grader)
        for k, v in res.items():
            writer.add_scalar(f"eval/{k}", v, step)
        tqdm.write(f"eval step {step}: " + " ".join(f"{k}={v:.3f}" for k, v in res.items()))
        record = dict(run=run_name, step=step, model=path, n=n, problems=len(eval_rows), time=time.time() - t0)
        record.update(sampling, grader=args.eval_grader, **res)
        with open(os.path.join(run_dir, f"eval_step{step}.json"), "w") as f:
            json.dump(record, f, indent=1)
        return res

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)  # fp32 states
    summary["eval_before"] = run_eval(0)
    if args.eval_only:
        writer.close()
        return summary
    ref_model = None  # a frozen copy of the initial policy, loaded only when the KL term is on
    if args.beta > 0:
        ref_model = load_model(getattr(torch, args.dtype)).eval().requires_grad_(False)  # no master weights needed
    G, order = args.group_size, []
    train_sampling, t_start = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p), time.time()
    for step in (pbar := tqdm(range(1, args.total_steps + 1), desc="GRPO")):
        # 1. Rollout: G completions for each of prompts_per_step prompts, sampled from the current policy
        t0 = time.time()
        if len(order) < args.prompts_per_step:  # a fresh shuffle per epoch over the training prompts
            order += random.sample(range(len(train_rows)), len(train_rows))
        prompts = [train_rows[order.pop()] for _ in range(args.prompts_per_step)]
        rows = []  # [B*G]: each prompt G times in a row
        for prompt in prompts:
            rows += [prompt] * G
        max_new, chunk = args.max_new_tokens, args.rollout_batch_size
        with autocast(args, device):
            batch = generate(model.eval(), tok, rows, chunk, max_new, stop_ids, generator, **train_sampling)
        texts = decode(tok, batch)
        rewards = torch.tensor([math_reward(t, r["answer"]) for t, r in zip(texts, rows)])  # [B*G]
        batch["advantages"] = group_advantages(rewards, G, not args.dr_grpo).to(device)  # [B*G]
        gen_time, gen_tokens = time.time() - t0, batch["completion_mask"].sum().item()

        # 2. Old and reference log-probs, recomputed by the training model (not the sampler's numbers)
        t0 = time.time()
        batch["logp_old"], batch["logp_ref"] = old_and_ref_logprobs(model, ref_model, batch, args, device)

        # 3. PPO mini-batches, one optimizer step each
        stats, grad_norm = ppo_update(model, optimizer, batch, args, device, step)
        train_time = time.time() - t0

        # 4. Logging with TRL's metric names
        group_std = rewards.view(-1, G).std(1)
        stopped = torch.isin(batch["completion_ids"], stop_ids).any(1).float()  # [B*G]: reached a stop token
        log = {k: torch.stack([s[k] for s in stats]).mean().item() for k in stats[0]}
        log["reward"] = rewards.mean().item()
        log["reward_std"] = group_std.mean().item()
        log["frac_reward_zero_std"] = (group_std == 0).float().mean().item()
        log["completions/mean_length"] = batch["completion_mask"].sum(1).float().mean().item()
        log["completions/clipped_ratio"] = 1 - stopped.mean().item()
        log["grad_norm"] = grad_norm.item()
        log["perf/gen_time"] = gen_time
        log["perf/train_time"] = train_time
        log["perf/gen_tokens_per_s"] = gen_tokens / gen_time
        for k, v in log.items():
            writer.add_scalar(k, v, step)
        pbar.set_postfix(reward=f"{log['reward']:.3f}", step_s=f"{gen_time + train_time:.1f}")
        if args.log_completions_every and step % args.log_completions_every == 0:
            samples = []  # the first completion of the first 4 groups
            for i in range(0, min(4 * G, len(rows)), G):
                samples.append(
                    f"{rows[i]['problem']} (answer {rows[i]['answer']}, reward {rewards[i]:.0f}):\n\n    {texts[i]}"
                )
            writer.add_text("completions", "\n\n".join(samples), step)
        if args.eval_every and step % args.eval_every == 0 and step < args.total_steps:
            run_eval(step)
        summary.update(log)

    summary.update(eval_after=run_eval(args.total_steps), train_wall_time=time.time() - t_start)
    save_pretrained_atomic(model, tok, os.path.join(run_dir, "final"))  # a from_pretrained folder
    writer.close()
    return summary


# Task: problems, the paper's prompt, the rule-based reward
PROMPT_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."


def load_data(args: Args, tok) -> tuple:
    """Training and held-out rows with their prompt ids: the toy task unless --dataset / --eval-dataset replace it.
    Returns (train rows, eval rows, the number of prompts skipped as longer than --max-prompt-length)."""
    train_raw, eval_raw = toy_splits(args)
    if args.dataset and not (args.eval_only and args.eval_dataset):  # --eval-only needs no training data
        train_raw = load_rows(args.dataset, "--dataset", args)
        if not args.eval_dataset:  # hold out the last eval_problems rows (if any rows remain for training)
            n = args.eval_problems
            train_raw, eval_raw = train_raw[:-n] or train_raw, train_raw[-n:]
    if args.eval_dataset:
        eval_raw = load_rows(args.eval_dataset, "--eval-dataset", args)
    if args.eval_only:
        train_raw = []
    train_rows, skipped = render_prompts(tok, train_raw, args.max_prompt_length)
    eval_rows, eval_skipped = render_prompts(tok, eval_raw[: args.eval_problems], args.max_prompt_length)
    if not eval_rows or not (train_rows or args.eval_only):
        fail("--max-prompt-length", f"every prompt is longer than {args.max_prompt_length} tokens: raise it")
    return train_rows, eval_rows, skipped + eval_skipped


def toy_splits(args: Args) -> tuple:
    """+/- chains with worked solutions (one line per operation): 4000 training and 1000 disjoint held-out problems.
    The teacher slips after </think>, so RL improves the answer; --toy-branching moves the slip inside <think>."""

    def draw(n: int, seed: int) -> list:
        rng, rows = random.Random(seed), []
        for _ in range(n):
            if args.toy_branching:
                rows.append(branching_row(rng, args))
                continue
            value = rng.randint(1, args.toy_max_operand)
            text, steps, prev = str(value), [], value
            for _ in range(args.toy_num_ops):
                b = rng.randint(1, args.toy_max_operand)
                op = rng.choice("+-") if value >= b else "+"  # every intermediate result stays non-negative
                new = value + b if op == "+" else value - b
                steps.append(f"{value}{op}{b}={new}")
                text, prev, value = text + op + str(b), value, new
            # the sloppy teacher boxes the line before the last
            boxed = prev if rng.random() < args.toy_teacher_slip else value
            solution = "\n".join(steps) + f"\n</think> \\boxed{{{boxed}}}"
            rows.append({"problem": f"Compute {text}.", "answer": str(value), "solution": solution})
        return rows

    held_out = draw(1000, seed=1)
    seen = {r["problem"] for r in held_out}
    return [r for r in draw(4000, seed=0) if r["problem"] not in seen], held_out


def branching_row(rng, args: Args) -> dict:
    """A sum of toy_num_ops + 1 terms added in a random order, so several next lines are right: "a+b=s", "+c=s".
    A line's result is one too high with a chance that depends on the path (toy_branching_slip[1] if the line's true
    result has two digits, else [0]: small terms first slip less); the next lines build on it, and the answer boxes
    the last line."""
    terms = [rng.randint(1, args.toy_max_operand) for _ in range(args.toy_num_ops + 1)]
    order, lines = rng.sample(terms, len(terms)), []
    total = order[0]
    for i, b in enumerate(order[1:]):
        total += b
        total += rng.random() < args.toy_branching_slip[total >= 10]  # the slip, carried forward
        lines.append(f"{order[0] if i == 0 else ''}+{b}={total}")
    solution = "\n".join(lines) + f"\n</think> \\boxed{{{total}}}"
    return {"problem": f"Compute {'+'.join(map(str, terms))}.", "answer": str(sum(terms)), "solution": solution}


def load_rows(path: str, flag: str, args: Args) -> list:
    """Rows {problem, answer} from a local .jsonl/.json/.parquet file or a Hub dataset id."""
    ext = os.path.splitext(path)[1]
    if os.path.isfile(path) and ext == ".parquet":
        import pyarrow.parquet as pq

        raw = pq.read_table(path).to_pylist()
    elif os.path.isfile(path) and ext in (".jsonl", ".json"):
        with open(path) as f:
            raw = [json.loads(line) for line in f if line.strip()] if ext == ".jsonl" else json.load(f)
    elif os.path.exists(path) or ext or path.count("/") != 1:
        fail(flag, f"{path!r} is not an existing .jsonl/.json/.parquet file nor a Hub dataset id (owner/name)")
    else:
        import datasets  # imported here: it is slow to import and only Hub ids need it

        try:
            raw = list(datasets.load_dataset(path, split="test" if flag == "--eval-dataset" else "train"))
        except (OSError, ValueError) as e:  # unknown id, no network, HF_HUB_OFFLINE=1 (ConnectionError is an OSError)
            reason = str(e).splitlines()[0][:120]
            fail(flag, f"cannot load the Hub dataset {path!r} ({reason}): check the id and the network, or pass a file")
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], dict):
        fail(flag, f"{path!r} holds no rows: expected a list of objects with a problem and an answer field")
    pf = args.problem_field or next((k for k in ("problem", "question", "prompt", "query") if k in raw[0]), None)
    af = args.answer_field or next((k for k in ("answer", "final_answer", "solution") if k in raw[0]), None)
    for field, name in ((pf, "problem"), (af, "answer")):
        if field not in raw[0]:
            found = ", ".join(raw[0])
            fail(f"--{name}-field", f"{path!r} has no {name} field {field or ''} (fields: {found}): pass the field")
    rows = []
    for r in raw:
        a = str(r.get(af) or "")
        if "####" in a:  # GSM8K: "reasoning #### 42"
            a = a.split("####")[-1]
        else:  # MATH: a worked solution whose last \boxed{} holds the answer; a bare answer stays as it is
            a = last_boxed(a) or a
        if isinstance(r.get(pf), str) and r[pf].strip() and a.strip():
            rows.append({"problem": r[pf], "answer": a.strip()})
    if not rows:
        fail(flag, f"{path!r} has no row with a non-empty {pf!r} and {af!r}: check the field names")
    return rows


def render_prompts(tok, rows: list, max_len: int) -> tuple:
    """Paper prompt through the chat template; drops (and counts) rows longer than max_len tokens."""
    if tok.chat_template is None:
        fail("--model-name-or-path", "the tokenizer has no chat template: use an instruct/chat model or add one")
    kept = []
    for r in rows:
        chat = [{"role": "user", "content": f"{r['problem']} {PROMPT_SUFFIX}"}]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]  # the template already holds any BOS
        if len(ids) <= max_len:
            kept.append({**r, "prompt_ids": ids})
    return kept, len(rows) - len(kept)


def last_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces matched; None when there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    brace = text.find("{", start)
    if start < 0 or brace < 0:
        return None
    depth = 0
    for k in range(brace, len(text)):
        if text[k] in "{}":
            depth += 1 if text[k] == "{" else -1
        if depth == 0:
            return text[brace + 1 : k]
    return None  # unbalanced braces


def normalize_answer(s: str) -> str:
    """Hendrycks-MATH `strip_string` normalisation (plus \\text{} units after a number and 1,000 -> 1000)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    for junk in ("\\left", "\\right", "^{\\circ}", "^\\circ", "\\$", "$", "\\%", "%"):
        s = s.replace(junk, "")
    s = re.sub(r"^(.*\d)\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]+\}$", r"\1", s.strip())  # "5 \text{ cm}" -> "5"
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = "0" + s if s.startswith(".") else s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0].strip()) <= 2:  # "x = 5" -> "5"
        s = sides[1]
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s).replace(" ", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s) else s  # 1,000 -> 1000
    s = "\\frac{1}{2}" if s == "0.5" else s
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def math_reward(completion: str, answer: str) -> float:
    """Training reward (official verl reward_score/math_reward.py::compute_score): 1.0 if the last \\boxed{} of
    the completion equals the answer after normalisation, else 0.0."""
    boxed = last_boxed(completion)
    return float(boxed is not None and normalize_answer(boxed) == normalize_answer(answer))


# The official evaluation's math-verify settings for the model's answer (matheval.py::MATH500Evaluator.rule_judge)
ANSWER_EXTRACTION = [
    LatexExtractionConfig(
        normalization_config=NormalizationConfig(
            nits=False, malformed_operators=False, basic_latex=True, boxed="all", units=True
        ),
        boxed_match_priority=0,
        try_extract_without_anchor=False,
    ),
    ExprExtractionConfig(),
]
GRADER_TIMEOUT_S = 2  # per parse and per verify: math-verify's alarm stops an expression that would hang sympy


def eval_reward(completion: str, answer: str) -> float:
    """Evaluation grade: 1.0 if math-verify finds the last \\boxed{} of the completion equivalent to the answer.
    Gold is a plain expression when numeric (official GSM8K/AIME), else LaTeX in $...$ (official MATH-500/AMC)."""
    boxed = last_boxed(completion)
    if boxed is None:
        return 0.0
    # The gold itself is right even where the official answer settings cannot parse it (\frac43, 11\sqrt2)
    if boxed.split() == answer.split():
        return 1.0
    # Numeric means a plain number or one with thousands separators (1,000): a list such as 1,3 or -2,1 would be
    # read as the number 1.3, so it goes to the LaTeX parser, which makes it the set {1, 3}
    if re.fullmatch(r"-?\d*\.?\d+|-?\d{1,3}(,\d{3})+(\.\d+)?", answer):
        gold = parse(answer, [ExprExtractionConfig()], parsing_timeout=GRADER_TIMEOUT_S)
    else:
        gold = parse(f"${answer}$", [LatexExtractionConfig()], parsing_timeout=GRADER_TIMEOUT_S)
    # Only the last box is handed over: on a whole text the official regex spans from the first \boxed to the
    # last brace, so a completion with several boxes would be graded as the set of all of them.
    pred = parse(
        f"\\boxed{{{boxed}}}", ANSWER_EXTRACTION, extraction_mode="first_match", parsing_timeout=GRADER_TIMEOUT_S
    )
    return float(bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=GRADER_TIMEOUT_S))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k = 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), as a stable product; 1 when n - c < k."""
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k)) if n - c >= k else 1.0


def correct_counts(texts: list, rows: list, n: int) -> dict:
    """Per grader, the number of correct samples of each problem. texts, rows: n per problem, in turn."""
    counts = {"math-verify": [], "rule": []}
    for i in range(0, len(texts), n):
        pairs = list(zip(texts[i : i + n], rows[i : i + n]))
        counts["math-verify"].append(sum(eval_reward(t, r["answer"]) for t, r in pairs))
        counts["rule"].append(sum(math_reward(t, r["answer"]) for t, r in pairs))
    return counts


def grade(counts: dict, n: int, grader: str) -> dict:
    """Pass@k (k = 1, 2, 4, ..., n) under `grader` and both graders' accuracy, from correct_counts."""
    res = {}
    for k in sorted({2**j for j in range(n.bit_length())} | {n}):
        res[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in counts[grader]) / len(counts[grader])
    for name, c in counts.items():
        res[f"accuracy/{name}"] = sum(c) / (n * len(c))
    return res


def decode(tok, out: dict) -> list:
    """Completion texts (special tokens dropped), cut at the mask."""
    pairs = zip(out["completion_ids"], out["completion_mask"])
    return [tok.decode(ids[mask.bool()].tolist(), skip_special_tokens=True) for ids, mask in pairs]


# The toy base model (a real tokenizer and a real architecture, saved and loaded like a Hub model)
def toy_tokenizer() -> Qwen2Tokenizer:
    """A real byte-level BPE Qwen2 tokenizer (AutoTokenizer reloads it as is).

    256 byte symbols + merges for the prompt's words."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}  # "Ġ" is a space, "Ċ" a newline
    words = ["Compute", "user", "assistant", "boxed", "'s", "Ġ\\"]
    words += ["Ġ" + w for w in "Let think step by and output the final answer within".split()]
    merges = []  # spell each word left to right
    for w in words:
        for i in range(1, len(w)):
            if (w[:i], w[i]) not in merges:
                merges.append((w[:i], w[i]))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    vocab.update({t: len(vocab) + i for i, t in enumerate([a + b for a, b in merges] + specials)})
    # ChatML, R1-style: the reply opens thinking
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
    )
    special = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, chat_template=template, **special)
    tok.add_tokens([AddedToken(s, special=True) for s in specials])
    return tok


def build_toy_base(args: Args) -> str:
    """SFT a tiny Qwen2 on worked toy solutions once, save it atomically, return its folder (CPU, deterministic)."""
    cfg = {k: v for k, v in sorted(vars(args).items()) if k.startswith("toy_") and k != "toy_cache_dir"}
    if not args.toy_branching:  # the default toy's key predates the branching flags: its cached model keeps its path
        cfg = {k: v for k, v in cfg.items() if not k.startswith("toy_branching")}
    path = os.path.join(args.toy_cache_dir, "toy-base-" + hashlib.sha256(json.dumps(cfg).encode()).hexdigest()[:12])
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    torch.manual_seed(0)  # fixed, independent of --seed: every run of every GRPO script starts from these weights
    tok = toy_tokenizer()
    h = args.toy_hidden_size
    cfg = dict(vocab_size=len(tok), hidden_size=h, intermediate_size=4 * h, num_hidden_layers=args.toy_num_layers)
    cfg.update(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    cfg.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(Qwen2Config(**cfg))
    seqs = []  # (prompt ids, solution ids + EOS)
    for r in render_prompts(tok, toy_splits(args)[0], 10**9)[0]:
        seqs.append((r["prompt_ids"], tok(r["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]))

    def lr_factor(s: int) -> float:  # 20 warm-up steps, then a linear decay to 0
        return min(1.0, (s + 1) / 20) * (1 - s / args.toy_sft_steps)

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    rng = random.Random(0)
    for _ in tqdm(range(args.toy_sft_steps), desc="toy SFT", leave=False):
        batch = rng.sample(seqs, 64)
        L = max(len(p) + len(c) for p, c in batch)
        ids, labels = [], []
        for p, c in batch:  # right-padded to L; the loss covers the solution only
            pad = L - len(p) - len(c)
            ids.append(p + c + [tok.pad_token_id] * pad)
            labels.append([-100] * len(p) + c + [-100] * pad)
        ids, labels = torch.tensor(ids), torch.tensor(labels)  # [64, L]
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    save_pretrained_atomic(model, tok, path)
    return path


def save_pretrained_atomic(model, tok, path: str, state_dict=None):
    """Write to a temporary folder, then rename: a killed run never leaves a half-written checkpoint."""
    tmp = f"{path}.tmp{os.getpid()}"
    model.save_pretrained(tmp, state_dict=state_dict)
    tok.save_pretrained(tmp)
    if os.path.exists(path):  # a parallel run saved the same deterministic toy model first: keep that copy
        return shutil.rmtree(tmp)
    os.replace(tmp, path)


# The official training scripts (SofT-GRPO-deepscaler-8k*.sh): batch and optimizer, loss and lengths, data, eval
_PAPER = dict(learning_rate=1e-6, group_size=8, prompts_per_step=64, mini_batch_prompts=32, micro_batch_size=2)
_PAPER.update(beta=0.001, clip_eps=0.2, dual_clip=3.0, max_new_tokens=8192, total_steps=629)
_PAPER.update(dataset="agentica-org/DeepScaleR-Preview-Dataset", rollout_batch_size=32, gradient_checkpointing=True)
_PAPER.update(eval_dataset="HuggingFaceH4/MATH-500", eval_problems=500, eval_samples=32, eval_max_new_tokens=32768)
_PAPER.update(dtype="bfloat16")  # bf16 compute over fp32 masters; a GPU preset, memory table in docs/discrete_grpo.md
PRESETS = {
    "toy": {},
    "r1-distill-qwen-1.5b": dict(_PAPER, model_name_or_path="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", eval_every=40),
}


def cli(argv: Optional[list] = None) -> Args:
    """Apply --preset first, then let tyro parse every flag on top of it, so explicit flags win."""
    argv = sys.argv[1:] if argv is None else list(argv)
    preset = "toy"
    for i, arg in enumerate(argv):  # `--preset NAME` or `--preset=NAME`
        if arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
        elif arg == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
    if preset not in PRESETS:
        fail("--preset", f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return tyro.cli(Args, default=replace(Args(), preset=preset, **PRESETS[preset]), args=argv)


def fail(flag: str, msg: str):
    """Bad input: one line naming the flag and the fix, exit code 2, no traceback."""
    print(f"error: {flag}: {msg}", file=sys.stderr)
    raise SystemExit(2)


def validate(args: Args):
    if args.group_size < 2:
        fail("--group-size", f"is {args.group_size}: GRPO compares completions within a group, use 2 or more")
    if args.prompts_per_step % args.mini_batch_prompts:
        msg = f"{args.mini_batch_prompts} does not divide --prompts-per-step {args.prompts_per_step}"
        fail("--mini-batch-prompts", msg)
    mini_batch = args.mini_batch_prompts * args.group_size  # completions per mini-batch
    if mini_batch % micro_size(args):
        msg = f"{args.micro_batch_size} does not divide a mini-batch of {mini_batch} completions"
        fail("--micro-batch-size", msg)


def micro_size(args: Args) -> int:
    """Completions per forward/backward: --micro-batch-size, capped at the mini-batch."""
    return min(args.micro_batch_size, args.mini_batch_prompts * args.group_size)


if __name__ == "__main__":
    main(cli())
