"""Summarise CleanRL-style TensorBoard runs over seeds: step-axis AUCs, final and eval returns, per-arm t-intervals,
exact permutation tests against each method's baseline, rliable's IQM and P(improvement), learning curves.

A run is any directory under RUNS_DIR holding an `events.out.tfevents.*` file. Its task, method and seed come from
the `run.json` that benchmarks/rl_benchmark.py writes two levels up (OUT/<key>/run.json, the run in
OUT/<key>/runs/<run_name>), else from CleanRL's run name `{env_id}__{exp_name}__{seed}__{timestamp}`.

Per run (T = the run's last logged step):
  eval AUC     the paper's metric: the area under the evaluation return vs environment steps (`--eval-every`
               curves, `eval/episodic_return_sample` = rlkit-pmoe's MakeDeterministic protocol, and `_argmax`),
               trapezoid on a fixed grid of 1001 evenly spaced steps from the first to the last evaluation,
               divided by that span: a mean return per step. Needs 2 or more evaluations, else nan.
  train AUC    the same area for the training curve, each episode placed at the step where it ends, 0 to T (held
               flat at the first episode's return before it ends).
  per-episode mean   the mean return of every training episode: NOT an area over steps (short episodes, e.g. a
               random warm-up's, weigh as much as long ones); the AUC of earlier reports, kept for comparison.
  final        the mean of the last --last-n training episodes;
  eval argmax, eval sample   the last evaluation (the one after training).
Per task and method: the mean over seeds and a 95% t-interval (mean +- t_0.975,n-1 s / sqrt(n)): exact for normal
scores and the usual choice at n = 5, where a percentile bootstrap is close to [min, max] (about 75% coverage at
n = 3) and BCa's jackknife acceleration rests on 5 points. Each method is compared with its baseline (the script's
K1 arm at the same step budget; a `-M8`-style variant also with its parent) by an exact two-sided permutation test
on the difference of means (every split of the pooled runs enumerated). rliable's IQM and probability of
improvement come per task only (no pooling across tasks or scales), with `np.random.seed(seed)` set before each
call: rliable 1.x resamples with numpy's global generator and ignores `random_state`.

  python benchmarks/rl_report.py /work/pmoe_runs --png docs/img/pmoe_curves.png --md benchmarks/results_pmoe.md
"""

import argparse
import itertools
import json
import os
import re
import sys
import warnings
from collections import defaultdict

import numpy as np
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

RETURN = "charts/episodic_return"
EVAL_CURVES = {"sample": "eval/episodic_return_sample", "argmax": "eval/episodic_return_argmax"}
SPS_TAGS = ("charts/SPS_after_learning_starts", "charts/SPS")  # the first one present is reported
METRICS = {  # key: column title
    "auc_eval_sample": "eval AUC (sampled)",
    "auc_eval_argmax": "eval AUC (argmax)",
    "auc_train": "train AUC",
    "episode_mean": "per-episode mean",
    "final": "final",
    "eval_argmax": "eval argmax",
    "eval_sample": "eval sample",
    "eval_default": "eval (default)",
}
COMPARED = ("auc_eval_sample", "auc_eval_argmax", "auc_train", "final", "eval_argmax", "eval_sample")
GRID_POINTS = 1001
BEGIN, END = "<!-- rl_report:begin -->", "<!-- rl_report:end -->"


def find_runs(runs_dir, match=""):
    """{run_name: directory} for every directory holding an event file whose relative path matches the regex.

    Runs of an rl_benchmark.py sweep count once finished: their OUT/<key>/DONE.json exists."""
    runs = {}
    for root, _, files in os.walk(runs_dir):
        key_dir = os.path.dirname(os.path.dirname(os.path.abspath(root)))
        running = os.path.isfile(os.path.join(key_dir, "run.json")) and not os.path.isfile(
            os.path.join(key_dir, "DONE.json")
        )  # an rl_benchmark.py run that has not finished (or was killed): left out
        if any(f.startswith("events.out.tfevents") for f in files) and not running:
            name = os.path.relpath(root, runs_dir)
            if re.search(match, name):
                runs[name] = root
    return runs


def labels_of(directory):
    """{task, method, seed} from rl_benchmark.py's run.json, else parsed from CleanRL's run name."""
    meta = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(directory))), "run.json")
    if os.path.isfile(meta):
        with open(meta) as f:
            labels = json.load(f)["labels"]
        return dict(task=labels["task"], method=labels["method"], seed=int(labels["seed"]))
    parts = os.path.basename(directory.rstrip("/")).split("__")
    if len(parts) >= 4 and parts[-1].isdigit() and parts[-2].isdigit():
        return dict(task=parts[0], method="__".join(parts[1:-2]), seed=int(parts[-2]))
    return dict(task="?", method=os.path.basename(directory.rstrip("/")), seed=0)


def wall_of(directory):
    """The run's wall time in seconds from rl_benchmark.py's DONE.json two levels up (nan when there is none)."""
    done = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(directory))), "DONE.json")
    try:
        with open(done) as f:
            return float(json.load(f)["wall_s"])
    except (OSError, ValueError, KeyError):
        return float("nan")


def load_scalars(directory):
    """{tag: (steps [N], values [N])} of every scalar in the run (all event files of the directory), by step."""
    acc = EventAccumulator(directory, size_guidance={"scalars": 0})  # 0 = keep every point
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps, values = np.array([e.step for e in events]), np.array([e.value for e in events], dtype=float)
        order = np.argsort(steps, kind="stable")  # write order within a step
        scalars[tag] = (steps[order], values[order])
    return scalars


def step_grid_auc(steps, values, lo, hi, points=GRID_POINTS):
    """Area under the piecewise-linear curve through (steps, values) [N] over [lo, hi], by the trapezoid rule on
    `points` evenly spaced steps, divided by hi - lo (the curve is held flat outside its first and last point)."""
    grid = np.linspace(lo, hi, points)
    curve = np.interp(grid, steps, values)
    return float(np.trapezoid(curve, grid) / (hi - lo))


def summarise(scalars, last_n):
    """One run's numbers (nan where a tag is missing)."""
    steps, returns = scalars.get(RETURN, (np.array([]), np.array([])))
    horizon = max((int(s.max()) for s, _ in scalars.values() if len(s)), default=0)
    nan = float("nan")
    row = {
        "steps": horizon,
        "episodes": len(returns),
        "auc_train": step_grid_auc(steps, returns, 0, horizon) if len(returns) and horizon > 0 else nan,
        "episode_mean": float(returns.mean()) if len(returns) else nan,
        "final": float(returns[-last_n:].mean()) if len(returns) else nan,
        "evals": 0,
    }
    for mode, tag in EVAL_CURVES.items():
        eval_steps, values = scalars.get(tag, (np.array([]), np.array([])))
        curve = len(values) >= 2 and eval_steps[-1] > eval_steps[0]
        row[f"auc_eval_{mode}"] = step_grid_auc(eval_steps, values, eval_steps[0], eval_steps[-1]) if curve else nan
        row[f"eval_{mode}"] = float(values[-1]) if len(values) else nan  # the evaluation after training
        row["evals"] = max(row["evals"], len(values))
    plain = scalars.get("eval/episodic_return")  # a fallback for scripts without the two tags
    row["eval_default"] = (
        float(plain[1][-1]) if plain and np.isnan([row["eval_argmax"], row["eval_sample"]]).all() else nan
    )
    sps_tag = next((tag for tag in SPS_TAGS if tag in scalars), None)
    row["sps"] = float(scalars[sps_tag][1][-1]) if sps_tag else nan
    return row


def bootstrap_ci(values, reps=10000, seed=0):
    """95% percentile bootstrap CI of the mean of `values` [n]: resample n values with replacement `reps` times.
    Used by grpo_report.py; the per-arm intervals here are t-intervals (a percentile bootstrap over 3 seeds is
    [min, max] of the seeds)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))  # [reps, n]
    means = values[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def t_interval(values, level=0.95):
    """mean +- t_{(1+level)/2, n-1} * s / sqrt(n) of `values` [n >= 2] (s: the sample standard deviation)."""
    values = np.asarray(values, dtype=float)
    half = stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def permutation_p(x, y):
    """Exact two-sided permutation p-value of mean(x) - mean(y): the share of all C(n+m, n) splits of the pooled runs
    into groups of len(x) and len(y) whose |difference of means| is at least the observed one (ties count)."""
    pooled = np.concatenate([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    observed = abs(np.mean(x) - np.mean(y))
    extreme = total = 0
    for chosen in itertools.combinations(range(len(pooled)), len(x)):
        in_x = np.zeros(len(pooled), dtype=bool)
        in_x[list(chosen)] = True
        difference = abs(pooled[in_x].mean() - pooled[~in_x].mean())
        extreme += difference >= observed - 1e-9 * max(1.0, observed)  # float sums in another order: same value
        total += 1
    return extreme / total


def baselines_of(method):
    """`script:NAME` -> the arms it is tested against: the script's K1 at the same step budget (a `-200k`-style
    suffix), and for a variant `PARENT-VARIANT` (e.g. K4-M8) also PARENT. [] for K1 itself or an unlabelled run."""
    if ":" not in method:
        return []
    script, name = method.split(":", 1)
    budget = re.search(r"-\d+k$", name)
    suffix = budget.group(0) if budget else ""
    core = name[: len(name) - len(suffix)]
    found = [f"{script}:K1{suffix}"]
    if "-" in core:
        found.append(f"{script}:{core.rsplit('-', 1)[0]}{suffix}")
    return [b for b in dict.fromkeys(found) if b != method]


def comparisons(table):
    """[(task, method, baseline, n, m, difference of means, exact permutation p)] for every method with a baseline
    on the same task, both with 2 or more runs."""
    out = []
    for task, by_method in sorted(table.items()):
        for method in sorted(by_method):
            for baseline in baselines_of(method):
                x, y = by_method[method], by_method.get(baseline, [])
                if len(x) >= 2 and len(y) >= 2:
                    difference = float(np.mean(x) - np.mean(y))
                    out.append((task, method, baseline, len(x), len(y), difference, permutation_p(x, y)))
    return out


def iqm_with_ci(table, reps=2000, seed=0):
    """{(task, method): (iqm, lo, hi, n_runs)} through rliable, per task (a [runs, 1] matrix), in raw return units.
    95% percentile stratified-bootstrap CI; numpy's global generator is seeded before the call (rliable uses it)."""
    from rliable import library as rly
    from rliable import metrics

    matrices = {(t, m): np.asarray(v, dtype=float)[:, None] for t, ms in table.items() for m, v in ms.items()}
    if not matrices:
        return {}

    def iqm(scores):
        return np.array([metrics.aggregate_iqm(scores)])

    with warnings.catch_warnings():  # arch 7 warns that rliable's `random_state` argument will be renamed
        warnings.simplefilter("ignore", FutureWarning)
        np.random.seed(seed)
        point, interval = rly.get_interval_estimates({f"{t}|{m}": v for (t, m), v in matrices.items()}, iqm, reps=reps)
    return {
        (t, m): (float(point[f"{t}|{m}"][0]), *map(float, interval[f"{t}|{m}"][:, 0]), len(v))
        for (t, m), v in matrices.items()
    }


def improvement_with_ci(table, reps=2000, seed=0):
    """{(task, method, baseline): (p, lo, hi)}: rliable's probability of improvement P(method > baseline) on one
    task: the share of (method run, baseline run) pairs the method wins, ties half; 0.5 = no difference. The CI
    resamples each arm's runs (95% percentile bootstrap); numpy's global generator is seeded before the call."""
    from rliable import library as rly
    from rliable import metrics

    pairs = {}
    for task, by_method in table.items():
        for method in sorted(by_method):
            for baseline in baselines_of(method):
                if baseline in by_method:
                    x, y = (np.asarray(by_method[m], dtype=float)[:, None] for m in (method, baseline))
                    pairs[(task, method, baseline)] = [x, y]
    if not pairs:
        return {}

    def improvement(x, y):
        return np.array([metrics.probability_of_improvement(x, y)])

    keys = {"|".join(k): v for k, v in pairs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        np.random.seed(seed)
        point, interval = rly.get_interval_estimates(keys, improvement, reps=reps)
    return {k: (float(point["|".join(k)][0]), *map(float, interval["|".join(k)][:, 0])) for k in pairs}


def collect(rows, labels, metric):
    """{task: {method: [value per seed, seed order]}} of one metric, leaving out nan."""
    table = defaultdict(lambda: defaultdict(list))
    for name in sorted(rows, key=lambda n: labels[n]["seed"]):
        value = rows[name][metric]
        if not np.isnan(value):
            table[labels[name]["task"]][labels[name]["method"]].append(value)
    return {task: dict(methods) for task, methods in table.items()}  # plain dicts: a lookup adds no empty entry


def fmt_ci(values):
    """`mean [lo, hi]` (95% t-interval over seeds), or the value alone for one seed, or `-`."""
    if len(values) == 0:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    lo, hi = t_interval(values)
    return f"{np.mean(values):.0f} [{lo:.0f}, {hi:.0f}]"


def holm(ps):
    """Holm's step-down adjustment of p-values tested together: the i-th smallest is multiplied by (m - i), i from 0,
    then made non-decreasing in that order and capped at 1. A verdict with adjusted p < 0.05 holds for the family."""
    order = np.argsort(ps, kind="stable")
    adjusted, running = np.empty(len(ps)), 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (len(ps) - i) * ps[j]))
        adjusted[j] = running
    return adjusted.tolist()


def verdict(difference, p, alpha=0.05):
    if p >= alpha:
        return "cannot be told apart"
    return "higher" if difference > 0 else "lower"


def markdown(rows, labels, last_n):
    """The per-task table, the permutation tests, rliable's per-task IQM and P(improvement), the per-run table."""
    tables = {m: collect(rows, labels, m) for m in METRICS}
    groups = defaultdict(list)
    for name in rows:
        groups[(labels[name]["task"], labels[name]["method"])].append(name)
    titles = [METRICS[m] + (f" (last {last_n} ep.)" if m == "final" else "") for m in METRICS]
    out = [
        "Mean over seeds with a 95% t-interval over seeds in brackets (rl_report.py's docstring: the metrics).",
        "",
        "| task | method | seeds | steps | evals | " + " | ".join(titles) + " |",
        "|---" * (5 + len(METRICS)) + "|",
    ]
    for task, method in sorted(groups):
        names = groups[(task, method)]
        cells = [fmt_ci(tables[m].get(task, {}).get(method, [])) for m in METRICS]
        steps, evals = max(rows[n]["steps"] for n in names), max(rows[n]["evals"] for n in names)
        out.append(f"| {task} | {method} | {len(names)} | {steps} | {evals} | " + " | ".join(cells) + " |")
    tests = [(m, c) for m in COMPARED for c in comparisons(tables[m])]
    if tests:
        out += ["", "Each method against its baseline on the same task: difference of the means over seeds and the"]
        out += ["exact two-sided permutation p-value (smallest possible: 2 / C(n+m, n), 0.10 at 3 vs 3, 0.0079 at 5 vs"]
        out += [
            "5); a difference is called only at p < 0.05. Holm: the p-value adjusted over all the table's tests, so"
        ]
        out += ["a verdict holds for the whole family only where it is below 0.05 too.", ""]
        out += [
            "| task | metric | method | baseline | runs | difference | p | verdict | Holm p |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        adjusted = holm([c[-1] for _, c in tests])
        for (metric, (task, method, baseline, n, m, difference, p)), p_holm in zip(tests, adjusted):
            cells = f"{n} vs {m} | {difference:+.0f} | {p:.3f} | {verdict(difference, p)} | {p_holm:.3f}"
            out.append(f"| {task} | {METRICS[metric]} | {method} | {baseline} | {cells} |")
    for metric in ("auc_eval_sample", "auc_train"):
        iqms, improvements = iqm_with_ci(tables[metric]), improvement_with_ci(tables[metric])
        if not iqms:
            continue
        out += ["", f"rliable on the {METRICS[metric]}, per task (raw return), 95% percentile-bootstrap CIs:", ""]
        out += ["| task | method | runs | IQM | 95% CI | P(method > baseline) [95% CI] |", "|---|---|---|---|---|---|"]
        for (task, method), (iqm, lo, hi, n) in sorted(iqms.items()):
            better = [
                f"vs {b}: {p:.2f} [{a:.2f}, {c:.2f}]"
                for (t, mm, b), (p, a, c) in improvements.items()
                if (t, mm) == (task, method)
            ]
            out.append(f"| {task} | {method} | {n} | {iqm:.0f} | [{lo:.0f}, {hi:.0f}] | {'; '.join(better) or '-'} |")
    out += ["", "<details><summary>Per run</summary>", ""]
    keys = ("auc_eval_sample", "auc_eval_argmax", "auc_train", "episode_mean", "final", "eval_argmax", "eval_sample")
    out += ["| run | steps | episodes | " + " | ".join(METRICS[k] for k in keys) + " | SPS | wall (s) |"]
    out += ["|---" * (len(keys) + 5) + "|"]
    for name, x in sorted(rows.items()):
        cells = " | ".join(f"{x[k]:.1f}" for k in keys)
        out.append(f"| {name} | {x['steps']} | {x['episodes']} | {cells} | {x['sps']:.0f} | {x['wall']:.0f} |")
    out += ["", "</details>"]
    return "\n".join(out)


def mean_curve_with_ci(curves, grid):
    """Runs' (steps, returns) -> mean [G] and 95% t-band [2, G] over runs on `grid` (one run: no band).

    Each run's curve is linearly interpolated at the grid points (held flat outside its logged range). A t-interval
    per grid point, as for the tables: a percentile bootstrap over 5 runs covers well under 95%."""
    ys = np.stack([np.interp(grid, s, r) for s, r in curves])  # [runs, G]
    if len(ys) < 2:
        return ys.mean(0), np.stack([ys[0], ys[0]])
    half = stats.t.ppf(0.975, len(ys) - 1) * ys.std(0, ddof=1) / np.sqrt(len(ys))  # [G]
    return ys.mean(0), np.stack([ys.mean(0) - half, ys.mean(0) + half])


def plot(scalars, labels, last_n, path, tag=RETURN):
    """A panel per (script, task), scripts in rows, tasks in columns (the scripts' step budgets differ): per method,
    the mean over seeds of the `tag` curve (training returns: a trailing mean of last_n) with a 95% t-band."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    by_panel = defaultdict(lambda: defaultdict(list))
    for name, s in scalars.items():
        steps, returns = s.get(tag, (np.array([]), np.array([])))
        method, task = labels[name]["method"], labels[name]["task"]
        if len(returns) > 1:
            curve = trailing_mean(returns, last_n) if tag == RETURN else returns
            by_panel[(method.split(":")[0], task)][method].append((steps, curve))
    if not by_panel:
        return None
    scripts, tasks = sorted({p[0] for p in by_panel}), sorted({p[1] for p in by_panel})
    fig, axes = plt.subplots(len(scripts), len(tasks), figsize=(5 * len(tasks), 3.6 * len(scripts)), squeeze=False)
    for row, script in enumerate(scripts):
        axes[row][0].set_ylabel(f"episodic return (trailing mean of {last_n})" if tag == RETURN else tag)
        for ax, task in zip(axes[row], tasks):
            if (script, task) not in by_panel:
                ax.set_visible(False)
                continue
            methods = by_panel[(script, task)]
            for color, method in enumerate(sorted(methods)):
                curves = methods[method]
                grid = np.linspace(0, min(s[-1] for s, _ in curves), 100)
                mean, band = mean_curve_with_ci(curves, grid)
                ax.plot(grid, mean, color=f"C{color % 10}", label=f"{method} ({len(curves)} seeds)")
                ax.fill_between(grid, band[0], band[1], color=f"C{color % 10}", alpha=0.2)
            ax.set_title(f"{task}: {script}")
            ax.set_xlabel("global_step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def trailing_mean(returns, n):
    """[N] -> [N]: the mean of each episode's return and the n-1 before it (fewer at the start)."""
    csum = np.cumsum(np.insert(np.asarray(returns, dtype=float), 0, 0.0))  # [N+1], csum[i] = sum of the first i
    end = np.arange(1, len(returns) + 1)
    start = np.maximum(end - n, 0)
    return (csum[end] - csum[start]) / (end - start)


def write_section(path, text, begin=BEGIN, end=END):
    """Replace what lies between the begin and end markers of `path` (append them if absent; create the file)."""
    body = f"{begin}\n{text}\n{end}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.isfile(path):
        with open(path) as f:
            old = f.read()
        if begin in old and end in old:
            body = old[: old.index(begin)] + body + old[old.index(end) + len(end) :]
        else:
            body = old.rstrip("\n") + "\n\n" + body + "\n"
    with open(path + ".tmp", "w") as f:
        f.write(body)
    os.replace(path + ".tmp", path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", help="directory of TensorBoard runs (e.g. an rl_benchmark.py --out folder)")
    parser.add_argument("--match", default="", help="regex a run's path must contain (default: every run)")
    parser.add_argument("--last-n", type=int, default=10, help="episodes averaged for the final return and the curve")
    parser.add_argument("--png", default=None, help="learning-curve image path (default: RUNS_DIR/learning_curves.png)")
    parser.add_argument("--md", default=None, help="also write the tables between the rl_report markers of this file")
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
    labels = {name: labels_of(directory) for name, directory in runs.items()}
    rows = {name: summarise(s, args.last_n) | {"wall": wall_of(runs[name])} for name, s in scalars.items()}
    text = markdown(rows, labels, args.last_n)
    print(text)
    if args.md:
        write_section(args.md, text)
    png = args.png or os.path.join(args.runs_dir, "learning_curves.png")
    plot(scalars, labels, args.last_n, png)
    print(f"\nlearning curves: {png}")
    eval_png = plot(
        scalars, labels, args.last_n, re.sub(r"(\.png)?$", "_eval.png", png, count=1), EVAL_CURVES["sample"]
    )
    if eval_png:
        print(f"evaluation curves (sampled expert): {eval_png}")
    return rows


if __name__ == "__main__":
    main()
