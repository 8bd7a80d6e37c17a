"""How uncertain is a GRPO model while it thinks? Entropy and top-1 probability at thinking positions.

SofT-GRPO can only differ from discrete GRPO where the next-token distribution inside <think> ... </think> has
mass on more than one token: a soft token sum_i w_i E[id_i] with w = softmax(y / tau_g) is one-hot in all but name
when the model is sure. This measures that distribution before the tau_g sharpening, on the model's own SofT-GRPO
rollouts of held-out toy problems (sofT_grpo.py's training sampler: T, top-k, top-p, tau_g, noise from its flags):
  full vocabulary   p = softmax(z / T): its entropy (nats) and its largest probability;
  top-k / top-p     pi, p renormalised over the top-k then top-p ids: what the Gumbel noise perturbs;
  soft token        the largest mixture weight max_i w_i after tau_g (the training log's soft/top1_weight);
and, for contrast, the full-vocabulary statistics at the answer positions after </think>. Issue 23's acceptance
numbers for a toy whose decision is made inside <think> (run with --samples 8 = G):
  branching positions  thinking positions whose second most likely token has p >= 0.05: share, mean entropy;
  term positions       (the toy's) the first thinking step and every step after a "+": which term comes next;
  components > 0.05    share of soft positions with two or more pi components above 0.05 (what the Gumbel noise can
                       flip) and with two or more mixture weights w above 0.05 (what the next input mixes);
  identical groups     share of problems whose `samples` completions think identically (same thinking tokens).
A thinking position is a step decoded while the row is still thinking: every step before the first </think>, and
the step that emits it. The logits are recomputed by one forward pass over the rollout with the soft inputs rebuilt
from the stored actions, exactly as sofT_grpo.py's token_logprobs scores them.

  python benchmarks/grpo_thinking_stats.py                          # the default toy base model (built or cached)
  python benchmarks/grpo_thinking_stats.py --problems 200 --samples 4 -- --toy-sft-steps 300
  python benchmarks/grpo_thinking_stats.py -- --model-name-or-path runs/<run>/final
  python benchmarks/grpo_thinking_stats.py --samples 8 -- --toy-branching --toy-num-ops 3   # issue 23's toy
Flags after `--` go to sofT_grpo.py's own parser (toy settings, --toy-cache-dir, sampling settings).
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def thinking_position_stats(logits, mask, temperature=1.0, top_k=0, top_p=1.0) -> dict:
    """Mean entropy (nats) and mean top-1 probability of softmax(logits / T) over the positions where mask is True.

    logits: [B, T, V]; mask: [B, T] bool. With top_k > 0 (or top_p < 1) the distribution is first restricted to its
    top_k ids, renormalised, then cut to the smallest prefix whose mass reaches top_p (the id that crosses top_p
    is kept) and renormalised again, as sofT_grpo.py's topk_topp_probs. Returns floats and the position count."""
    p = top_probs(logits, mask, temperature, top_k, top_p)  # [M, V] or [M, k]
    plogp = torch.where(p > 0, p * p.clamp(min=1e-30).log(), torch.zeros_like(p))  # 0 log 0 = 0
    entropy = plogp.sum(-1).neg().abs()  # [M]; abs: a one-hot row gives 0.0, not -0.0
    return {
        "entropy": entropy.mean().item(),
        "entropy_median": entropy.median().item(),
        "top1": p.max(-1).values.mean().item(),
        "frac_top1_above_0.99": (p.max(-1).values > 0.99).float().mean().item(),
        "positions": int(mask.sum()),
    }


def top_probs(logits, mask, temperature=1.0, top_k=0, top_p=1.0):
    """[M, k] descending probabilities at the masked positions: softmax(logits / T), restricted to its top_k ids and
    renormalised, then cut to the smallest prefix whose mass reaches top_p and renormalised again (the id that crosses
    top_p is kept), as sofT_grpo.py's topk_topp_probs. logits: [B, T, V]; mask: [B, T] bool."""
    p = (logits[mask].float() / temperature).softmax(-1)  # [M, V]
    if top_k or top_p < 1.0:
        p = p.sort(-1, descending=True).values[:, : top_k or p.shape[-1]]  # [M, k]
        p = p / p.sum(-1, keepdim=True)
        p = p * (p.cumsum(-1) - p <= top_p)  # mass before this id still below top_p: keep it
        p = p / p.sum(-1, keepdim=True)
    return p


def branching_stats(logits, mask, temperature=1.0, threshold=0.05) -> dict:
    """Branching positions: the masked positions whose second most likely token under softmax(logits / T) has
    probability >= threshold. Their share of the masked positions, their count and their mean entropy (nats)."""
    p = top_probs(logits, mask, temperature)  # [M, V]
    branching = p.topk(2, dim=-1).values[:, 1] >= threshold  # [M]
    plogp = torch.where(p > 0, p * p.clamp(min=1e-30).log(), torch.zeros_like(p))
    entropy = plogp.sum(-1).neg().abs()  # [M]
    mean = entropy[branching].mean().item() if branching.any() else float("nan")
    return {"share": branching.float().mean().item(), "positions": int(branching.sum()), "entropy": mean}


def top_k_mass(logits, mask, temperature=1.0, top_k=5) -> dict:
    """Mass of the top_k ids under the full softmax(logits / T) at the masked positions: the share of the distribution
    that a soft position's Gumbel density sees (it is a function of those k logits only). Mean and median."""
    mass = (logits[mask].float() / temperature).softmax(-1).topk(top_k, dim=-1).values.sum(-1)  # [M]
    return {"mean": mass.mean().item(), "median": mass.median().item(), "vocabulary": logits.shape[-1]}


def two_above(weights, threshold=0.05) -> float:
    """Share of rows of weights [M, k] with two or more entries above threshold."""
    return ((weights > threshold).sum(-1) >= 2).float().mean().item()


def identical_thinking_groups(completion_ids, thinking, group_size: int) -> float:
    """Share of prompt groups whose G completions emit the same tokens at the same thinking positions.

    completion_ids: [N*G, T]; thinking: [N*G, T] bool. In such a group a categorical log-prob term of the thinking
    tokens is the same for every rollout, so its GRPO gradient sum_j A_j grad log p vanishes (sum_j A_j = 0)."""
    hidden = torch.full_like(completion_ids, -1)  # non-thinking positions compare equal
    ids = torch.where(thinking, completion_ids, hidden).view(-1, group_size, completion_ids.shape[-1])  # [N, G, T]
    same = (ids == ids[:, :1]).all(-1).all(-1)  # [N]
    return same.float().mean().item()


def thinking_mask(completion_ids, completion_mask, think_end_id):
    """[B, T] bool: the steps decoded while thinking (no </think> before them), inside the completion mask."""
    is_end = (completion_ids == think_end_id).long()
    return (is_end.cumsum(1) - is_end == 0) & completion_mask.bool()


@torch.no_grad()
def rollout_logits(s, model, batch, tau_g, noise):
    """Logits [B, T, V] that scored each completion token, soft inputs rebuilt as sofT_grpo.token_logprobs does."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)  # [B, P+T]
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    embed, soft = model.get_input_embeddings(), batch["soft_mask"]
    weights = s.soft_weights(batch["soft_y"][soft], noise, tau_g)  # [M, k]
    mix = (weights[..., None] * embed(batch["soft_ids"][soft])).sum(1)  # [M, H]
    soft_in = torch.cat([torch.zeros_like(batch["prompt_mask"], dtype=torch.bool), soft], 1)[..., None]
    embeds = embed(ids).masked_scatter(soft_in, mix.to(embed.weight.dtype))
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(inputs_embeds=embeds, attention_mask=attn, position_ids=position_ids, use_cache=False)
    T = batch["completion_ids"].shape[1]
    return out.logits[:, -T - 1 : -1].float(), weights  # position t-1 scores token t


def measure(argv_script, problems, samples, seed) -> dict:
    import sofT_grpo as s

    args = s.cli(argv_script)
    path = args.model_name_or_path or s.build_toy_base(args)
    torch.manual_seed(seed)
    tok = s.AutoTokenizer.from_pretrained(path)
    model = s.AutoModelForCausalLM.from_pretrained(path).eval()
    rows = s.render_prompts(tok, s.toy_splits(args)[1][:problems], 10**9)[0]
    todo = []
    for r in rows:
        todo += [r] * samples
    think_end_id = tok(args.think_end, add_special_tokens=False)["input_ids"][-1]
    stop_ids = torch.tensor([tok.eos_token_id])
    sampling = dict(
        think_end_id=think_end_id,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        answer_top_k=args.answer_top_k,
        answer_top_p=args.answer_top_p,
        tau_g=args.tau_g,
        noise_scale=args.noise_scale,
        noise=args.noise,
    )
    generator = torch.Generator().manual_seed(seed)
    batch = s.generate(model, tok, todo, args.rollout_batch_size, args.max_new_tokens, stop_ids, generator, **sampling)
    mask = thinking_mask(batch["completion_ids"], batch["completion_mask"], think_end_id)
    logits, weights = rollout_logits(s, model, batch, args.tau_g, args.noise)
    answer = batch["completion_mask"].bool() & ~mask
    soft = batch["soft_mask"] & batch["completion_mask"].bool()  # [B, T]: the soft thinking positions
    plus = tok("+", add_special_tokens=False)["input_ids"][-1]
    after_plus = torch.cat([torch.ones_like(mask[:, :1]), batch["completion_ids"][:, :-1] == plus], 1)  # [B, T]
    pi = top_probs(logits, soft, args.temperature, args.top_k, args.top_p)  # [M, k]
    return {
        "model": path,
        "completions": len(todo),
        "thinking_positions_per_completion": mask.sum().item() / len(todo),
        "completion_length": batch["completion_mask"].sum().item() / len(todo),
        "full_vocabulary": thinking_position_stats(logits, mask, args.temperature),
        "top_k_top_p": thinking_position_stats(logits, mask, args.temperature, args.top_k, args.top_p),
        "top_k_mass": top_k_mass(logits, mask, args.temperature, args.top_k),
        "soft_token_top1_weight_after_tau_g": weights.max(-1).values.mean().item(),
        # for contrast, the answer phase (after </think>), which both methods sample as discrete tokens
        "answer_full_vocabulary": thinking_position_stats(logits, answer, args.temperature),
        "branching_positions": branching_stats(logits, mask, args.temperature),
        "term_positions": thinking_position_stats(logits, mask & after_plus, args.temperature),
        "soft_positions_two_pi_components_above_0.05": two_above(pi),
        "soft_positions_two_weights_above_0.05": two_above(weights),
        "groups_thinking_identically": identical_thinking_groups(batch["completion_ids"], mask, samples),
        "accuracy": sum(s.math_reward(t, r["answer"]) for t, r in zip(s.decode(tok, batch), todo)) / len(todo),
        "sampling": {k: v for k, v in sampling.items() if k != "think_end_id"},
    }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    own, script = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=200, help="held-out toy problems")
    parser.add_argument("--samples", type=int, default=4, help="rollouts per problem")
    parser.add_argument("--seed", type=int, default=1, help="seed of the rollouts")
    args = parser.parse_args(own)
    if args.problems < 1 or args.samples < 1:
        parser.error("--problems and --samples must be >= 1")
    result = measure(script, args.problems, args.samples, args.seed)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
