"""Summarise CleanRL-style TensorBoard runs: a markdown table and a learning-curve PNG.

A run is any directory under RUNS_DIR holding an `events.out.tfevents.*` file, named CleanRL's way
`{env_id}__{exp_name}__{seed}__{timestamp}`; runs that differ only in seed and timestamp form one group.
Per run and per group it reports the last-N-episode mean of `charts/episodic_return`, the mean of
`eval/episodic_return` (the final deterministic evaluation) and the last logged SPS.

  python benchmarks/rl_report.py benchmarks/runs --match pmoe_sac_ --last-n 10 --png benchmarks/curves.png
"""

import argparse
import os
import re
import sys
from collections import defaultdict

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

RETURN, EVAL = "charts/episodic_return", "eval/episodic_return"
SPS_TAGS = ("charts/SPS_after_learning_starts", "charts/SPS")  # the first one present is reported


def find_runs(runs_dir, match):
    """{run_name: directory} for every directory holding an event file whose name matches the regex `match`."""
    runs = {}
    for root, _, files in os.walk(runs_dir):
        if any(f.startswith("events.out.tfevents") for f in files):
            name = os.path.relpath(root, runs_dir)
            if re.search(match, name):
                runs[name] = root
    return runs


def group_of(run_name):
    """CleanRL's `{env_id}__{exp_name}__{seed}__{timestamp}` -> `{env_id}__{exp_name}` (other names: unchanged)."""
    parts = os.path.basename(run_name).split("__")
    return "__".join(parts[:-2]) if len(parts) >= 4 and parts[-1].isdigit() and parts[-2].isdigit() else run_name


def load_scalars(directory):
    """{tag: (steps [N], values [N])} of every scalar in the run (all event files of the directory)."""
    acc = EventAccumulator(directory, size_guidance={"scalars": 0})  # 0 = keep every point
    acc.Reload()
    return {
        tag: (np.array([e.step for e in acc.Scalars(tag)]), np.array([e.value for e in acc.Scalars(tag)]))
        for tag in acc.Tags()["scalars"]
    }


def summarise(scalars, last_n):
    """One run's row: final steps, episodes, last-N-episode mean return, eval mean over its episodes, SPS."""
    steps, returns = scalars.get(RETURN, (np.array([]), np.array([])))
    sps_tag = next((tag for tag in SPS_TAGS if tag in scalars), None)
    return {
        "steps": int(steps.max()) if len(steps) else 0,
        "episodes": len(returns),
        "final": float(returns[-last_n:].mean()) if len(returns) else float("nan"),
        "eval": float(scalars[EVAL][1].mean()) if EVAL in scalars else float("nan"),
        "eval_n": len(scalars[EVAL][1]) if EVAL in scalars else 0,
        "sps": float(scalars[sps_tag][1][-1]) if sps_tag else float("nan"),
        "sps_tag": sps_tag or "-",
    }


def fmt(values):
    """mean ± std over the runs of a group (the value alone for one run), ignoring nan."""
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return "-"
    return f"{np.mean(values):.1f}" if len(values) == 1 else f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def markdown(rows, groups, last_n):
    out = [
        f"| group | runs | steps | final return (last {last_n} ep.) | eval return | SPS |",
        "|---|---|---|---|---|---|",
    ]
    for group, names in sorted(groups.items()):
        r = [rows[n] for n in names]
        out.append(
            f"| {group} | {len(r)} | {max(x['steps'] for x in r)} | {fmt([x['final'] for x in r])} "
            f"| {fmt([x['eval'] for x in r])} | {fmt([x['sps'] for x in r])} |"
        )
    out += [
        "",
        f"| run | steps | episodes | final return (last {last_n} ep.) | eval return (episodes) | SPS (tag) |",
        "|---|---|---|---|---|---|",
    ]
    for name, x in sorted(rows.items()):
        out.append(
            f"| {name} | {x['steps']} | {x['episodes']} | {x['final']:.1f} | {x['eval']:.1f} ({x['eval_n']}) "
            f"| {x['sps']:.0f} ({x['sps_tag']}) |"
        )
    return "\n".join(out)


def plot(curves, groups, last_n, path):
    """Each run's episodic return smoothed over the last `last_n` episodes, one colour per group."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for color, (group, names) in enumerate(sorted(groups.items())):
        for i, name in enumerate(names):
            steps, returns = curves[name]
            if len(returns) == 0:
                continue
            smooth = np.convolve(returns, np.ones(last_n), "full")[: len(returns)] / np.minimum(
                np.arange(1, len(returns) + 1), last_n
            )
            ax.plot(steps, smooth, color=f"C{color % 10}", label=group if i == 0 else None, alpha=0.9)
    ax.set_xlabel("global_step")
    ax.set_ylabel(f"{RETURN} (mean of last {last_n} episodes)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", help="directory of TensorBoard runs (e.g. runs or benchmarks/runs)")
    parser.add_argument("--match", default="", help="regex a run name must contain (default: every run)")
    parser.add_argument("--last-n", type=int, default=10, help="episodes averaged for the final return and the curve")
    parser.add_argument("--png", default=None, help="learning-curve image path (default: RUNS_DIR/learning_curves.png)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.runs_dir):
        print(
            f"error: runs_dir: {args.runs_dir!r} is not a directory; pass the folder holding the runs", file=sys.stderr
        )
        raise SystemExit(2)
    runs = find_runs(args.runs_dir, args.match)
    if not runs:
        print(f"error: --match: no run under {args.runs_dir!r} matches {args.match!r}", file=sys.stderr)
        raise SystemExit(2)
    scalars = {name: load_scalars(directory) for name, directory in runs.items()}
    rows = {name: summarise(s, args.last_n) for name, s in scalars.items()}
    groups = defaultdict(list)
    for name in sorted(runs):
        groups[group_of(name)].append(name)
    print(markdown(rows, groups, args.last_n))
    png = args.png or os.path.join(args.runs_dir, "learning_curves.png")
    plot({name: s.get(RETURN, ([], [])) for name, s in scalars.items()}, groups, args.last_n, png)
    print(f"\nlearning curves: {png}")
    return rows


if __name__ == "__main__":
    main()
