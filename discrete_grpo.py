"""Discrete-token GRPO for LLM reasoning: the baseline of SofT-GRPO (Zheng & Lee, arXiv 2511.06411).

The loss is verl's GRPO as the SofT-GRPO code runs it (group advantages, PPO dual-clip, k3 KL, token-mean);
rollouts come from our own KV-cache decode loop, so `sofT_grpo.py` (its child) swaps one sampling step.
Notes: docs/discrete_grpo.md
    python discrete_grpo.py                                   # toy task + tiny model, 2-core CPU, ~6 min
    python discrete_grpo.py --preset r1-distill-qwen-1.5b     # the paper's setting, one GPU
    python discrete_grpo.py --model-name-or-path ./ckpt --dataset math500.jsonl --eval-only
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
from tokenizers import AddedToken, pre_tokenizers
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
PresetName = Literal["toy", "r1-distill-qwen-1.5b", "llama-3.2-3b-instruct", "r1-distill-qwen-7b"]


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # the name of this experiment
    seed: int = 1  # seed of sampling and data order (the toy base model has its own fixed seed)
    track: bool = False  # if toggled, this experiment will be tracked with Weights and Biases
    wandb_project_name: str = "softgrpo"  # the wandb's project name
    wandb_entity: Optional[str] = None  # the entity (team) of wandb's project
    preset: PresetName = "toy"  # named setting applied first (explicit flags win): the toy or a paper base model
    output_dir: str = "runs"  # TensorBoard logs, eval JSON and checkpoints go to OUTPUT_DIR/<run_name>
    save_every: int = 0  # save_pretrained a checkpoint every N steps (0: only the final model)
    eval_every: int = 0  # evaluate every N steps (0: only before and after training)
    eval_only: bool = False  # evaluate the model and exit without training
    log_completions_every: int = 10  # write a few sample completions as text to TensorBoard every N steps
    # Model and data
    model_name_or_path: Optional[str] = None  # Hub id or local folder; None: the toy base model (built once, cached)
    dataset: Optional[str] = None  # .jsonl/.json/.parquet file or Hub dataset id (needs `datasets`); None: toy task
    eval_dataset: Optional[str] = None  # held-out problems; None: toy eval split, or the last rows of --dataset
    problem_field: Optional[str] = None  # problem text field (None: auto-detect problem/question/prompt/query)
    answer_field: Optional[str] = (
        None  # answer field (None: answer/final_answer/solution; `#### n` and \\boxed{} unwrapped)
    )
    max_prompt_length: int = 1024  # longer prompts (tokens, after the chat template) are skipped and counted
    dtype: Literal["float32", "bfloat16"] = (
        "float32"  # policy weights (bf16 can swallow lr-1e-6 updates; log-softmax is fp32)
    )
    gradient_checkpointing: bool = False  # trade compute for memory in the training forward pass
    # Toy task and toy base model (used when --model-name-or-path / --dataset are not given)
    toy_num_ops: int = 2  # difficulty: number of +/- operations per problem
    toy_max_operand: int = 9  # operands are drawn from 1..toy_max_operand
    toy_hidden_size: int = 96  # hidden size of the tiny Qwen2 model
    toy_num_layers: int = 3  # decoder layers of the tiny Qwen2 model
    toy_sft_steps: int = 600  # supervised warm-start steps on worked solutions
    toy_teacher_slip: float = 0.5  # fraction of SFT solutions that box the previous line's result (headroom for RL)
    toy_cache_dir: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")  # toy base model cache
    # GRPO
    total_steps: int = 60  # rollout + update steps
    learning_rate: float = 1e-4  # AdamW learning rate (the paper: 1e-6)
    max_grad_norm: float = 1.0  # gradient clipping norm
    group_size: int = 8  # G: completions sampled per prompt
    prompts_per_step: int = 16  # prompts per rollout step (the paper: 64)
    mini_batch_prompts: int = 8  # prompts per PPO mini-batch = per optimizer step (the paper: 32, 2 updates per step)
    micro_batch_size: int = 64  # completions per forward/backward; gradients accumulate over a mini-batch
    rollout_batch_size: int = 128  # completions decoded together (bounds the KV-cache memory), in training and eval
    max_new_tokens: int = 48  # maximum completion length in training
    temperature: float = 1.0  # sampling temperature of training rollouts (log-probs use the same one)
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
    eval_temperature: float = 0.6  # eval sampling temperature (the paper: 0.6 for discrete models)
    eval_top_k: int = 30  # eval top-k (the paper: 30)
    eval_top_p: float = 0.95  # eval top-p (the paper: 0.95)
    eval_max_new_tokens: Optional[int] = None  # maximum completion length at evaluation (None: --max-new-tokens)


_PAPER = dict(
    learning_rate=1e-6,
    group_size=8,
    prompts_per_step=64,
    mini_batch_prompts=32,
    micro_batch_size=2,
    beta=0.001,
    clip_eps=0.2,
    dual_clip=3.0,
    max_new_tokens=8192,
    total_steps=629,
    dataset="agentica-org/DeepScaleR-Preview-Dataset",
    rollout_batch_size=64,
    eval_dataset="HuggingFaceH4/MATH-500",
    eval_problems=500,
    eval_samples=32,
    eval_max_new_tokens=32768,
    gradient_checkpointing=True,
)
PRESETS = {
    "toy": {},
    "r1-distill-qwen-1.5b": dict(_PAPER, model_name_or_path="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", eval_every=40),
    "llama-3.2-3b-instruct": dict(_PAPER, model_name_or_path="meta-llama/Llama-3.2-3B-Instruct", eval_every=20),
    "r1-distill-qwen-7b": dict(
        _PAPER,
        model_name_or_path="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        eval_every=20,
        micro_batch_size=1,
        dtype="bfloat16",
    ),
}  # fp32 weights + AdamW of a 7B model do not fit one 80 GB GPU


def cli(argv: Optional[list] = None) -> Args:
    """Apply --preset first, then let tyro parse every flag on top of it, so explicit flags win."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pairs = [a.split("=", 1) if "=" in a else [a, b] for a, b in zip(argv, argv[1:] + [""])]
    preset = next((v for k, v in pairs if k == "--preset"), "toy")
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
        fail(
            "--mini-batch-prompts",
            f"{args.mini_batch_prompts} does not divide --prompts-per-step {args.prompts_per_step}",
        )
    if (args.mini_batch_prompts * args.group_size) % args.micro_batch_size:
        fail(
            "--micro-batch-size",
            f"{args.micro_batch_size} does not divide a mini-batch of "
            f"{args.mini_batch_prompts * args.group_size} completions",
        )


# Task: problems, the paper's prompt, the rule-based reward
PROMPT_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."


def toy_splits(args: Args) -> tuple:
    """+/- chains with worked solutions (one line per operation): 4000 training and 1000 disjoint held-out problems."""

    def draw(n: int, seed: int) -> list:
        rng, rows = random.Random(seed), []
        for _ in range(n):
            value = rng.randint(1, args.toy_max_operand)
            text, steps, prev = str(value), [], value
            for _ in range(args.toy_num_ops):
                b = rng.randint(1, args.toy_max_operand)
                op = rng.choice("+-") if value >= b else "+"  # every intermediate result stays non-negative
                new = value + b if op == "+" else value - b
                steps.append(f"{value}{op}{b}={new}")
                text, prev, value = text + op + str(b), value, new
            boxed = (
                prev if rng.random() < args.toy_teacher_slip else value
            )  # the sloppy teacher boxes the line before the last
            rows.append(
                {
                    "problem": f"Compute {text}.",
                    "answer": str(value),
                    "solution": "\n".join(steps) + f"\n</think> \\boxed{{{boxed}}}",
                }
            )
        return rows

    held_out = draw(1000, seed=1)
    seen = {r["problem"] for r in held_out}
    return [r for r in draw(4000, seed=0) if r["problem"] not in seen], held_out


def last_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces matched; None when there is none."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    j, depth = text.find("{", i), 0
    for k in range(j, len(text) if min(i, j) >= 0 else j):  # empty when there is no box
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j + 1 : k]
    return None


def normalize_answer(s: str) -> str:
    """Hendrycks-MATH `strip_string` normalisation (plus \\text{} units after a number and 1,000 -> 1000)."""
    for a, b in (
        ("\n", ""),
        ("\\!", ""),
        ("\\\\", "\\"),
        ("tfrac", "frac"),
        ("dfrac", "frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\%", ""),
        ("%", ""),
    ):
        s = s.replace(a, b)
    s = re.sub(r"^(.*\d)\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]+\}$", r"\1", s.strip())  # "5 \text{ cm}" -> "5"
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = "0" + s if s.startswith(".") else s
    s = s.split("=")[1] if len(s.split("=")) == 2 and len(s.split("=")[0].strip()) <= 2 else s  # "x = 5" -> "5"
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s).replace(" ", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s) else s  # 1,000 -> 1000
    s = "\\frac{1}{2}" if s == "0.5" else s
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def math_reward(completion: str, answer: str) -> float:
    """1.0 if the last \\boxed{} of the completion equals the answer after normalisation, else 0.0."""
    boxed = last_boxed(completion)
    return float(boxed is not None and normalize_answer(boxed) == normalize_answer(answer))


def load_rows(path: str, flag: str, args: Args) -> list:
    """Rows {problem, answer} from a local .jsonl/.json/.parquet file or a Hub dataset id."""
    ext = os.path.splitext(path)[1]
    if os.path.isfile(path) and ext in (".jsonl", ".json", ".parquet"):
        if ext == ".parquet":
            import pyarrow.parquet as pq

            raw = pq.read_table(path).to_pylist()
        else:
            with open(path) as f:
                raw = [json.loads(line) for line in f if line.strip()] if ext == ".jsonl" else json.load(f)
    elif os.path.exists(path) or ext or path.count("/") != 1:
        fail(flag, f"{path!r} is not an existing .jsonl/.json/.parquet file nor a Hub dataset id (owner/name)")
    else:
        try:
            import datasets
        except ImportError:
            fail(
                flag,
                f"{path!r} is a Hub id but `datasets` is not installed: pip install datasets, or pass a local file",
            )
        raw = list(datasets.load_dataset(path, split="test" if flag == "--eval-dataset" else "train"))
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], dict):
        fail(flag, f"{path!r} holds no rows: expected a list of objects with a problem and an answer field")
    pf = args.problem_field or next((k for k in ("problem", "question", "prompt", "query") if k in raw[0]), None)
    af = args.answer_field or next((k for k in ("answer", "final_answer", "solution") if k in raw[0]), None)
    for field, name in ((pf, "problem"), (af, "answer")):
        if field not in raw[0]:
            fail(
                f"--{name}-field",
                f"{path!r} has no {name} field {field or ''} (fields: {', '.join(raw[0])}): pass --{name}-field NAME",
            )
    rows = []
    for r in raw:
        a = str(r.get(af) or "")
        a = a.split("####")[-1] if "####" in a else (last_boxed(a) or a)  # GSM8K "#### n", MATH solutions
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
        text = tok.apply_chat_template(
            [{"role": "user", "content": f"{r['problem']} {PROMPT_SUFFIX}"}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]  # the template already holds any BOS
        if len(ids) <= max_len:
            kept.append({**r, "prompt_ids": ids})
    return kept, len(rows) - len(kept)


# ALGO LOGIC: the toy base model (a real tokenizer and a real architecture, saved and loaded like a Hub model)
def toy_tokenizer() -> Qwen2Tokenizer:
    """A real byte-level BPE Qwen2 tokenizer (AutoTokenizer reloads it as is).

    256 byte symbols + merges for the prompt's words."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}  # "Ġ" is a space, "Ċ" a newline
    words = ["Compute", "user", "assistant", "boxed", "'s", "Ġ\\"] + [
        "Ġ" + w for w in "Let think step by and output the final answer within".split()
    ]
    merges = list(
        dict.fromkeys((w[:i], w[i]) for w in words for i in range(1, len(w)))
    )  # spell each word left to right
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    vocab.update({t: len(vocab) + i for i, t in enumerate([a + b for a, b in merges] + specials)})
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
    )  # R1-style: the reply opens thinking
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=template,
    )
    tok.add_tokens([AddedToken(s, special=True) for s in specials])
    return tok


def build_toy_base(args: Args) -> str:
    """SFT a tiny Qwen2 on worked toy solutions once, save it atomically, return its folder (CPU, deterministic)."""
    cfg = {k: v for k, v in sorted(vars(args).items()) if k.startswith("toy_") and k != "toy_cache_dir"}
    path = os.path.join(args.toy_cache_dir, "toy-base-" + hashlib.sha256(json.dumps(cfg).encode()).hexdigest()[:12])
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    torch.manual_seed(0)  # fixed, independent of --seed: every run (and sofT_grpo.py) starts from the same weights
    tok = toy_tokenizer()
    h = args.toy_hidden_size
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tok),
            hidden_size=h,
            intermediate_size=4 * h,
            num_hidden_layers=args.toy_num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=None,
        )
    )
    rows = render_prompts(tok, toy_splits(args)[0], 10**9)[0]
    seqs = [
        (r["prompt_ids"], tok(r["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]) for r in rows
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / args.toy_sft_steps))
    rng = random.Random(0)
    for _ in tqdm(range(args.toy_sft_steps), desc="toy SFT", leave=False):
        batch = rng.sample(seqs, 64)
        L = max(len(p) + len(c) for p, c in batch)
        ids = torch.tensor(
            [p + c + [tok.pad_token_id] * (L - len(p) - len(c)) for p, c in batch]
        )  # [64, L], right-padded
        labels = torch.tensor(
            [[-100] * len(p) + c + [-100] * (L - len(p) - len(c)) for p, c in batch]
        )  # loss on solutions only
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    save_pretrained_atomic(model, tok, path)
    return path


def save_pretrained_atomic(model, tok, path: str):
    """Write to a temporary folder, then rename: a killed run never leaves a half-written checkpoint."""
    tmp = f"{path}.tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if os.path.exists(path):  # a parallel run saved the same deterministic toy model first: keep that copy
        return shutil.rmtree(tmp)
    os.replace(tmp, path)


# Pure helpers: sampling, log-probs, advantages, loss, Pass@k
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
    cache = DynamicCache(config=model.config)  # passed as `cache=`: transformers 5.24 renamed `past_key_values`
    inputs, done, tokens = embed(prompt_ids), torch.zeros_like(prompt_ids[:, 0], dtype=torch.bool), []
    for _ in range(max_new_tokens):
        out = model(
            inputs_embeds=inputs, attention_mask=attn, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1
        )
        tok, next_embed, _ = sample_step(out.logits[:, -1].float(), embed, generator, **sampling)
        tokens.append(tok)
        done |= torch.isin(tok, stop_ids)
        if done.all():  # sync point (one per step on GPU); rows that finished early keep decoding, masked out below
            break
        inputs, attn, pos = next_embed[:, None], torch.cat([attn, attn.new_ones(attn.shape[0], 1)], 1), pos[:, -1:] + 1
    ids = torch.stack(tokens, 1)  # [B, T]
    stop = torch.isin(ids, stop_ids).long()
    return {"completion_ids": ids, "completion_mask": (stop.cumsum(1) - stop == 0).long()}


def token_logprobs(model, batch: dict, temperature: float) -> tuple:
    """log pi(a_t | s_t) of every completion token, fp32 log-softmax over the full vocabulary, plus the entropy
    (no grad). Used for the new, old and reference policies. Returns two [B, T] tensors."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)  # [B, P+T]
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    embeds = model.get_input_embeddings()(ids)  # [B, P+T, H]
    out = model(
        inputs_embeds=embeds,
        attention_mask=attn,
        position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
        use_cache=False,
        logits_to_keep=batch["completion_ids"].shape[1] + 1,
    )  # only the logits that score completion tokens
    logp_all = (out.logits[:, :-1].float() / temperature).log_softmax(-1)  # [B, T, V]: position t-1 scores token t
    logp = logp_all.gather(-1, batch["completion_ids"][..., None]).squeeze(-1)  # [B, T]
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # [B, T], logged only
    return logp, entropy


def group_advantages(rewards, group_size: int, scale: bool = True):
    """rewards: [N*G] grouped by prompt -> [N*G] advantages (R - mean) / (std + 1e-6).

    Dr. GRPO (scale=False): R - mean."""
    r = rewards.view(-1, group_size)  # [N, G]
    a = r - r.mean(1, keepdim=True)
    return (a / (r.std(1, keepdim=True) + 1e-6) if scale else a).view(-1)


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
) -> tuple:
    """verl's GRPO policy loss. logp, logp_old, logp_ref, mask: [B, T]; advantages: [B].
    Returns the scalar loss and a dict of detached statistics."""
    adv = advantages[:, None]  # [B, 1], broadcast over tokens
    ratio = torch.exp(logp - logp_old)  # [B, T]
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + hi))  # PPO clip
    pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip), pg)  # dual clip: bounded loss when A < 0
    d = logp_ref - logp if beta > 0 else torch.zeros_like(logp)  # no reference model when beta = 0
    kl = (torch.exp(d) - d - 1).clamp(-10, 10)  # k3 ("low_var_kl"): >= 0, 0 when equal; clamped as in verl
    per_token, m = pg + beta * kl, mask.float()
    seq_sum, seq_len = (per_token * m).sum(1), m.sum(1)  # [B]
    loss = {
        "token-mean": seq_sum.sum() / seq_len.sum().clamp(min=1),  # verl/DAPO: every token weighs the same
        "seq-mean-token-mean": (seq_sum / seq_len.clamp(min=1)).mean(),  # original GRPO: 1/|o_i| per sequence
        "seq-mean-token-sum": seq_sum.mean(),
        "seq-mean-token-sum-norm": seq_sum.sum() / (m.shape[0] * (max_len or m.shape[1])),
    }[loss_agg_mode]  # Dr. GRPO
    clipped = ((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + hi) & (adv > 0))
    masked_mean = lambda x: ((x * m).sum() / m.sum().clamp(min=1)).detach()  # noqa: E731
    return loss, {"kl": masked_mean(kl), "clip_ratio/region_mean": masked_mean(clipped.float())}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k = 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), as a stable product; 1 when n - c < k."""
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k)) if n - c >= k else 1.0


def decode(tok, out: dict) -> list:
    """Completion texts (special tokens dropped), cut at the mask."""
    return [
        tok.decode(i[m.bool()].tolist(), skip_special_tokens=True)
        for i, m in zip(out["completion_ids"], out["completion_mask"])
    ]


def generate(model, tok, rows: list, chunk: int, max_new_tokens: int, stop_ids, generator, **sampling) -> dict:
    """Rollouts for rows, decoded `chunk` rows at a time (bounds the KV-cache memory).

    Completions are right-padded to one T."""
    P, dev = max(len(r["prompt_ids"]) for r in rows), stop_ids.device
    prompt_ids = torch.tensor(
        [[tok.pad_token_id] * (P - len(r["prompt_ids"])) + r["prompt_ids"] for r in rows], device=dev
    )  # [B, P]
    prompt_mask = torch.tensor(
        [[0] * (P - len(r["prompt_ids"])) + [1] * len(r["prompt_ids"]) for r in rows], device=dev
    )  # left pad
    outs = [
        rollout(
            model,
            prompt_ids[i : i + chunk],
            prompt_mask[i : i + chunk],
            max_new_tokens,
            stop_ids,
            generator,
            **sampling,
        )
        for i in range(0, len(rows), chunk)
    ]
    T = max(o["completion_ids"].shape[1] for o in outs)
    pad = lambda x: torch.cat([x, x.new_zeros(x.shape[0], T - x.shape[1], *x.shape[2:])], 1)  # noqa: E731
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        **{k: torch.cat([pad(o[k]) for o in outs]) for k in outs[0]},
    }


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
        fail(
            "--model-name-or-path",
            f"cannot load {path!r} ({str(e).splitlines()[0][:100]}): pass a Hub id or a model folder",
        )
    tok.pad_token = tok.pad_token or tok.eos_token  # Llama has none; masks, not pad ids, mark the padding here
    if args.dataset is None:
        train_raw, eval_raw = toy_splits(args)
    else:  # without --eval-dataset the last eval_problems rows are held out (if any rows remain for training)
        rows, n = load_rows(args.dataset, "--dataset", args), args.eval_problems
        train_raw, eval_raw = (
            (rows, load_rows(args.eval_dataset, "--eval-dataset", args))
            if args.eval_dataset
            else (rows[:-n] or rows, rows[-n:])
        )
    train_rows, skipped = render_prompts(tok, train_raw, args.max_prompt_length)
    eval_rows, eval_skipped = render_prompts(tok, eval_raw[: args.eval_problems], args.max_prompt_length)
    if not eval_rows or not (train_rows or args.eval_only):
        fail("--max-prompt-length", f"every prompt is longer than {args.max_prompt_length} tokens: raise it")
    load = lambda: AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(device)  # noqa: E731
    model = load()  # after the data checks: bad input fails before a large download
    eos = model.generation_config.eos_token_id  # int or list (Llama-3 instruct stops at <|eot_id|> too)
    stop_ids = torch.tensor(
        sorted({tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}), device=device
    )
    run_name = f"{os.path.basename(path.rstrip('/'))}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join(args.output_dir, run_name)
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
    writer = SummaryWriter(run_dir)
    writer.add_text(
        "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    )
    print(
        f"{run_name}: {len(train_rows)} train / {len(eval_rows)} eval prompts, "
        f"{skipped + eval_skipped} skipped as too long"
    )
    generator = torch.Generator(device).manual_seed(
        args.seed
    )  # every sampling draw comes from here: reproducible rollouts
    summary = {"run_dir": run_dir, "skipped_prompts": skipped + eval_skipped}

    def run_eval(step: int) -> dict:
        """n samples per held-out problem with the eval sampling flags; Pass@1 (mean accuracy) and unbiased Pass@k."""
        t0, n, todo = time.time(), args.eval_samples, [r for r in eval_rows for _ in range(args.eval_samples)]
        out = generate(
            model.eval(),
            tok,
            todo,
            args.rollout_batch_size,
            args.eval_max_new_tokens or args.max_new_tokens,
            stop_ids,
            generator,
            temperature=args.eval_temperature,
            top_k=args.eval_top_k,
            top_p=args.eval_top_p,
        )
        c = (
            torch.tensor([math_reward(t, r["answer"]) for t, r in zip(decode(tok, out), todo)])
            .view(-1, n)
            .sum(1)
            .tolist()
        )  # [problems]
        res = {
            f"pass@{k}": sum(pass_at_k(n, ci, k) for ci in c) / len(c)
            for k in sorted({2**j for j in range(n.bit_length())} | {n})
        }
        [writer.add_scalar(f"eval/{k}", v, step) for k, v in res.items()]
        tqdm.write(f"eval step {step}: " + " ".join(f"{k}={v:.3f}" for k, v in res.items()))
        with open(os.path.join(run_dir, f"eval_step{step}.json"), "w") as f:
            json.dump(
                {
                    "run": run_name,
                    "step": step,
                    "model": path,
                    "n": args.eval_samples,
                    "problems": len(eval_rows),
                    "time": time.time() - t0,
                    "temperature": args.eval_temperature,
                    "top_k": args.eval_top_k,
                    "top_p": args.eval_top_p,
                    **res,
                },
                f,
                indent=1,
            )
        return res

    summary["eval_before"] = run_eval(0)
    if args.eval_only:
        return summary
    ref_model = load().eval().requires_grad_(False) if args.beta > 0 else None  # frozen copy of the initial policy
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    G, order, t_start = args.group_size, [], time.time()
    split = lambda b, n: [{k: v[i : i + n] for k, v in b.items()} for i in range(0, len(b["advantages"]), n)]  # noqa: E731
    for step in (pbar := tqdm(range(1, args.total_steps + 1), desc="GRPO")):
        # 1. Rollout: G completions for each of prompts_per_step prompts, sampled by the current policy
        t0 = time.time()
        if len(order) < args.prompts_per_step:  # a fresh shuffle per epoch over the training prompts
            order += random.sample(range(len(train_rows)), len(train_rows))
        rows = [r for r in [train_rows[order.pop()] for _ in range(args.prompts_per_step)] for _ in range(G)]  # [B*G]
        batch = generate(
            model.eval(),
            tok,
            rows,
            args.rollout_batch_size,
            args.max_new_tokens,
            stop_ids,
            generator,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
        )
        texts = decode(tok, batch)
        rewards = torch.tensor([math_reward(t, r["answer"]) for t, r in zip(texts, rows)])  # [B*G]
        batch["advantages"] = group_advantages(rewards, G, not args.dr_grpo).to(device)  # [B*G]
        gen_time, gen_tokens = time.time() - t0, batch["completion_mask"].sum().item()

        # 2. Old and reference log-probs, recomputed by the training model (not the sampler's numbers)
        t0 = time.time()
        with torch.no_grad():  # the same micro-batches as the update below, so the first ratio is exactly 1
            micros = split(batch, args.micro_batch_size)
            batch["logp_old"] = torch.cat(
                [token_logprobs(model.train(), mb, args.temperature)[0] for mb in micros]
            )  # [B*G, T]
            batch["logp_ref"] = (
                torch.cat([token_logprobs(ref_model, mb, args.temperature)[0] for mb in micros])
                if ref_model
                else batch["logp_old"]
            )

        # 3. PPO mini-batches, one optimizer step each; micro-batches accumulate gradients
        stats = []
        for mini in split(batch, args.mini_batch_prompts * G):
            optimizer.zero_grad()
            micros = split(mini, args.micro_batch_size)
            for mb in micros:
                logp, entropy = token_logprobs(model, mb, args.temperature)
                loss, st = grpo_loss(
                    logp,
                    mb["logp_old"],
                    mb["logp_ref"],
                    mb["advantages"],
                    mb["completion_mask"],
                    args.clip_eps,
                    args.clip_eps_high,
                    args.dual_clip,
                    args.beta,
                    args.loss_agg_mode,
                    args.max_new_tokens,
                )
                if not torch.isfinite(loss):
                    raise SystemExit(
                        f"error: non-finite loss at step {step}: lower --learning-rate or use --dtype float32"
                    )
                (loss / len(micros)).backward()  # as verl: each micro-batch loss divided by the accumulation count
                stats.append({"loss": loss.detach(), "entropy": entropy[mb["completion_mask"].bool()].mean(), **st})
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
        train_time = time.time() - t0

        # 4. Logging with TRL's metric names
        group_std = rewards.view(-1, G).std(1)
        log = {k: torch.stack([s[k] for s in stats]).mean().item() for k in stats[0]}
        log.update(
            {
                "reward": rewards.mean().item(),
                "reward_std": group_std.mean().item(),
                "frac_reward_zero_std": (group_std == 0).float().mean().item(),
                "completions/mean_length": batch["completion_mask"].sum(1).float().mean().item(),
                "grad_norm": grad_norm.item(),
                "completions/clipped_ratio": 1
                - torch.isin(batch["completion_ids"], stop_ids).any(1).float().mean().item(),
                "perf/gen_time": gen_time,
                "perf/train_time": train_time,
                "perf/gen_tokens_per_s": gen_tokens / gen_time,
            }
        )
        [writer.add_scalar(k, v, step) for k, v in log.items()]
        pbar.set_postfix(reward=f"{log['reward']:.3f}", step_s=f"{gen_time + train_time:.1f}")
        if args.log_completions_every and step % args.log_completions_every == 0:
            writer.add_text(
                "completions",
                "\n\n".join(
                    f"{r['problem']} (answer {r['answer']}, reward {w:.0f}):\n\n    {t}"
                    for r, t, w in list(zip(rows, texts, rewards.tolist()))[::G][:4]
                ),
                step,
            )
        if args.eval_every and step % args.eval_every == 0 and step < args.total_steps:
            run_eval(step)
        if args.save_every and step % args.save_every == 0:
            save_pretrained_atomic(model, tok, os.path.join(run_dir, f"checkpoint-{step}"))
        summary.update(log)

    summary.update(eval_after=run_eval(args.total_steps), train_wall_time=time.time() - t_start)
    save_pretrained_atomic(model, tok, os.path.join(run_dir, "final"))
    writer.close()
    return summary


if __name__ == "__main__":
    main(cli())
