"""Side-by-side speed of pmoe_sac.py / pmoe_ppo.py against CleanRL's own scripts (issue: faster than CleanRL).

Every arm runs as its own process, arms interleaved within each repeat, so slow drift in the machine's load
(other jobs) spreads over all arms alike. Per run it reports the whole wall time (process start to exit, compile
included) and the SPS after warm-up, read from the wall clock of the TensorBoard `charts/SPS` events that every
script writes (CleanRL's scripts too, unchanged): SPS = (last logged step - first step >= --warmup-step) /
(wall time between those two events). On a shared machine the wall clock measures the other jobs too, so it also
reports steps per CPU-second of the process over the same window (CPU time sampled from /proc every 0.2 s).
CleanRL runs in its own environment (gymnasium 0.29, the v4 tasks), from a folder holding its two scripts and
`cleanrl_utils/buffers.py` (SAC imports SB3's buffer from there).

Whole-process figures (what a user waits for, the final evaluation included): the wall time and the CPU time of
the process (user + system, from wait4), each as CleanRL's / the arm's (> 1: faster than CleanRL). --revisions adds
the script as it was at each git revision (K=1 and PMOE's K, eager), for a bisect of what each change cost.

  python benchmarks/rl_speed.py sac --cleanrl-dir CLEANRL --cleanrl-python VENV/bin/python --threads 1 2 --repeats 2
  python benchmarks/rl_speed.py ppo --cleanrl-dir CLEANRL --cleanrl-python VENV/bin/python --dry-run
  python benchmarks/rl_speed.py ppo --cleanrl-dir CLEANRL --cleanrl-python VENV/bin/python --threads 1 --repeats 3 \
      --steps 20480 --eval-episodes 10 --arms cleanrl ours_K1 ours_K5 --revisions 0f6128e 0e627cf
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# per algorithm: CleanRL's script, ours, the env ids (CleanRL speaks gymnasium 0.29: v4), the steps, the first step
# counted (after learning_starts / the first iterations, so compiling is excluded), and PMOE's K
ALGOS = {
    "sac": dict(
        cleanrl="sac_continuous_action.py",
        ours="pmoe_sac.py",
        cleanrl_env="HalfCheetah-v4",
        env="HalfCheetah-v5",
        steps=6500,
        common="--learning-starts 5000",
        warmup_step=5500,
        k=4,
    ),
    "ppo": dict(
        cleanrl="ppo_continuous_action.py",
        ours="pmoe_ppo.py",
        cleanrl_env="HalfCheetah-v4",
        env="HalfCheetah-v5",
        steps=5 * 2048,
        common="",  # pmoe_ppo.py evaluates at least one episode, after the timed window
        warmup_step=2 * 2048,
        k=5,
    ),
}


def arms(algo, cleanrl_dir, cleanrl_python, steps, eval_episodes=None, revisions=(), workdir=""):
    """name -> (argv, working directory). Ours: eager and --compile, at K=1 and at PMOE's K; each git revision's
    copy of the script (extracted into WORKDIR/revisions/REV/), eager, at K=1 and PMOE's K."""
    spec = ALGOS[algo]
    common = spec["common"].split() + ["--total-timesteps", str(steps), "--seed", "1", "--no-cuda"]
    result = {"cleanrl": ([cleanrl_python, spec["cleanrl"], "--env-id", spec["cleanrl_env"]] + common, cleanrl_dir)}
    if eval_episodes is None:
        eval_episodes = 1 if algo == "ppo" else 0
    flags = ["--env-id", spec["env"], "--eval-episodes", str(eval_episodes)] + common
    ours = [sys.executable, os.path.join(REPO, spec["ours"])] + flags
    for k in (1, spec["k"]):
        result[f"ours_K{k}"] = (ours + ["--num-experts", str(k)], None)
        result[f"ours_K{k}_compile"] = (ours + ["--num-experts", str(k), "--compile"], None)
    for rev in revisions:
        path = os.path.join(os.path.abspath(workdir), "revisions", rev, spec["ours"])
        for k in (1, spec["k"]):
            result[f"rev_{rev}_K{k}"] = ([sys.executable, path] + flags + ["--num-experts", str(k)], None)
    return result


def extract_revision(rev, script, path):
    """The script as it was at git revision REV, written to PATH (the scripts are self-contained: no other file)."""
    text = subprocess.run(["git", "show", f"{rev}:{script}"], cwd=REPO, capture_output=True, text=True, check=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text.stdout)


def cpu_seconds(pid):
    """User + system CPU time of a process, all its threads (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_at(samples, wall):
    """The process's CPU time at a wall-clock instant, interpolated between the (wall, cpu) samples around it."""
    for (w0, c0), (w1, c1) in zip(samples, samples[1:]):
        if w0 <= wall <= w1:
            return c0 + (c1 - c0) * (wall - w0) / max(w1 - w0, 1e-9)
    raise ValueError("no CPU-time sample around that instant")


def sps_after(run_dir, warmup_step, samples):
    """Steps per wall second and per CPU second of the process, between the first charts/SPS event at or after
    warmup_step and the last one (the events' own wall clock; the CPU time interpolated from the samples), and the
    wall clock of that last event (training's end: what follows is the final evaluation and the exit)."""
    events = EventAccumulator(run_dir)
    events.Reload()
    points = [(e.step, e.wall_time) for e in events.Scalars("charts/SPS") if e.step >= warmup_step]
    (step0, wall0), (step1, wall1) = points[0], points[-1]
    cpu_sps = (step1 - step0) / (cpu_at(samples, wall1) - cpu_at(samples, wall0))
    return (step1 - step0) / (wall1 - wall0), cpu_sps, wall1


def run_one(name, argv, cwd, threads, workdir, timeout):
    """One run in a fresh folder (its runs/ holds the TensorBoard events), its CPU time sampled every 0.2 s; returns
    the wall time, the whole process's CPU seconds (wait4), the run dir and the (wall clock, CPU seconds) samples."""
    folder = os.path.join(workdir, f"{name}_t{threads}_{time.time_ns()}")
    os.makedirs(folder)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if cwd is not None:  # CleanRL imports cleanrl_utils from its own folder; it writes runs/ there, moved below
        env["PYTHONPATH"] = cwd
    before = set(glob.glob(os.path.join(cwd, "runs", "*"))) if cwd is not None else set()  # older runs stay there
    start, samples = time.time(), []
    with open(os.path.join(folder, "log.txt"), "w") as log:
        proc = subprocess.Popen(argv, cwd=cwd or folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps the process once it has exited
            if pid:
                break
            try:
                samples.append((time.time(), cpu_seconds(proc.pid)))
            except (FileNotFoundError, ProcessLookupError, IndexError):  # it exited between wait4 and read
                pass
            if time.time() - start > timeout:
                proc.kill()
            time.sleep(0.2)
    wall, cpu = time.time() - start, usage.ru_utime + usage.ru_stime
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed (exit {os.waitstatus_to_exitcode(status)}): see {folder}/log.txt")
    if cwd is not None:
        for run_dir in set(glob.glob(os.path.join(cwd, "runs", "*"))) - before:
            shutil.move(run_dir, os.path.join(folder, "runs", os.path.basename(run_dir)))
    (run_dir,) = glob.glob(os.path.join(folder, "runs", "*"))
    return wall, cpu, run_dir, samples


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algo", choices=sorted(ALGOS))
    parser.add_argument("--cleanrl-dir", required=True, help="folder with CleanRL's scripts and cleanrl_utils/")
    parser.add_argument("--cleanrl-python", required=True, help="python of an env with gymnasium 0.29 + mujoco")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arms", nargs="*", help="a subset of the arm names (default: all)")
    parser.add_argument("--workdir", default=os.path.join(REPO, "benchmarks", "runs", "speed"))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--steps", type=int, help="total timesteps per run (default: the algorithm's, above)")
    parser.add_argument("--warmup-step", type=int, help="first step counted in the SPS (default: the algorithm's)")
    parser.add_argument("--eval-episodes", type=int, help="ours: evaluation episodes (default: 1 for PPO, 0 for SAC)")
    parser.add_argument("--revisions", nargs="*", default=[], help="git revisions of our script to time as well")
    parser.add_argument("--dry-run", action="store_true")
    opts = parser.parse_args()
    steps, warmup_step = opts.steps or ALGOS[opts.algo]["steps"], opts.warmup_step or ALGOS[opts.algo]["warmup_step"]
    all_arms = arms(
        opts.algo,
        os.path.abspath(opts.cleanrl_dir),
        opts.cleanrl_python,
        steps,
        opts.eval_episodes,
        opts.revisions,
        opts.workdir,
    )
    for rev in opts.revisions:
        extract_revision(
            rev, ALGOS[opts.algo]["ours"], os.path.join(opts.workdir, "revisions", rev, ALGOS[opts.algo]["ours"])
        )
    chosen = {name: all_arms[name] for name in (opts.arms or all_arms)}
    chosen.update({name: argv for name, argv in all_arms.items() if name.startswith("rev_")})
    results = []
    for repeat in range(opts.repeats):
        for threads in opts.threads:
            for name, (argv, cwd) in chosen.items():
                print(f"repeat {repeat} threads {threads} {name}: {' '.join(argv)}", flush=True)
                if opts.dry_run:
                    continue
                load, start = os.getloadavg()[0], time.time()
                wall, cpu, run_dir, samples = run_one(name, argv, cwd, threads, opts.workdir, opts.timeout)
                sps, cpu_sps, trained = sps_after(run_dir, warmup_step, samples)
                row = dict(arm=name, threads=threads, repeat=repeat, wall=wall, cpu=cpu, sps=sps, cpu_sps=cpu_sps)
                row.update(load=load, after_training=start + wall - trained)  # the final evaluation, then the exit
                results.append(row)
                print(json.dumps(row), flush=True)
    if opts.dry_run:
        return
    print(
        "\n| arm | threads | whole wall s (runs) | speed | whole CPU s (runs) | speed "
        "| SPS after warm-up (runs) | ratio | steps per CPU-s (runs) | ratio | after training s (share) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for threads in opts.threads:
        base = [r for r in results if r["arm"] == "cleanrl" and r["threads"] == threads]
        for name in chosen:
            rows = [r for r in results if r["arm"] == name and r["threads"] == threads]
            cells = []
            for key in ("wall", "cpu"):  # whole process: CleanRL's median time / the arm's median time
                speed = statistics.median(r[key] for r in base) / statistics.median(r[key] for r in rows)
                cells += [", ".join(f"{r[key]:.1f}" for r in rows), f"{speed:.2f}"]
            for key in ("sps", "cpu_sps"):  # medians over the repeats, each ratio to CleanRL's median
                ratio = statistics.median(r[key] for r in rows) / statistics.median(r[key] for r in base)
                cells += [", ".join(f"{r[key]:.1f}" for r in rows), f"{ratio:.2f}"]
            tail = statistics.median(r["after_training"] for r in rows)  # final evaluation + exit, median
            cells.append(f"{tail:.1f} ({tail / statistics.median(r['wall'] for r in rows):.0%})")
            print(f"| {name} | {threads} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
