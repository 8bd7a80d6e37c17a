"""Scale-out of both *_fsdp.py variants on CPU: 2 gloo ranks under torchrun take the same optimizer step as one
process and as the teaching file (every loss mode, unequal lengths, clipping on and off), `main` hands the ranks the
rows of one process's mini-batches, a sharded greedy evaluation grades every problem once, a 2-rank run with FSDP2
trains and writes once, bf16 compute keeps fp32 masters, resume equals an uninterrupted run, and bad world sizes or
resume folders get one-line errors."""

import glob
import os
import subprocess
import sys

import pytest
import torch
from grpo_dist_worker import CASES, TINY, fixed_batch, greedy, observed_main, one_update
from safetensors.torch import load_file

import discrete_grpo
import discrete_grpo_fsdp
import sofT_grpo
import sofT_grpo_fsdp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"discrete_grpo_fsdp": discrete_grpo_fsdp, "sofT_grpo_fsdp": sofT_grpo_fsdp}
TEACHING = {discrete_grpo_fsdp: discrete_grpo, sofT_grpo_fsdp: sofT_grpo}  # each variant's teaching file


def assert_same_step(weights: dict, reference: dict, before: dict, where):
    """Two updates of the same weights are the same step: per tensor, within 1e-3 of the reference step's largest
    entry, plus 1e-6 for the float32 rounding of the weights themselves. The same sums in another order (micro-batches,
    ranks, another CPU's kernels) differ by about 1e-5 of the step (1.2e-5 of an absolute 1e-5 tolerance was the
    worst seen, on an AVX-512 CPU); a wrong gradient scale or normalisation differs by 10% of it or more."""
    for name, w in reference.items():
        step = (w - before[name]).abs().max()
        assert (weights[name] - w).abs().max() <= 1e-3 * step + 1e-6, (*where, name)


@pytest.fixture(scope="module", params=list(SCRIPTS))
def two_ranks(request, tmp_path_factory):
    """One torchrun launch per script: the 2-rank update of fixed rows, then a 2-step 2-rank run."""
    out = tmp_path_factory.mktemp(request.param)
    cache = str(out / "cache")
    worker = os.path.join(REPO, "tests", "grpo_dist_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", worker]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd + [request.param, str(out), cache], env=env, capture_output=True, text=True, timeout=420)
    assert r.returncode == 0, r.stderr[-3000:]
    return SCRIPTS[request.param], out, cache


def test_two_ranks_step_like_one_process_and_like_the_teaching_file(two_ranks):
    """In every loss mode, on rows of unequal lengths, unclipped and clipped: the 2-rank FSDP2 step, the variant's
    1-process step and the teaching file's step are the same step (assert_same_step)."""
    M, out, cache = two_ranks
    saved = torch.load(out / "two_ranks_update.pt")
    args = M.Args(**TINY, toy_cache_dir=cache)
    before = M.AutoModelForCausalLM.from_pretrained(M.build_toy_base(args)).state_dict()
    fixed = {m: fixed_batch(m, args) for m in (M, TEACHING[M])}
    for mode, clip in CASES:
        case = M.replace(args, loss_agg_mode=mode, max_grad_norm=clip)
        ranks_weights, ranks_norm = saved["cases"][mode, clip]
        # the teaching file in every mode unclipped and in one clipped mode (its clipping is the variant's line)
        for m in (M, TEACHING[M]) if clip > 1e8 or mode == "token-mean" else (M,):
            weights, grad_norm = one_update(m, case, rank=0, world=1, shard=False, fixed=fixed[m])
            assert abs(ranks_norm - grad_norm) < 1e-5 * grad_norm, (m.__name__, mode, clip)  # global, not a rank's
            assert clip > 1e8 or grad_norm > 2 * clip, (mode, clip)  # the clipping bites
            assert_same_step(ranks_weights, weights, before, (m.__name__, mode, clip))
            for name, w in weights.items():
                if clip > 1e8:  # every tensor moves: a wrong scale of its step would show
                    assert (w - before[name]).abs().max() > 1e-4, name


def test_main_hands_the_ranks_one_process_mini_batches(two_ranks, tmp_path):
    """Mini-batch j of rank 0 followed by mini-batch j of rank 1 holds the prompts of mini-batch j of one process:
    checked on the rows `main` itself passes to ppo_update, not on rows the test shards."""
    M, out, cache = two_ranks
    ranks = [torch.load(out / f"mini_batches_rank{r}.pt") for r in (0, 1)]  # [rank][mini-batch][row] prompt ids
    args = M.replace(M.Args(**TINY, toy_cache_dir=cache, output_dir=str(tmp_path), total_steps=1), eval_problems=1)
    one = observed_main(M, args)["mini_batches"]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == args.prompts_per_step // args.mini_batch_prompts
    for j, mini in enumerate(one):
        assert ranks[0][j] + ranks[1][j] == mini, j
    assert len({tuple(p) for mini in one for p in mini}) == args.prompts_per_step  # distinct prompts


def test_sharded_greedy_eval_grades_every_problem_once(two_ranks, tmp_path):
    """A greedy evaluation decodes the same text on any rank: the gathered 2-rank counts are one process's counts."""
    M, out, cache = two_ranks
    ranks = torch.load(out / "two_ranks_update.pt")["eval_counts"]
    saved = dict(M.EVAL_SETTINGS) if hasattr(M, "EVAL_SETTINGS") else None
    args = M.Args(**TINY, toy_cache_dir=cache, output_dir=str(tmp_path), total_steps=1)
    try:
        one = observed_main(M, greedy(M, args))["counts"]
    finally:
        if saved is not None:
            M.EVAL_SETTINGS = saved
    assert len(one) == len(ranks) == 2  # before and after training (after: different rollouts trained each model)
    for grader in one[0]:
        assert len(ranks[0][grader]) == len(one[0][grader]) == args.eval_problems  # every problem, once
        assert sorted(ranks[0][grader]) == sorted(one[0][grader]), grader


def test_a_rollout_all_gathers_each_unit_once_not_per_token(two_ranks):
    M, out, _ = two_ranks
    units = TINY["toy_num_layers"] + 1  # each decoder layer and the root
    assert torch.load(out / "two_ranks_update.pt")["rollout_all_gathers"] == units


def test_two_rank_run_trains_and_rank_0_writes_once(two_ranks):
    M, out, cache = two_ranks
    summary = torch.load(out / "summary.pt", weights_only=False)
    assert torch.isfinite(torch.tensor(summary["loss"]))
    run_dir = summary["run_dir"]
    assert sorted(os.listdir(run_dir)) == sorted(
        ["checkpoint-1", "checkpoint-2", "eval_step0.json", "eval_step2.json", "final"]
        + [os.path.basename(f) for f in glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))]
    )
    assert len(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))) == 1  # one TensorBoard writer
    for step in (1, 2):  # each rank's shard and trainer state, complete (no .tmp left)
        files = os.listdir(os.path.join(run_dir, f"checkpoint-{step}"))
        assert {".metadata", "trainer_state_rank0.pt", "trainer_state_rank1.pt"} <= set(files)
    base = load_file(glob.glob(os.path.join(cache, "toy-base-*", "model.safetensors"))[0])
    final = load_file(os.path.join(run_dir, "final", "model.safetensors"))  # gathered by rank 0
    for name, p in base.items():
        assert final[name].dtype == torch.float32 and not torch.equal(final[name], p), name


@pytest.fixture(params=list(SCRIPTS))
def M(request):
    return SCRIPTS[request.param]


def test_micro_batches_take_the_step_of_the_whole_mini_batch(M, tmp_path):
    """The loss is normalised by the mini-batch's token and row counts, not each micro-batch's: splitting a
    mini-batch of unequal lengths into micro-batches must not change the step, in any loss mode."""
    args = M.Args(**TINY, toy_cache_dir=str(tmp_path))
    fixed = fixed_batch(M, args)
    before = M.AutoModelForCausalLM.from_pretrained(fixed[0]).state_dict()
    for mode, clip in CASES:
        if clip < 1e8:  # clipping acts on the accumulated gradient, after every micro-batch: the modes suffice
            continue
        case = M.replace(args, loss_agg_mode=mode, max_grad_norm=clip)
        split, _ = one_update(M, case, rank=0, world=1, shard=False, fixed=fixed)  # micro-batches of 2 rows
        whole, _ = one_update(M, M.replace(case, micro_batch_size=8), rank=0, world=1, shard=False, fixed=fixed)
        assert_same_step(split, whole, before, (mode, clip))


def test_bad_world_size_is_one_line(M, capsys):
    args = M.Args(**TINY)
    for world, flag in ((3, "--prompts-per-step"), (4, "--prompts-per-step")):
        with pytest.raises(SystemExit) as e:
            M.validate(args, world)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"error: {flag}") and err.count("\n") == 1
    M.validate(args, 2)  # 2 ranks split 4 prompts in mini-batches of 2
    M.validate(M.Args(), 2)  # the default toy runs on 2 ranks: micro-batches are capped at a rank's mini-batch
    with pytest.raises(SystemExit):  # 1 prompt x G 4 per rank per mini-batch: micro-batches of 3 do not divide it
        M.validate(M.replace(args, micro_batch_size=3), 2)
    assert "--micro-batch-size" in capsys.readouterr().err


def test_bf16_compute_keeps_fp32_masters_that_a_1e6_step_moves(M, tmp_path):
    args = M.Args(**{**TINY, "learning_rate": 1e-6}, toy_cache_dir=str(tmp_path), dtype="bfloat16")
    path, batch = fixed_batch(M, args)
    model = M.AutoModelForCausalLM.from_pretrained(path).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dtypes = []
    model.base_model.layers[0].mlp.down_proj.register_forward_hook(lambda mod, i, o: dtypes.append(o.dtype))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    M.ppo_update(model, optimizer, batch, args, 1, torch.device("cpu"))
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the matmuls ran in bf16
    changed = changed_in_bf16 = total = 0
    for name, w in model.state_dict().items():
        assert w.dtype == torch.float32, name
        changed += (w != before[name]).sum().item()
        changed_in_bf16 += (w.bfloat16() != before[name].bfloat16()).sum().item()
        total += w.numel()
    # the fp32 masters took the step; bf16 weights would have rounded nearly all of it away
    assert changed > 0.5 * total and changed_in_bf16 < 0.05 * total, (changed, changed_in_bf16, total)


def test_resume_equals_the_uninterrupted_run(M, tmp_path):
    args = M.Args(**{**TINY, "total_steps": 4, "max_grad_norm": 1.0}, eval_every=2, save_every=2)
    args = M.replace(args, toy_cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "straight"))
    straight = M.main(args)
    ckpt = os.path.join(straight["run_dir"], "checkpoint-2")
    resumed = M.main(M.replace(args, resume_from=ckpt, output_dir=str(tmp_path / "resumed")))
    for key in straight:
        if key not in ("run_dir", "eval_before", "train_wall_time") and not key.startswith("perf/"):
            assert resumed[key] == straight[key], key

    files = os.listdir(resumed["run_dir"])
    assert "eval_step4.json" in files and "eval_step0.json" not in files and "checkpoint-4" in files
    a = load_file(os.path.join(straight["run_dir"], "final", "model.safetensors"))
    b = load_file(os.path.join(resumed["run_dir"], "final", "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_a_missing_or_incomplete_folder(M, tmp_path, capsys):
    args = M.Args(**TINY, toy_cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path))
    partial = tmp_path / "checkpoint-2.tmp"
    partial.mkdir()
    (partial / ".metadata").write_bytes(b"")  # a killed save: no trainer state
    for folder in (tmp_path / "nowhere", partial):
        with pytest.raises(SystemExit) as e:
            M.main(M.replace(args, resume_from=str(folder)))
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: --resume-from") and err.count("\n") == 1
