"""Sweep runner for the four scripts: a grid of `script x flags x env-id x seed`, run through submitit.

Each run gets a deterministic folder OUT/<key> (key = script__variant__task__s<seed>) and runs there, so the
scripts' own `runs/<run_name>` lands in OUT/<key>/runs/. A run is complete once OUT/<key>/DONE.json exists; it
is written only after the command exits 0, so a killed or failed run is cleared and rerun on the next call, and a
finished one is skipped: a sweep can be restarted at will.

One code path for both clusters: the pending runs of a stage go to `executor.map_array(run_slice, slices)`.
  --cluster local: N slices (--workers), each run in sequence by one local job (submitit's LocalExecutor starts
                   every submitted job at once, so the slice count is what bounds the concurrency)
  --cluster slurm: one slice per run, one Slurm job array (--partition, --time-min, --cpus-per-job, --gpus-per-job)
Every command runs with OMP_NUM_THREADS=1 (override with --threads). Stages run in order: a stage's runs may read
the checkpoints that an earlier stage wrote (e.g. evaluating every trained GRPO model in the other decoding).

  python benchmarks/rl_benchmark.py --dry-run                      # issue 11's PMOE grid (the default), listed
  python benchmarks/rl_benchmark.py --out benchmarks/runs/sweep --workers 2
  python benchmarks/rl_benchmark.py --grid grpo-toy --out benchmarks/runs/grpo --workers 1
  python benchmarks/rl_benchmark.py --grid pmoe-evidence --out /work/pmoe_runs --repo-dir /work/pmoe-sweep --workers 1
  python benchmarks/rl_benchmark.py --grid pmoe-evidence --match "200k.*s[12]$" --out /work/pmoe_runs --workers 1
  python benchmarks/rl_benchmark.py --grid pmoe-paper --cluster slurm --partition cpu --time-min 2880 --dry-run
  python benchmarks/rl_benchmark.py --scripts pmoe_ppo.py --variants K1="--num-experts 1" K5="--num-experts 5" \
      --env-ids Hopper-v5 --seeds 1 2 3 --extra-flags="--total-timesteps 300000 --save-model"
"""

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RL_SCRIPTS = ("pmoe_sac.py", "pmoe_ppo.py")  # the scripts that take --env-id; the GRPO scripts run their toy task
DONE = "DONE.json"  # completion marker, written last


@dataclass
class Run:
    """One command of the grid. `argv` may hold `{ckpt:KEY}`: the final model of run KEY, found when the run starts."""

    key: str  # folder name under --out, the same on every call
    script: str
    argv: list
    stage: int = 0
    labels: dict = field(default_factory=dict)  # script, method, task, seed: what the reports group by


def grid(script, variants, env_ids, seeds, stage=0):
    """The product script x variants x env_ids x seeds. variants: {name: flags string}. env_ids: None for GRPO."""
    stem = script[: -len(".py")]
    runs = []
    for name, flags in variants.items():
        for env_id in env_ids or [None]:
            for seed in seeds:
                task = env_id or "toy"
                argv = shlex.split(flags) + ["--seed", str(seed), "--exp-name", f"{stem}__{name}"]
                if env_id:
                    argv += ["--env-id", env_id]
                labels = dict(script=script, method=f"{stem}:{name}", task=task, seed=seed)
                runs.append(Run(f"{stem}__{name}__{task}__s{seed}", script, argv, stage, labels))
    return runs


def _join(*flag_groups):
    return " ".join(g for g in flag_groups if g)


# Issue 13: training rollouts are evaluated every 10 of the 60 default steps, so each run has a Pass@k curve.
# The base model's rows (No-RL discrete / soft) are the step-0 evaluations of these runs: same seed, same code.
GRPO_EVAL = "--eval-every 10"
SOFT_EVAL = "--eval-settings sofT-grpo soft-baseline"  # SofT-GRPO's own decoding and the paper's soft row
GRPO_SEEDS = [1, 2, 3, 4, 5]


def grpo_toy(seeds):
    """5 seeds x {discrete GRPO, SofT-GRPO} at the default toy, then discrete GRPO's checkpoint decoded soft."""
    runs = grid("discrete_grpo.py", {"grpo": GRPO_EVAL}, None, seeds)
    runs += grid("sofT_grpo.py", {"softgrpo": _join(GRPO_EVAL, SOFT_EVAL)}, None, seeds)
    for seed in seeds:  # the paper's "GRPO, soft" row: the discrete GRPO model under soft-thinking decoding
        flags = f"--eval-only --model-name-or-path {{ckpt:discrete_grpo__grpo__toy__s{seed}}} {SOFT_EVAL}"
        runs += grid("sofT_grpo.py", {"eval-of-grpo": flags}, None, [seed], stage=1)
    return runs


def grpo_ablation(arms):
    """3 seeds of SofT-GRPO per arm; the default arm has the main table's flags, hence its folders (done once)."""
    variants = {"softgrpo": _join(GRPO_EVAL, SOFT_EVAL)}
    for name, flags in arms.items():
        variants[name] = _join(flags, GRPO_EVAL, SOFT_EVAL)
    return grid("sofT_grpo.py", variants, None, [1, 2, 3])


# Issue 23: the branching-thought toy (the slip RL can remove is made inside <think>). 5 seeds of discrete GRPO,
# SofT-GRPO and discrete GRPO on SofT-GRPO's top-k 5 / top-p 0.95 rollouts; every final model is also decoded the
# other way right after its seed trained (stage 2i: seed i's training runs, 2i + 1: their cross-decoding evals, which
# read the checkpoints), so a sweep cut short has every arm, both decodings, at its first seeds.
BRANCHING_TOY = "--toy-branching --toy-num-ops 3"


def grpo_branching(seeds, steps, eval_every):
    train = f"{BRANCHING_TOY} --total-steps {steps} --eval-every {eval_every}"
    discrete = {"grpo": train, "grpo-k5p95": _join(train, "--top-k 5 --top-p 0.95")}
    runs = []
    for i, seed in enumerate(seeds):
        runs += grid("discrete_grpo.py", discrete, None, [seed], stage=2 * i)
        runs += grid("sofT_grpo.py", {"softgrpo": _join(train, "--eval-settings sofT-grpo")}, None, [seed], stage=2 * i)
        for name in discrete:  # the discrete checkpoints in SofT-GRPO's own decoding
            ckpt = f"--model-name-or-path {{ckpt:discrete_grpo__{name}__toy__s{seed}}}"
            flags = _join("--eval-only", ckpt, "--eval-settings sofT-grpo", BRANCHING_TOY)
            runs += grid("sofT_grpo.py", {f"eval-of-{name}": flags}, None, [seed], stage=2 * i + 1)
        flags = f"--eval-only --model-name-or-path {{ckpt:sofT_grpo__softgrpo__toy__s{seed}}} {BRANCHING_TOY}"
        runs += grid("discrete_grpo.py", {"eval-of-softgrpo": flags}, None, [seed], stage=2 * i + 1)
    return runs


PMOE_TASKS = ["HalfCheetah-v5", "Hopper-v5"]
PAPER_TASKS = ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5", "HumanoidStandup-v5"]
SAC_METHODS = {  # the six SAC arms of issue 11; gating/mcp need the --policy-type flag of pmoe_sac.py
    "K1": "--num-experts 1",
    "K4": "--num-experts 4",
    "gumbel": "--num-experts 4 --gradient-estimator gumbel",
    "reinforce": "--num-experts 4 --gradient-estimator reinforce",
    "gating": "--num-experts 4 --policy-type gating",
    "mcp": "--num-experts 4 --policy-type mcp",
}


def pmoe_grid(seeds, tasks, sac_steps, ppo_steps, all_methods_tasks):
    """SAC K=1 vs K=4 and PPO K=1 vs K=5 on `tasks`; all six SAC arms on `all_methods_tasks`."""
    sac = f"--total-timesteps {sac_steps}"
    ppo = f"--total-timesteps {ppo_steps} --save-model"  # --save-model: pmoe_ppo.py evaluates the saved model
    runs = grid("pmoe_sac.py", {k: _join(SAC_METHODS[k], sac) for k in ("K1", "K4")}, tasks, seeds)
    runs += grid("pmoe_ppo.py", {"K1": f"--num-experts 1 {ppo}", "K5": f"--num-experts 5 {ppo}"}, tasks, seeds)
    others = {k: _join(v, sac) for k, v in SAC_METHODS.items() if k not in ("K1", "K4")}
    runs += grid("pmoe_sac.py", others, all_methods_tasks, seeds)
    return runs


# Issue 22: 5 seeds with an evaluation curve (the paper's AUC is over it). Each eval point costs 2 expert choices x
# --eval-episodes episodes (~0.5 s per 1000-step episode in pmoe_sac.py, ~1 s in pmoe_ppo.py on one thread).
SAC_EVAL = "--eval-every 5000 --eval-episodes 5"  # 11 points: ~1 min of a ~12 min 50k-step run
PPO_EVAL = "--eval-every 30000 --eval-episodes 3"  # 11 points: ~1 min of a ~5 min 300k-step run


def pmoe_evidence(seeds):
    """The issue-22 arms, one stage each in its priority order (--workers 1 runs them in that order; a restart
    resumes): 0 PPO K=1 vs K=5 and 1 SAC K=1 vs K=4 on both tasks; 2 the label-noise arm (K=4, 8 draws per expert)
    on HalfCheetah; 3 SAC K=1 vs K=4 on Hopper at 200k steps; 4 the other SAC methods on HalfCheetah."""
    sac, sac_long = (
        f"--total-timesteps 50000 {SAC_EVAL}",
        "--total-timesteps 200000 --eval-every 10000 --eval-episodes 5",
    )
    ppo = f"--total-timesteps 300000 --save-model {PPO_EVAL}"
    runs = grid("pmoe_ppo.py", {"K1": f"--num-experts 1 {ppo}", "K5": f"--num-experts 5 {ppo}"}, PMOE_TASKS, seeds)
    pair = {k: _join(SAC_METHODS[k], sac, "--save-model") for k in ("K1", "K4")}  # rl_diagnose.py reads the models
    runs += grid("pmoe_sac.py", pair, PMOE_TASKS, seeds, stage=1)
    label_noise = {"K4-M8": _join(SAC_METHODS["K4"], "--label-samples 8", sac, "--save-model")}
    runs += grid("pmoe_sac.py", label_noise, ["HalfCheetah-v5"], seeds, stage=2)
    long_pair = {f"{k}-200k": _join(SAC_METHODS[k], sac_long) for k in ("K1", "K4")}
    runs += grid("pmoe_sac.py", long_pair, ["Hopper-v5"], seeds, stage=3)
    others = {k: _join(v, sac) for k, v in SAC_METHODS.items() if k not in ("K1", "K4")}
    runs += grid("pmoe_sac.py", others, ["HalfCheetah-v5"], seeds, stage=4)
    return sorted(runs, key=lambda r: (r.stage, r.labels["seed"]))  # seed by seed: a cut-short stage has pairs


GRIDS = {
    "pmoe": lambda: pmoe_grid([1, 2, 3], PMOE_TASKS, 50000, 300000, ["HalfCheetah-v5"]),
    "pmoe-evidence": lambda: pmoe_evidence([1, 2, 3, 4, 5]),
    "pmoe-paper": lambda: pmoe_grid([1, 2, 3, 4, 5], PAPER_TASKS, 1000000, 1000000, PAPER_TASKS),
    "pmoe-smoke": lambda: grid(
        "pmoe_ppo.py",
        {
            "K1": "--num-experts 1 --total-timesteps 50000 --save-model",
            "K5": "--num-experts 5 --total-timesteps 50000 --save-model",
        },
        ["HalfCheetah-v5"],
        [1, 2],
    ),
    "grpo-toy": lambda: grpo_toy(GRPO_SEEDS),
    "grpo-noise": lambda: grpo_ablation({"noise-dirichlet": "--noise dirichlet", "noise-gaussian": "--noise gaussian"}),
    "grpo-tau": lambda: grpo_ablation({"tau0.25": "--tau-g 0.25", "tau0.5": "--tau-g 0.5"}),
    "grpo-topp": lambda: grpo_ablation({"topp-off": "--top-p 1.0 --answer-top-p 1.0"}),
    "grpo-branching": lambda: grpo_branching(GRPO_SEEDS, 200, 25),
    "grpo-branching-600": lambda: grpo_branching(GRPO_SEEDS, 600, 50),  # until SofT-GRPO flattens (issue 23)
    "grpo-branching-1000": lambda: grpo_branching(GRPO_SEEDS, 1000, 50),  # 600 steps did not show every arm flat
}


def resolve(argv, out):
    """Replace `{ckpt:KEY}` by the one final model under OUT/KEY (the scripts' run names carry a timestamp)."""
    resolved = []
    for a in argv:
        if a.startswith("{ckpt:") and a.endswith("}"):
            found = sorted(glob.glob(os.path.join(out, a[6:-1], "runs", "*", "final")))
            if len(found) != 1:
                raise FileNotFoundError(f"{a}: expected one final model, found {found or 'none'}")
            a = os.path.abspath(found[0])
        resolved.append(a)
    return resolved


def seed_of(run):
    return run.labels["seed"]


def command(run, repo_dir):
    return [sys.executable, os.path.join(repo_dir, run.script), *run.argv]


def is_done(run, out):
    return os.path.exists(os.path.join(out, run.key, DONE))


def write_json_atomic(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def run_one(run, out, repo_dir, threads, timeout_s):
    """Run one command in OUT/<key> unless it is complete; returns {key, rc, wall_s, skipped}."""
    folder = os.path.join(out, run.key)
    if is_done(run, out):
        return dict(key=run.key, rc=0, wall_s=0.0, skipped=True)
    if os.path.isdir(folder):  # a run that was killed or failed: start it from scratch
        shutil.rmtree(folder)
    os.makedirs(folder)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MUJOCO_GL="egl")
    meta = dict(labels=run.labels, command=command(run, repo_dir), started=time.time())
    t0 = time.time()
    with open(os.path.join(folder, "log.txt"), "w") as log:
        try:
            meta["command"] = command(Run(run.key, run.script, resolve(run.argv, out)), repo_dir)
            write_json_atomic(os.path.join(folder, "run.json"), meta)
            rc = subprocess.run(
                meta["command"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            ).returncode
        except (subprocess.TimeoutExpired, FileNotFoundError) as e:
            log.write(f"\nrl_benchmark: {e}\n")
            rc = 124 if isinstance(e, subprocess.TimeoutExpired) else 2
    wall = time.time() - t0
    if rc == 0:
        write_json_atomic(os.path.join(folder, DONE), dict(meta, wall_s=wall, finished=time.time()))
    return dict(key=run.key, rc=rc, wall_s=wall, skipped=False)


def run_slice(runs, out, repo_dir, threads, timeout_s):
    """The body of one submitit job: its runs, one after another."""
    results = []
    for run in runs:
        results.append(run_one(run, out, repo_dir, threads, timeout_s))
        print(json.dumps(results[-1]), flush=True)
    return results


def build_runs(args):
    if args.scripts or args.variants:
        variants = {}
        for v in args.variants or ["default="]:
            name, _, flags = v.partition("=")
            variants[name] = flags
        runs = []
        for script in args.scripts or ["pmoe_sac.py"]:
            env_ids = (args.env_ids or ["HalfCheetah-v5"]) if script in RL_SCRIPTS else None
            runs += grid(script, variants, env_ids, args.seeds or [1])
    else:
        runs = GRIDS[args.grid]()
        if args.seeds:
            runs = [r for r in runs if r.labels["seed"] in args.seeds]
        if args.env_ids:
            runs = [r for r in runs if r.labels["task"] in args.env_ids + ["toy"]]
    if args.match:  # e.g. two runners on two cores, each with its own share of a stage
        runs = [r for r in runs if re.search(args.match, r.key)]
    for r in runs:
        r.argv += shlex.split(args.extra_flags)
    return runs


def make_executor(args, out, n_jobs, per_job_s):
    import submitit

    executor = submitit.AutoExecutor(folder=os.path.join(out, "_submitit", "%j"), cluster=args.cluster)
    params = dict(name="rl_benchmark", timeout_min=max(1, int(per_job_s / 60) + 1), cpus_per_task=args.cpus_per_job)
    if args.cluster == "slurm":
        params.update(
            timeout_min=args.time_min,
            gpus_per_node=args.gpus_per_job,
            slurm_partition=args.partition,
            slurm_array_parallelism=args.array_parallelism,
        )
    executor.update_parameters(**params)
    return executor


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", default="pmoe", choices=sorted(GRIDS), help="named grid (default: issue 11's)")
    parser.add_argument("--scripts", nargs="+", help="custom grid: scripts to run (replaces --grid)")
    parser.add_argument("--variants", nargs="+", help='custom grid: NAME="FLAGS" per arm, e.g. K1="--num-experts 1"')
    parser.add_argument("--env-ids", nargs="+", help="RL tasks (custom grid), or a filter of the named grid's tasks")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (custom grid), or a filter of the named grid's")
    parser.add_argument("--match", help="only the runs whose key (script__variant__task__sSEED) matches this regex")
    parser.add_argument("--extra-flags", default="", help="flags appended to every command (quote them)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "runs", "sweep"), help="root of run folders")
    parser.add_argument("--repo-dir", default=REPO, help="where the scripts are (e.g. a frozen git worktree)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands and whether each is done; run nothing"
    )
    parser.add_argument("--cluster", default="local", choices=["local", "slurm"], help="where the jobs run")
    parser.add_argument("--workers", type=int, default=2, help="local: concurrent jobs, each a slice of the grid")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    parser.add_argument("--run-timeout-min", type=float, default=600, help="a run still going after this is killed")
    parser.add_argument("--partition", default=None, help="slurm: partition")
    parser.add_argument("--time-min", type=int, default=1440, help="slurm: time limit of one array task (minutes)")
    parser.add_argument("--cpus-per-job", type=int, default=1, help="CPUs of one job")
    parser.add_argument("--gpus-per-job", type=int, default=0, help="slurm: GPUs of one array task")
    parser.add_argument("--array-parallelism", type=int, default=256, help="slurm: array tasks running at once")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers is {args.workers}: use 1 or more")
    missing = sorted({r.script for r in build_runs(args)} - set(os.listdir(args.repo_dir)))
    if missing:
        parser.error(f"--repo-dir: {args.repo_dir} has no {', '.join(missing)}: pass the repository root")
    runs, out = build_runs(args), os.path.abspath(args.out)

    if args.dry_run:
        for r in runs:
            state = "todo"
            if is_done(r, out):
                with open(os.path.join(out, r.key, DONE)) as f:
                    state = f"done in {json.load(f)['wall_s']:.0f} s"
            cmd = " ".join(shlex.quote(a) for a in command(r, args.repo_dir))
            where = os.path.join(out, r.key)
            print(f"[{state}] stage {r.stage} {r.key}: cd {where} && OMP_NUM_THREADS={args.threads} {cmd}")
        print(f"{len(runs)} runs, {sum(is_done(r, out) for r in runs)} done")
        return runs

    failed = []
    for stage in sorted({r.stage for r in runs}):
        todo = [r for r in runs if r.stage == stage and not is_done(r, out)]
        todo.sort(key=seed_of)  # seed by seed: a sweep cut short still has every arm at its first seeds
        print(f"stage {stage}: {len(todo)} to run, {sum(r.stage == stage for r in runs) - len(todo)} already done")
        if not todo:
            continue
        n_jobs = len(todo) if args.cluster == "slurm" else min(args.workers, len(todo))
        slices = [todo[i::n_jobs] for i in range(n_jobs)]  # round robin: every slice gets a share of each arm
        timeout_s = 60 * args.run_timeout_min
        executor = make_executor(args, out, n_jobs, timeout_s * len(slices[0]) + 60)
        n = len(slices)
        jobs = executor.map_array(
            run_slice, slices, [out] * n, [args.repo_dir] * n, [args.threads] * n, [timeout_s] * n
        )
        for job in jobs:
            for result in job.result():
                print(json.dumps(result))
                if result["rc"] != 0:
                    failed.append(result["key"])
    if failed:
        print(f"error: {len(failed)} runs failed (see OUT/<key>/log.txt): {' '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)
    return runs


if __name__ == "__main__":
    main()
