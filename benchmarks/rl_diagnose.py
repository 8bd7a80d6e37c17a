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
  argmax - sample  eval return with the argmax expert minus with a sampled expert, at the last evaluation: what
                   resampling the expert at every step costs once the experts differ
Per (task, method): the mean over seeds and, in brackets, the min and max over seeds; under each table, every arm
against its baselines on the same task (a K4-M8 variant against K4 and K1): the difference of the seed means and
its exact two-sided permutation p.

--labels: the routing label per state, from each run's saved model (`--save-model`; pmoe_sac.py stores 1000 uniform
replay states in it). "max k* share" above is a batch marginal: it cannot tell a coin-flip label in every state
from a sharp label that differs between states. Here, on each of the 1000 states, P(k* | s) is estimated from
--draws rounds (each round: one fresh sample per expert, or the run's --label-samples M per expert averaged, scored
by min(Q1, Q2); k* the best) and compared with the router's w(s):
  agree            share of states where argmax_k P(k* | s) = argmax_k w(s)
  KL(P || w)       mean over states of sum_k P log(P / w), nats
  H(P) / ln K      mean per-state entropy of the label distribution (1 = k* a fair coin among K in every state)
  H(w) / ln K      the same for the router
  max P            mean over states of max_k P(k* | s) (1/K = a coin flip, 1 = a deterministic label)

  python benchmarks/rl_diagnose.py /work/pmoe_runs --md benchmarks/results_pmoe.md
  python benchmarks/rl_diagnose.py /work/pmoe_runs --match "pmoe_sac__K4" --labels
"""

import argparse
import glob
import json
import math
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl_report import RETURN, comparisons, find_runs, labels_of, load_scalars, write_section  # noqa: E402

COLUMNS = ("route H / ln K", "max usage", "max k* share", "alpha", "Q", "Q / return", "argmax - sample")
LABEL_COLUMNS = ("agree", "KL(P || w)", "H(P) / ln K", "H(w) / ln K", "max P")
BEGIN, END = "<!-- rl_diagnose:begin -->", "<!-- rl_diagnose:end -->"
LABEL_BEGIN, LABEL_END = "<!-- rl_diagnose:labels:begin -->", "<!-- rl_diagnose:labels:end -->"


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
    argmax = scalars.get("eval/episodic_return_argmax", (None, np.array([np.nan])))[1][-1]  # the last evaluation
    sample = scalars.get("eval/episodic_return_sample", (None, np.array([np.nan])))[1][-1]
    return {
        "route H / ln K": window_mean(scalars, "charts/route_entropy", start) / math.log(k) if k > 1 else float("nan"),
        "max usage": max_share(scalars, "charts/expert_usage_", start) if k > 1 else float("nan"),
        "max k* share": max_share(scalars, "charts/best_expert_frac_", start) if k > 1 else float("nan"),
        "alpha": window_mean(scalars, "losses/alpha", start),
        "Q": q,
        "Q / return": q / ret,
        "argmax - sample": float(argmax - sample) if k > 1 else float("nan"),  # one expert: the same policy
    }


def label_distribution(actor, min_q, states, draws=256, label_samples=1):
    """P(k* | s) by Monte Carlo: `draws` rounds, each scoring `label_samples` fresh samples per expert by min_q
    (summed: ranks as the mean), k* the argmax. actor(states) -> mix_logits [S, K], means, log_stds [S, K, A];
    min_q(states [S, O], actions [S, K, A]) -> [S, K]. Returns P [S, K] and the router's w(s) [S, K]."""
    import torch

    with torch.no_grad():
        mix_logits, means, log_stds = actor(states)
        counts = torch.zeros_like(mix_logits)
        for _ in range(draws):
            scores = torch.zeros_like(mix_logits)
            for _ in range(label_samples):
                scores += min_q(states, actor.squash(torch.normal(means, log_stds.exp())))
            counts += torch.nn.functional.one_hot(scores.argmax(-1), mix_logits.shape[-1]).to(counts)
        return (counts / draws).double().numpy(), torch.softmax(mix_logits, -1).double().numpy()


def compare_labels(p, w):
    """The per-state label P(k* | s) [S, K] against the router w(s) [S, K]: {LABEL_COLUMNS: mean over states}."""
    k = p.shape[1]

    def entropy(q):  # [S, K] -> [S], 0 log 0 = 0
        return -(q * np.log(np.where(q > 0, q, 1.0))).sum(1)

    kl = (p * (np.log(np.where(p > 0, p, 1.0)) - np.log(w))).sum(1)
    return {
        "agree": float((p.argmax(1) == w.argmax(1)).mean()),
        "KL(P || w)": float(kl.mean()),
        "H(P) / ln K": float(entropy(p).mean() / math.log(k)),
        "H(w) / ln K": float(entropy(w).mean() / math.log(k)),
        "max P": float(p.max(1).mean()),
    }


def label_stats(model_path, draws=256, seed=0):
    """Load a pmoe_sac.py checkpoint (with its replay states) and compare its per-state label with its router."""
    import gymnasium as gym
    import torch

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import pmoe_sac

    checkpoint = torch.load(model_path, map_location="cpu", weights_only=True)
    saved = pmoe_sac.Args(**checkpoint["args"])
    envs = gym.vector.SyncVectorEnv([pmoe_sac.make_env(saved.env_id, 0, 0, False, "")])  # for the spaces
    actor = pmoe_sac.Actor(envs, saved.num_experts, saved.policy_type)
    qf1, qf2 = pmoe_sac.SoftQNetwork(envs), pmoe_sac.SoftQNetwork(envs)
    envs.close()
    for net, key in ((actor, "actor"), (qf1, "qf1"), (qf2, "qf2")):
        net.load_state_dict(checkpoint[key])

    def min_q(states, actions):
        return pmoe_sac.min_q(qf1, qf2, states, actions)

    torch.manual_seed(seed)
    p, w = label_distribution(actor, min_q, checkpoint["replay_states"], draws, saved.label_samples)
    return compare_labels(p, w)


def differences(groups, columns):
    """Markdown rows testing each arm against its baselines on the same task (rl_report.comparisons: K4-M8 against
    K4 and K1): per column the difference of the seed means and its exact two-sided permutation p. groups:
    {(task, method): [row, ...]}; a baseline with fewer than 2 runs is skipped, a column missing in an arm: "-"."""
    rows = {}
    for column in columns:
        table = defaultdict(dict)
        for (task, method), group in groups.items():
            table[task][method] = [r[column] for r in group]
        for task, method, baseline, n, m, difference, p in comparisons(table):
            cell = "-" if np.isnan(difference) else f"{difference:+.3g}, p {p:.3f}"
            rows.setdefault(f"| {task} | {method} - {baseline.split(':')[-1]} | {n} vs {m} | ", []).append(cell)
    lines = [key + " | ".join(cells) + " |" for key, cells in rows.items()]
    if not lines:
        return ""
    head = "| task | difference | seeds | " + " | ".join(columns) + " |\n|---|---|---|" + "---|" * len(columns)
    return "\n\nDifferences of seed means, exact two-sided permutation p:\n\n" + head + "\n" + "\n".join(lines)


def label_markdown(rows, labels, draws):
    groups = defaultdict(list)
    for name, row in rows.items():
        groups[(labels[name]["task"], labels[name]["method"])].append(row)
    lines = [
        f"Per-state routing label on 1000 replay states of each saved model, P(k* | s) from {draws} draws per expert;",
        "mean over seeds [min, max].",
        "",
        "| task | method | seeds | " + " | ".join(LABEL_COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(LABEL_COLUMNS),
    ]
    for (task, method), group in sorted(groups.items()):
        cells = []
        for column in LABEL_COLUMNS:
            values = np.array([row[column] for row in group])
            cells.append(f"{values.mean():.3g} [{values.min():.3g}, {values.max():.3g}]")
        lines.append(f"| {task} | {method} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + differences(groups, LABEL_COLUMNS)


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
    return "\n".join(lines) + differences(groups, COLUMNS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", help="an rl_benchmark.py --out folder (or any folder of TensorBoard runs)")
    parser.add_argument("--match", default="pmoe_sac", help="regex a run's path must contain (default: pmoe_sac)")
    parser.add_argument("--window", type=float, default=0.2, help="the last fraction of the run that is summarised")
    parser.add_argument("--md", default=None, help="also write the table between the rl_diagnose markers of this file")
    parser.add_argument(
        "--labels", action="store_true", help="also measure the per-state label of each saved model (cached beside it)"
    )
    parser.add_argument("--draws", type=int, default=256, help="--labels: label draws per state")
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
    if args.labels:
        label_rows, label_labels = {}, {}
        for name, directory in runs.items():
            models = glob.glob(os.path.join(directory, "*.cleanrl_model"))
            # a clone has the committed statistics but not the models (gitignored): read those alone
            suffix = f".labels-{args.draws}.json"
            models = models or [
                c[: -len(suffix)] for c in glob.glob(os.path.join(directory, "*.cleanrl_model" + suffix))
            ]
            if models and labels_of(directory)["method"].split(":")[-1] != "K1":
                cache = models[0] + suffix  # minutes per model at M = 8: measured once
                if not os.path.exists(cache):
                    with open(cache + ".tmp", "w") as f:
                        json.dump(label_stats(models[0], args.draws), f)
                    os.replace(cache + ".tmp", cache)
                with open(cache) as f:
                    label_rows[name] = json.load(f)
                label_labels[name] = labels_of(directory)
        if not label_rows:
            print("error: --labels: no saved PMOE-SAC model (run pmoe_sac.py with --save-model)", file=sys.stderr)
            raise SystemExit(2)
        text = label_markdown(label_rows, label_labels, args.draws)
        print("\n" + text)
        if args.md:
            write_section(args.md, text, LABEL_BEGIN, LABEL_END)
        rows = dict(rows, labels=label_rows)
    return rows


if __name__ == "__main__":
    main()
