"""What differs between a SofT-GRPO update and a discrete GRPO update, measured on the same prompts and models.

Both scripts are imported as modules from --repo-dir (their own rollout, token_logprobs and grpo_loss run, nothing
is re-implemented except the statistics). For each model given (the base model, a discrete GRPO checkpoint, a
SofT-GRPO checkpoint) it draws G rollouts per training prompt twice, once with each script's training sampler, and
reports, per kind of position:
  - the per-token gradient norm of log pi(a_t) w.r.t. the LOGITS z_t of the position that scores it (T = 1): at a
    soft position, SofT-GRPO's Gumbel log-density of the stored (ids, y); at the same positions, for contrast, the
    categorical log-prob of the token that was emitted there; discrete GRPO's categorical log-prob at its thinking
    positions (before </think>); and both scripts' answer positions (</think> and after);
  - the same norm w.r.t. the model PARAMETERS, on a subsample of positions (one backward pass per token);
  - at soft positions: how many of the k stored components pass the log q > -3 mask, and how many of the kept ones
    are clamped (g' = y - log q outside [-1.5, 3], so they give no gradient);
  - the gradient of the GRPO loss itself (token-mean, ratio 1, the scripts' grpo_loss) split into the part that
    comes from thinking positions and the part from answer positions: which tokens the update is made of;
  - for the base model: one optimizer step on the first mini-batch (the scripts' AdamW, lr, clip), then the clip
    fraction and k3 KL on the second mini-batch, as in a training step (two updates per rollout);
  - for a trained model: the k3 KL to the base model on its own method's rollouts, thinking vs answer positions.
--tb reads the training runs' TensorBoard scalars (clip ratio, KL, grad norm, soft/*) of rl_benchmark.py sweeps.

  python benchmarks/grpo_grad_diagnosis.py --repo-dir SNAP --discrete RUN/final --soft RUN/final \\
      --tb benchmarks/runs/grpo_toy --json diag.json -- --toy-cache-dir SNAP/.cache
Flags after `--` go to sofT_grpo.py's parser (toy settings, cache folder, sampling settings).
"""

import argparse
import copy
import importlib.util
import json
import math
import os
import random
import sys
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpo_thinking_stats import identical_thinking_groups, thinking_mask  # noqa: E402

GUMBEL_CLAMP = (-1.5, 3.0)  # the official log-density's clamp of g' = y - log q
TB_TAGS = (
    "clip_ratio/region_mean",
    "kl",
    "grad_norm",
    "entropy",
    "reward",
    "soft/top1_weight",
    "soft/thinking_length",
)


def load_script(repo_dir, name):
    """Import REPO_DIR/NAME.py as a module of its own name prefixed by `diag_` (two repos never collide)."""
    path = os.path.join(repo_dir, f"{name}.py")
    if not os.path.isfile(path):
        raise SystemExit(f"error: --repo-dir: no {name}.py in {repo_dir}")
    spec = importlib.util.spec_from_file_location(f"diag_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def gumbel_mask_stats(z_ids, y) -> dict:
    """Which components of a soft position give SofT-GRPO's Gumbel log-density a gradient.

    z_ids: [M, k] logits (already / T) of the stored ids; y: [M, k] the stored perturbed logits. As in the official
    logprobs_from_logits_topk_gumbel: log q = log(softmax over the k ids + 1e-6), g' = y - log q, a component is
    kept if log q > -3 and clamped if g' lies outside [-1.5, 3] (then it is a constant). Returns the mean number of
    kept components, the share of positions with one kept component, the share of kept components clamped (low /
    high), and the share of positions where every kept component is clamped (no gradient at all)."""
    g = y.float() - torch.log(z_ids.float().softmax(-1) + 1e-6)
    keep = kept(z_ids)
    low, high = (g < GUMBEL_CLAMP[0]) & keep, (g > GUMBEL_CLAMP[1]) & keep
    n_keep = keep.sum(-1)
    kept_total = n_keep.sum().clamp(min=1)
    return {
        "positions": int(z_ids.shape[0]),
        "kept_components": n_keep.float().mean().item(),
        "frac_one_kept": (n_keep == 1).float().mean().item(),
        # issue 23: two or more components above ~0.05 among those sampled (top-p kept them; sofT_grpo.py's density
        # leaves the dropped slots out of q and of the mean)
        "frac_two_or_more_kept_sampled": ((keep & (y >= TOP_P_FLOOR + 1e-3)).sum(-1) >= 2).float().mean().item(),
        "frac_kept_clamped_low": (low.sum() / kept_total).item(),
        "frac_kept_clamped_high": (high.sum() / kept_total).item(),
        "frac_no_gradient": ((low | high).sum(-1) == n_keep).float().mean().item(),
    }


def kept(z_ids):
    """[M, k] bool: the components that the official log-density averages over, log(q + 1e-6) > -3."""
    return torch.log(z_ids.float().softmax(-1) + 1e-6) > -3


def kept_set_changes(z_old, z_new):
    """[M] bool: the soft positions whose kept set differs between two policies' logits z_old, z_new: [M, k] of the
    stored ids. The official log-density averages over that set, so a component crossing -3 makes the "log-prob"
    jump by a whole Gumbel log-pdf term: the ratio and the KL of such a position are not small when the step is."""
    return (kept(z_old) != kept(z_new)).any(-1)


def summary(values) -> dict:
    """Mean, median, 90th percentile and count of a 1-D tensor (nan when empty)."""
    v = values.detach().double().flatten()
    if v.numel() == 0:
        return {"mean": float("nan"), "median": float("nan"), "p90": float("nan"), "n": 0}
    return {
        "mean": v.mean().item(),
        "median": v.median().item(),
        "p90": torch.quantile(v, 0.9).item(),
        "n": int(v.numel()),
    }


@torch.no_grad()
def scoring_logits(logp_fn, model, batch, temperature: float):
    """[B, T, V] fp32 logits / T that score each completion token, read off the output head while the script's own
    token_logprobs runs (a forward hook: the script may call the head once or chunk by chunk over T)."""
    outputs = []

    def keep(module, inputs, out):
        outputs.append(out)

    hook = model.get_output_embeddings().register_forward_hook(keep)
    try:
        logp_fn(model, batch)
    finally:
        hook.remove()
    logits = torch.cat(outputs, 1).float()
    T = batch["completion_ids"].shape[1]
    return logits[:, :T] / temperature  # a single call also covers the last position, which scores nothing


def logit_grad_norms(s, logits, batch, masks: dict, soft_scoring: bool, noise: str):
    """Per-token ||d log pi(a_t) / d z_t|| ([B, T]) w.r.t. the logits z_t (already / T) of the position scoring t:
    the categorical log-softmax of the emitted token, or, at soft positions when soft_scoring, the script's own
    soft_log_density of the stored (ids, y), which depends on the k logits of the stored ids only."""
    z = logits.clone().requires_grad_(True)
    z.log_softmax(-1).gather(-1, batch["completion_ids"][..., None]).sum().backward()
    norms = z.grad.norm(dim=-1)  # [B, T]
    if soft_scoring:
        soft = masks["thinking"]
        z_ids = logits.gather(-1, batch["soft_ids"])[soft].requires_grad_(True)  # [M, k]
        s.soft_log_density(z_ids, batch["soft_y"][soft], noise).sum().backward()
        norms = norms.masked_scatter(soft, z_ids.grad.norm(dim=-1))  # row-major order, as the script's scatter
    return norms


def param_grad_norms(logp_fn, model, masks: dict, per_mask: int, rng) -> dict:
    """Per-token ||d log pi(a_t) / d theta|| for up to per_mask positions of each mask, drawn with rng."""
    params = [p for p in model.parameters() if p.requires_grad]
    logp = logp_fn(model)
    result = {}
    for name, m in masks.items():
        where = m.nonzero().tolist()
        picked = rng.sample(where, min(per_mask, len(where)))
        norms = []
        for b, t in picked:
            grads = torch.autograd.grad(logp[b, t], params, retain_graph=True, allow_unused=True)
            squares = [g.float().pow(2).sum() for g in grads if g is not None]
            norms.append(torch.stack(squares).sum().sqrt())
        result[name] = summary(torch.stack(norms) if norms else torch.zeros(0))
    return result


def loss_grad(mod, logp, params, advantages, mask, total_tokens):
    """Flat grad theta of the script's grpo_loss (ratio 1, no KL) over the mask's tokens, token-mean over all."""
    loss, _ = mod.grpo_loss(logp, logp.detach(), logp.detach(), advantages, mask.long())
    loss = loss * mask.sum() / total_tokens  # every part divided by the same count: the parts add up
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def loss_grad_split(mod, logp_fn, model, batch, masks: dict, group_size: int, shuffles: int, seed: int) -> dict:
    """||grad theta|| of the GRPO loss restricted to each mask's tokens (they add up to the full loss gradient),
    their cosine, and the thinking part's norm when the advantages are shuffled within each group (mean over
    `shuffles` shuffles): a null where the reward has nothing to do with the thinking tokens."""
    params = [p for p in model.parameters() if p.requires_grad]
    logp = logp_fn(model)
    total = batch["completion_mask"].sum().clamp(min=1)
    flat = {name: loss_grad(mod, logp, params, batch["advantages"], m, total) for name, m in masks.items()}
    out = {f"norm_{name}": g.norm().item() for name, g in flat.items()}
    out["norm_total"] = sum(flat.values()).norm().item()
    a, b = flat["thinking"], flat["answer"]
    out["cosine_thinking_answer"] = (a @ b / (a.norm() * b.norm()).clamp(min=1e-30)).item()
    generator = torch.Generator().manual_seed(seed)
    adv = batch["advantages"].view(-1, group_size)  # [N, G]
    null = []
    for _ in range(shuffles):
        order = torch.argsort(torch.rand(adv.shape, generator=generator), dim=1)
        shuffled = adv.gather(1, order).view(-1)
        null.append(loss_grad(mod, logp, params, shuffled, masks["thinking"], total).norm().item())
    out["norm_thinking_shuffled_advantages"] = float(np.mean(null))
    out["thinking_over_shuffled"] = out["norm_thinking"] / max(out["norm_thinking_shuffled_advantages"], 1e-30)
    return out


def rollouts(mod, model, tok, rows, args, generator, soft: bool) -> dict:
    """G rollouts per row with the script's own training sampler, plus rewards and group advantages."""
    stop_ids = torch.tensor([tok.eos_token_id])
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)  # the script's own flags
    if soft:
        think_end_id = tok(args.think_end, add_special_tokens=False)["input_ids"][-1]
        sampling.update(
            think_end_id=think_end_id,
            answer_top_k=args.answer_top_k,
            answer_top_p=args.answer_top_p,
            tau_g=args.tau_g,
            noise_scale=args.noise_scale,
            noise=args.noise,
        )
    with torch.no_grad():
        batch = mod.generate(model.eval(), tok, rows, len(rows), args.max_new_tokens, stop_ids, generator, **sampling)
    texts = mod.decode(tok, batch)
    rewards = torch.tensor([mod.math_reward(t, r["answer"]) for t, r in zip(texts, rows)])
    batch["rewards"] = rewards
    batch["advantages"] = mod.group_advantages(rewards, args.group_size)
    return batch


def position_masks(batch, think_end_id, soft: bool) -> dict:
    """thinking: SofT-GRPO's soft positions, or discrete GRPO's steps before the first </think>; answer: the rest."""
    valid = batch["completion_mask"].bool()
    if soft:
        thinking = batch["soft_mask"] & valid
    else:
        thinking = thinking_mask(batch["completion_ids"], batch["completion_mask"], think_end_id)
        thinking = thinking & (batch["completion_ids"] != think_end_id)
    return {"thinking": thinking, "answer": valid & ~thinking}


def one_update(mod, model, batch, masks, args, logp_fn, train_on="completion_mask", soft_scoring=False) -> dict:
    """A training step's two updates in miniature: AdamW step on mini-batch 1 (the script's loss, lr, clip), then
    the clip fraction and k3 KL (reference = the model before the step) of mini-batch 2, per kind of position.
    train_on: the tokens of the mini-batch-1 loss, "completion_mask" (as in training) or a name of `masks`."""
    base_model, model = model, copy.deepcopy(model).train()
    n = args.mini_batch_prompts * args.group_size
    first = {k: v[:n] for k, v in batch.items() if torch.is_tensor(v)}
    second = {k: v[n:] for k, v in batch.items() if torch.is_tensor(v)}
    loss_mask = first["completion_mask"] if train_on == "completion_mask" else masks[train_on][:n].long()
    with torch.no_grad():
        old_first, old_second = logp_fn(model, first), logp_fn(model, second)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    logp = logp_fn(model, first)
    loss, _ = mod.grpo_loss(logp, old_first, old_first, first["advantages"], loss_mask, beta=args.beta)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm).item()
    optimizer.step()
    with torch.no_grad():
        logp = logp_fn(model, second)
    out = {"grad_norm_before_clip": grad_norm}
    if soft_scoring:  # which soft positions changed their kept set, and what their ratios did
        soft = masks["thinking"][n:]
        ids = second["soft_ids"]
        z_old = scoring_logits(logp_fn, base_model, second, args.temperature).gather(-1, ids)[soft]
        z_new = scoring_logits(logp_fn, model, second, args.temperature).gather(-1, ids)[soft]
        flipped = kept_set_changes(z_old, z_new)  # [M]
        change = (logp - old_second)[soft].abs()
        out["frac_soft_kept_set_changed"] = flipped.float().mean().item()
        out["abs_log_ratio_soft_kept_set_changed"] = change[flipped].mean().item() if flipped.any() else 0.0
        out["abs_log_ratio_soft_kept_set_same"] = change[~flipped].mean().item()
        out["share_of_soft_abs_log_ratio_from_changed"] = (change[flipped].sum() / change.sum().clamp(min=1e-30)).item()
        # components that top-p dropped at sampling carry y = log(1e-6) + g <= -10.8: the official sampler stores
        # zero-probability ids there (whatever topk returns among zeros), this one the true next-ranked ids
        crossed = kept(z_old) != kept(z_new)  # [M, k]
        dropped = second["soft_y"][soft] < TOP_P_FLOOR + 1e-3
        out["share_of_crossings_on_top_p_dropped_ids"] = (crossed & dropped).sum().item() / max(crossed.sum().item(), 1)
    for name, m in masks.items():
        m2 = m[n:]
        _, st = mod.grpo_loss(logp, old_second, old_second, second["advantages"], m2.long(), beta=args.beta)
        out[f"clip_ratio_{name}"] = st["clip_ratio/region_mean"].item()
        out[f"kl_{name}"] = st["kl"].item()
        out[f"abs_log_ratio_{name}"] = (logp - old_second)[m2].abs().mean().item()
    return out


def kl_to_base(mod, logp_fn, model, base, batch, masks, beta) -> dict:
    """k3 KL of the model to the base model (the script's grpo_loss formula) on the model's own rollouts."""
    with torch.no_grad():
        logp, logp_base = logp_fn(model, batch), logp_fn(base, batch)
    out = {}
    for name, m in masks.items():
        _, st = mod.grpo_loss(logp, logp, logp_base, batch["advantages"], m.long(), beta=beta)
        out[f"kl_{name}"] = st["kl"].item()
    return out


TOP_P_FLOOR = math.log(1e-6) + GUMBEL_CLAMP[1]  # y of a top-p-dropped component is log(0 + 1e-6) + g, g <= 3


def official_top_p_slots(soft_log_density):
    """soft_log_density as the official code effectively computes it when top-p dropped components at sampling.

    The official sampler takes torch.topk of the top-k/top-p-renormalised FULL distribution, so a dropped slot holds
    a zero-probability filler id (whichever topk returns among the zeros), whose training probability is ~0: it is
    neither in q's normaliser nor in the log q > -3 mean. sofT_grpo.py stores the true next-ranked ids there, whose
    q sits just under 1 - top_p = 0.05 ~ e^-3. Here a dropped slot (y at the log(1e-6) floor, noise scale <= 1)
    gets logit -1e9, i.e. probability 0, as a filler id would."""

    def density(z_ids, y, noise):
        if noise != "gumbel":
            return soft_log_density(z_ids, y, noise)
        return soft_log_density(z_ids.masked_fill(y < TOP_P_FLOOR + 1e-3, -1e9), y, noise)

    return density


def logp_function(d, s, args, soft_scoring: bool):
    """log pi(a_t) of a batch by one script's token_logprobs: SofT-GRPO's (Gumbel density at soft positions) or
    discrete GRPO's (categorical log-prob of every emitted token, token embeddings as inputs)."""

    def logp(model, batch):
        if soft_scoring:
            return s.token_logprobs(model, batch, args.temperature, args.noise, args.tau_g)[0]
        return d.token_logprobs(model, batch, args.temperature)[0]

    return logp


def diagnose(d, s, model, base, tok, rows, args, dargs, seed, per_mask, is_base) -> dict:
    """Every measurement above for one model and three arms: sofT_grpo (soft rollouts, Gumbel density), the
    discrete loss on the SAME soft rollouts (only the thinking positions' log-prob differs: the controlled
    comparison), and discrete_grpo (its own rollouts: full vocabulary at T 1.0 by default)."""
    think_end_id = tok(args.think_end, add_special_tokens=False)["input_ids"][-1]
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    soft_batch = rollouts(s, model, tok, rows, args, generator, soft=True)
    generator = torch.Generator().manual_seed(seed)
    discrete_batch = rollouts(d, model, tok, rows, dargs, generator, soft=False)
    arms = (
        ("sofT_grpo", s, soft_batch, True),
        ("sofT_grpo_official_top_p_slots", s, soft_batch, True),
        ("discrete_loss_on_soft_rollouts", d, soft_batch, False),
        ("discrete_grpo", d, discrete_batch, False),
    )
    result = {}
    original = s.soft_log_density
    for name, mod, batch, soft_scoring in arms:
        # token_logprobs looks soft_log_density up in its module at call time: the patch reaches it
        s.soft_log_density = official_top_p_slots(original) if name.endswith("top_p_slots") else original
        masks = position_masks(batch, think_end_id, "soft_mask" in batch)
        logp_two = logp_function(d, s, args, soft_scoring)

        def logp_of(m, b=batch, f=logp_two):
            return f(m, b)

        model.train()  # as in the update (the toy has no dropout; the mode only matters for real models)
        logits = scoring_logits(logp_two, model, batch, args.temperature)
        grad_z = logit_grad_norms(s, logits, batch, masks, soft_scoring, args.noise)
        grads = {name: summary(grad_z[m]) for name, m in masks.items()}
        r = {
            "reward": batch["rewards"].mean().item(),
            "completion_length": batch["completion_mask"].sum(1).float().mean().item(),
            "thinking_positions_per_completion": masks["thinking"].sum().item() / len(rows),
            "frac_groups_identical_thinking": identical_thinking_groups(
                batch["completion_ids"], masks["thinking"], args.group_size
            ),
            "grad_logits": grads,
        }
        if soft_scoring:
            soft_pos = masks["thinking"]
            z_ids = logits.gather(-1, batch["soft_ids"])[soft_pos]
            r["gumbel_mask"] = gumbel_mask_stats(z_ids, batch["soft_y"][soft_pos])
        r["grad_params"] = param_grad_norms(logp_of, model, masks, per_mask, rng)
        model.zero_grad(set_to_none=True)
        r["loss_grad"] = loss_grad_split(mod, logp_of, model, batch, masks, args.group_size, 5, seed)
        model.zero_grad(set_to_none=True)
        if is_base:
            kept_stats = name == "sofT_grpo"  # kept-set crossings of the script's own density
            r["one_update"] = one_update(mod, model, batch, masks, args, logp_two, soft_scoring=kept_stats)
            # the same step with the thinking positions left out of the loss: what the thinking term costs the rest
            r["one_update_answer_only"] = one_update(
                mod, model, batch, masks, args, logp_two, train_on="answer", soft_scoring=kept_stats
            )
        elif base is not None:
            r["kl_to_base"] = kl_to_base(mod, logp_two, model, base, batch, masks, args.beta)
        result[name] = r
    s.soft_log_density = original
    return result


def tb_scalars(sweep_dirs, tags=TB_TAGS) -> dict:
    """{method: {tag: (mean over seeds of the first 5 steps, of the last 5, of the max)}} of training runs."""
    from rl_report import load_scalars

    per_seed = defaultdict(lambda: defaultdict(list))
    for sweep in sweep_dirs:
        for key in sorted(os.listdir(sweep)):
            meta = os.path.join(sweep, key, "run.json")
            if not os.path.isfile(meta) or not os.path.isfile(os.path.join(sweep, key, "DONE.json")):
                continue
            with open(meta) as f:
                method = json.load(f)["labels"]["method"]
            for run_dir in sorted(os.listdir(os.path.join(sweep, key, "runs"))):
                scalars = load_scalars(os.path.join(sweep, key, "runs", run_dir))
                if "reward" not in scalars:  # an eval-only run
                    continue
                for tag in tags:
                    if tag in scalars:
                        v = scalars[tag][1]
                        per_seed[f"{os.path.basename(sweep.rstrip('/'))}/{method}"][tag].append(
                            (v[:5].mean(), v[-5:].mean(), v.max())
                        )
    out = {}
    for method, by_tag in per_seed.items():
        out[method] = {}
        for tag, triples in by_tag.items():
            a = np.array(triples)
            out[method][tag] = {"first5": a[:, 0].mean(), "last5": a[:, 1].mean(), "max": a[:, 2].mean(), "n": len(a)}
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    own, script = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--repo-dir", default=here, help="folder holding discrete_grpo.py and sofT_grpo.py")
    parser.add_argument("--discrete", default=None, help="a discrete GRPO checkpoint (a `final` folder)")
    parser.add_argument("--soft", default=None, help="a SofT-GRPO checkpoint (a `final` folder)")
    parser.add_argument("--prompts", type=int, default=16, help="training prompts (x G rollouts; 2 mini-batches)")
    parser.add_argument("--param-tokens", type=int, default=24, help="positions per kind for parameter gradients")
    parser.add_argument("--seed", type=int, default=1, help="seed of the prompts and rollouts")
    parser.add_argument("--tb", nargs="*", default=[], help="rl_benchmark.py sweep folders to read TensorBoard from")
    parser.add_argument("--tb-only", action="store_true", help="only read --tb, measure no model")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--discrete-flags", default="", help="discrete_grpo.py flags of its rollouts, e.g. '--top-k 5'")
    a = parser.parse_args(own)
    if a.prompts < 2 or a.param_tokens < 1:
        parser.error("--prompts must be >= 2 and --param-tokens >= 1")
    if a.tb_only:
        return report({"tensorboard": tb_scalars(a.tb)}, a.json)
    d, s = load_script(a.repo_dir, "discrete_grpo"), load_script(a.repo_dir, "sofT_grpo")
    args = s.cli(script)
    dargs = d.cli(a.discrete_flags.split())  # discrete GRPO's own rollout flags (T 1.0, no top-k/top-p by default)
    args.mini_batch_prompts = min(args.mini_batch_prompts, a.prompts // 2)
    torch.manual_seed(a.seed)
    base_path = args.model_name_or_path or s.build_toy_base(args)
    tok = s.AutoTokenizer.from_pretrained(base_path)
    train = s.render_prompts(tok, s.toy_splits(args)[0], 10**9)[0]
    picked = random.Random(a.seed).sample(train, a.prompts)
    rows = [r for r in picked for _ in range(args.group_size)]

    def load(path):
        return s.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    base = load(base_path).eval().requires_grad_(True)
    result = {"base_model": base_path, "prompts": a.prompts, "group_size": args.group_size, "seed": a.seed}
    result["base"] = diagnose(d, s, base, None, tok, rows, args, dargs, a.seed, a.param_tokens, True)
    for label, path in (("discrete_grpo_checkpoint", a.discrete), ("sofT_grpo_checkpoint", a.soft)):
        if path:
            result[label] = diagnose(d, s, load(path), base, tok, rows, args, dargs, a.seed, a.param_tokens, False)
            result[label]["path"] = path
    if a.tb:
        result["tensorboard"] = tb_scalars(a.tb)
    return report(result, a.json)


def report(result, path):
    """Print the result as JSON and, if path is given, write it there (temp file + rename)."""
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return result


if __name__ == "__main__":
    main()
