"""Run by tests/test_grpo_scale.py under `torchrun --nproc-per-node 2 tests/grpo_dist_worker.py SCRIPT OUT CACHE`
(SCRIPT: a *_fsdp.py variant): PPO updates of each rank's share of fixed rollout rows in every loss mode, with and
without clipping (compared there with one process on all rows, and with the teaching file), the rows that `main`
hands each rank, a greedy 2-rank evaluation's correct counts, then a short 2-rank training run of the script's main
with --compile and --gradient-checkpointing. Also imported by the tests for the rows and the settings."""

import importlib
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# 4 prompts x G 4 in 2 mini-batches of 2 prompts, micro-batches of 2 rows: on 2 ranks each rank steps on 1 prompt
# (2 micro-batches) per mini-batch. No clipping by default, so a wrong gradient scale shows in the parameters.
TINY = dict(toy_hidden_size=32, toy_num_layers=1, toy_sft_steps=30, prompts_per_step=4, group_size=4)
TINY.update(mini_batch_prompts=2, micro_batch_size=2, rollout_batch_size=16, max_new_tokens=12, max_grad_norm=1e9)
TINY.update(eval_problems=4, eval_samples=2, learning_rate=1e-2)
CPU = torch.device("cpu")
AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
# every loss mode, unclipped (a wrong gradient scale shows) and clipped at a norm the step exceeds (a rank that
# clipped by its own norm instead of the global one would show)
CASES = [(mode, clip) for mode in AGG_MODES for clip in (1e9, 0.05)]


def sampling_of(M, tok) -> dict:
    """Training sampling flags: plain T = 1 for discrete GRPO, the paper's soft-thinking sampler for SofT-GRPO."""
    sampling = dict(temperature=1.0, top_k=0, top_p=1.0)
    if M.__name__.startswith("sofT_grpo"):
        sampling.update(top_k=5, top_p=0.95, answer_top_k=5, answer_top_p=0.95, tau_g=0.1, noise_scale=1.0)
        sampling.update(noise="gumbel", think_end_id=tok.convert_tokens_to_ids("</think>"))
    return sampling


def fixed_batch(M, args):
    """The same rollout rows on every rank and in every process: toy prompts, a fixed generator, rewards that vary
    within each group, log pi_old from the unsharded model."""
    path = M.build_toy_base(args)
    tok = M.AutoTokenizer.from_pretrained(path)
    model = M.AutoModelForCausalLM.from_pretrained(path)
    prompts = M.render_prompts(tok, M.toy_splits(args)[0][: args.prompts_per_step], 10**9)[0]
    rows = [p for p in prompts for _ in range(args.group_size)]
    stop_ids = torch.tensor([tok.eos_token_id])
    g = torch.Generator().manual_seed(0)
    batch = M.generate(model, tok, rows, 16, args.max_new_tokens, stop_ids, g, **sampling_of(M, tok))
    rewards = torch.arange(len(rows)).remainder(3).eq(0).float()  # 1 0 0 1 | 0 0 1 0 | ...
    batch["advantages"] = M.group_advantages(rewards, args.group_size)
    # unequal lengths: 1 to T tokens per row, so ranks, micro-batches and rows hold different token counts
    T = batch["completion_ids"].shape[1]
    lengths = 1 + (torch.arange(len(rows)) * 5) % T  # [B]
    batch["completion_mask"] = (torch.arange(T)[None] < lengths[:, None]).long()
    batch["logp_old"], batch["logp_ref"] = old_and_ref(M, model, batch, args)
    return path, batch


def is_variant(M) -> bool:
    """The paper-scale copy (its helpers take the world size); the teaching file runs one process only."""
    return M.__name__.endswith("_fsdp")


def old_and_ref(M, model, batch, args):
    if is_variant(M):
        return M.old_and_ref_logprobs(model, None, batch, args, 1, CPU)
    return M.old_and_ref_logprobs(model, None, batch, args, CPU)


def update(M, model, optimizer, batch, args, world):
    if is_variant(M):
        return M.ppo_update(model, optimizer, batch, args, world, CPU)
    assert world == 1
    return M.ppo_update(model, optimizer, batch, args, CPU)


def rows_of_rank(M, batch, args, rank, world):
    """This rank's rows: its share of the prompts (M.rank_share), each prompt's G rows."""
    if world == 1:
        return batch
    G, per = args.group_size, args.mini_batch_prompts // world
    keep = M.rank_share(list(range(args.prompts_per_step)), per, rank, world)
    idx = torch.tensor([p * G + g for p in keep for g in range(G)])
    return {k: v[idx] for k, v in batch.items()}


def one_update(M, args, rank, world, shard, fixed=None):
    """SGD (its step is proportional to the gradient, unlike Adam's first step) on this rank's rows.
    Returns the full weights after the update and the gradient norm the update saw."""
    path, batch = fixed or fixed_batch(M, args)
    model = M.AutoModelForCausalLM.from_pretrained(path)
    if shard:
        M.shard(model, args)
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)  # large: every tensor moves far beyond the tolerance
    _, grad_norm = update(M, model.train(), optimizer, rows_of_rank(M, batch, args, rank, world), args, world)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    if shard:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options), float(grad_norm)
    return model.state_dict(), float(grad_norm)


def rollout_all_gathers(M, args, path, batch):
    """All-gathers issued by a 24-token rollout of the sharded model under full_weights: one per FSDP unit."""
    model = M.shard(M.AutoModelForCausalLM.from_pretrained(path), args)
    calls, originals = [], {}
    for name in ("all_gather_into_tensor", "all_gather_single"):  # FSDP2's all-gather, by torch version
        originals[name] = getattr(dist, name, None)
        if originals[name] is not None:
            setattr(dist, name, counting(originals[name], calls))
    rows = [{"prompt_ids": ids[mask.bool()].tolist()} for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"])]
    tok = M.AutoTokenizer.from_pretrained(path)
    never = torch.tensor([-1])  # no stop token: every row decodes all 24 tokens
    with torch.no_grad(), M.full_weights(model.eval()):
        M.generate(model, tok, rows[:4], 4, 24, never, torch.Generator().manual_seed(0), **sampling_of(M, tok))
    for name, fn in originals.items():
        if fn is not None:
            setattr(dist, name, fn)
    return len(calls)


def counting(fn, calls: list):
    def wrapper(*a, **k):
        calls.append(fn.__name__)
        return fn(*a, **k)

    return wrapper


def recording(M, name: str, calls: list):
    """Wrap M.<name> so that every call's positional arguments are appended to `calls` (main looks names up at
    call time, so it calls the wrapper)."""
    fn = getattr(M, name)

    def wrapper(*a, **k):
        calls.append(a)
        return fn(*a, **k)

    setattr(M, name, wrapper)
    return fn


def prompts_per_mini_batch(M, args, batch) -> list:
    """The unpadded prompt token lists of each mini-batch that ppo_update is handed (this rank's share of it)."""
    per_rank = len(batch["advantages"]) // (args.prompts_per_step // args.mini_batch_prompts)
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"])]
    return [prompts[i : i + per_rank] for i in range(0, len(prompts), per_rank)]


def greedy(M, args):
    """A deterministic evaluation: greedy decoding, so 1 process and N ranks must find the same correct counts."""
    if M.__name__.startswith("sofT_grpo"):  # its --eval-settings come from EVAL_SETTINGS: make them greedy
        M.EVAL_SETTINGS = {k: dict(v, temperature=0.0) for k, v in M.EVAL_SETTINGS.items()}
        return M.replace(args, eval_settings=("sofT-grpo",))
    return M.replace(args, eval_temperature=0.0)


def observed_main(M, args) -> dict:
    """main(args) with the rows of its first ppo_update and the correct counts of its evaluations recorded."""
    updates, grades = [], []
    update_fn, grade_fn = recording(M, "ppo_update", updates), recording(M, "grade", grades)
    try:
        summary = M.main(args)
    finally:
        M.ppo_update, M.grade = update_fn, grade_fn
    first = prompts_per_mini_batch(M, args, updates[0][2]) if updates else None
    return {"summary": summary, "mini_batches": first, "counts": [g[0] for g in grades]}


if __name__ == "__main__":
    script, out, cache = sys.argv[1:4]
    M = importlib.import_module(script)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    args = M.Args(**TINY, toy_cache_dir=cache, output_dir=out)
    if rank == 0:
        M.build_toy_base(args)
    dist.barrier()
    fixed = fixed_batch(M, args)
    saved = {"cases": {}}
    for mode, clip in CASES:
        case = M.replace(args, loss_agg_mode=mode, max_grad_norm=clip)
        saved["cases"][mode, clip] = one_update(M, case, rank, world, shard=True, fixed=fixed)
    saved["rollout_all_gathers"] = rollout_all_gathers(M, args, *fixed)
    # main's own sharding and a greedy sharded evaluation (no --compile: fp32 fusion must not flip an argmax)
    destroy, dist.destroy_process_group = dist.destroy_process_group, lambda: None  # keep the group for the next run
    observed = observed_main(M, greedy(M, M.replace(args, total_steps=1, output_dir=os.path.join(out, "observed"))))
    dist.destroy_process_group = destroy
    torch.save(observed["mini_batches"], os.path.join(out, f"mini_batches_rank{rank}.pt"))
    if rank == 0:
        saved["eval_counts"] = observed["counts"]  # gathered over the ranks by main
        torch.save(saved, os.path.join(out, "two_ranks_update.pt"))
    # a short 2-rank run through main (it finds the process group joined and tears it down at the end)
    summary = M.main(M.replace(args, total_steps=2, save_every=1, gradient_checkpointing=True, compile=True))
    if rank == 0:
        torch.save(summary, os.path.join(out, "summary.pt"))
