"""Why does a PMOE-SAC arm trail (or lead) plain SAC? Router, alpha and critic statistics read from TensorBoard.

For each pmoe_sac.py run of a sweep (rl_benchmark.py's --out folder) this reads the scalars the script logs every
100 steps and summarises the last --window of the run (by step; 0.2 = the last 20% of the logged steps):

  route H / ln K   `charts/route_entropy` (the per-state entropy of w(s), averaged over the batch) divided by ln K:
                   1 = a uniform router in every state, 0 = one expert per state (collapse per state)
  max usage        max over k of `charts/expert_usage_k`, the share of env steps expert k acted (1/K = even use,
                   1 = one expert does all the acting: collapse across states)
  max k* share     max over k of `charts/best_expert_frac_k`, the share of the batch whose best expert (argmax of
                   min Q over the K expert samples, the routing label of Eq. 5) is k
  alpha            `losses/alpha`, the entropy temperature
  Q                `losses/qf1_values`, the critic's mean Q on replayed (s, a)
  Q / return       Q divided by the mean training episode return in the same window: a crude scale check for
                   over-estimation; arms of one task with fixed-length episodes (HalfCheetah) compare directly
  argmax - sample  eval return with the argmax expert minus with a sampled expert, over the run's evals: what
                   resampling the expert at every step costs once the experts differ
Per (task, method): the mean over seeds and, in brackets, the min and max over seeds.

  python benchmarks/rl_diagnose.py /work/runs/pmoe --md benchmarks/results_pmoe.md
"""

import argparse
import math
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl_report import RETURN, find_runs, labels_of, load_scalars, write_section  # noqa: E402

COLUMNS = ("route H / ln K", "max usage", "max k* share", "alpha", "Q", "Q / return", "argmax - sample")
BEGIN, END = "<!-- rl_diagnose:begin -->", "<!-- rl_diagnose:end -->"


def window_mean(scalars, tag, start):
    """Mean of `tag`'s values logged at step >= start (nan if the tag is absent or empty there)."""
    if tag not in scalars:
        return float("nan")
    steps, values = scalars[tag]
    values = values[steps >= start]
    return float(values.mean()) if len(values) else float("nan")


def max_share(scalars, prefix, start):
    """Window mean of max over k of `prefix{k}` (the experts' shares logged at the same steps)."""
    tags = sorted(tag for tag in scalars if tag.startswith(prefix))
    if not tags:
        return float("nan")
    steps = scalars[tags[0]][0]
    shares = np.stack([scalars[tag][1] for tag in tags])  # [K, N]
    keep = steps >= start
    return float(shares[:, keep].max(0).mean()) if keep.any() else float("nan")


def diagnose(scalars, window):
    """One run's row: {column: value}, over the last `window` of its logged steps."""
    last = max(steps.max() for steps, _ in scalars.values() if len(steps))
    start = last * (1.0 - window)
    k = sum(tag.startswith("charts/expert_usage_") for tag in scalars)
    q = window_mean(scalars, "losses/qf1_values", start)
    ret = window_mean(scalars, RETURN, start)
    argmax = scalars.get("eval/episodic_return_argmax", (None, np.array([np.nan])))[1].mean()
    sample = scalars.get("eval/episodic_return_sample", (None, np.array([np.nan])))[1].mean()
    return {
        "route H / ln K": window_mean(scalars, "charts/route_entropy", start) / math.log(k) if k > 1 else float("nan"),
        "max usage": max_share(scalars, "charts/expert_usage_", start) if k > 1 else float("nan"),
        "max k* share": max_share(scalars, "charts/best_expert_frac_", start) if k > 1 else float("nan"),
        "alpha": window_mean(scalars, "losses/alpha", start),
        "Q": q,
        "Q / return": q / ret,
        "argmax - sample": float(argmax - sample) if k > 1 else float("nan"),  # one expert: the same policy
    }


def markdown(rows, labels, window):
    groups = defaultdict(list)
    for name, row in rows.items():
        groups[(labels[name]["task"], labels[name]["method"])].append(row)
    lines = [
        f"Last {window:.0%} of each run's logged steps; mean over seeds [min, max].",
        "",
        "| task | method | seeds | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for (task, method), group in sorted(groups.items()):
        cells = []
        for column in COLUMNS:
            values = np.array([row[column] for row in group])
            if np.isnan(values).all():
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3g}")
            else:
                cells.append(f"{values.mean():.3g} [{values.min():.3g}, {values.max():.3g}]")
        lines.append(f"| {task} | {method} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", help="an rl_benchmark.py --out folder (or any folder of TensorBoard runs)")
    parser.add_argument("--match", default="pmoe_sac", help="regex a run's path must contain (default: pmoe_sac)")
    parser.add_argument("--window", type=float, default=0.2, help="the last fraction of the run that is summarised")
    parser.add_argument("--md", default=None, help="also write the table between the rl_diagnose markers of this file")
    args = parser.parse_args(argv)
    if not 0.0 < args.window <= 1.0:
        print(f"error: --window: {args.window} is not in (0, 1]; pass e.g. --window 0.2", file=sys.stderr)
        raise SystemExit(2)
    runs = find_runs(args.runs_dir, args.match) if os.path.isdir(args.runs_dir) else {}
    if not runs:
        print(f"error: runs_dir: no finished run under {args.runs_dir!r} matches {args.match!r}", file=sys.stderr)
        raise SystemExit(2)
    rows = {name: diagnose(load_scalars(directory), args.window) for name, directory in runs.items()}
    text = markdown(rows, {name: labels_of(directory) for name, directory in runs.items()}, args.window)
    print(text)
    if args.md:
        write_section(args.md, text, BEGIN, END)
    return rows


if __name__ == "__main__":
    main()
