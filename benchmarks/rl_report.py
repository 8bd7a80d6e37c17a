"""Summarise CleanRL-style TensorBoard runs over seeds: AUC, final and eval returns, IQM with CIs, learning curves.

A run is any directory under RUNS_DIR holding an `events.out.tfevents.*` file. Its task, method and seed come from
the `run.json` that benchmarks/rl_benchmark.py writes two levels up (OUT/<key>/run.json, the run in
OUT/<key>/runs/<run_name>), else from CleanRL's run name `{env_id}__{exp_name}__{seed}__{timestamp}`.

Per run:
  AUC          the paper's sample-efficiency metric: the mean of `charts/episodic_return` over every training
               episode of the run (the whole learning curve, each episode one point);
  final        the mean of the last --last-n training episodes;
  eval argmax, eval sample
               the mean deterministic evaluation return with the argmax expert and with a sampled expert
               (`eval/episodic_return_argmax`, `eval/episodic_return_sample`); a run that logs only
               `eval/episodic_return` reports it as `eval (default)`.
Per task and method: mean and 95% bootstrap CI over seeds. Per method, across tasks: the IQM with a 95% stratified
bootstrap CI from rliable (runs resampled within each task). Scores are normalised per task before they are pooled:
(x - min) / (max - min) over every run of that task in the report (all methods, all seeds), so 0 is the worst and
1 the best run on the task; with a single task the IQM is in raw return units.

  python benchmarks/rl_report.py benchmarks/runs/sweep --png docs/img/pmoe_curves.png --md benchmarks/results_pmoe.md
"""

import argparse
import json
import os
import re
import sys
import warnings
from collections import defaultdict

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

RETURN = "charts/episodic_return"
EVAL_TAGS = {
    "eval_argmax": "eval/episodic_return_argmax",
    "eval_sample": "eval/episodic_return_sample",
    "eval_default": "eval/episodic_return",
}
SPS_TAGS = ("charts/SPS_after_learning_starts", "charts/SPS")  # the first one present is reported
METRICS = ("auc", "final", "eval_argmax", "eval_sample", "eval_default")
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
    """{tag: (steps [N], values [N])} of every scalar in the run (all event files of the directory)."""
    acc = EventAccumulator(directory, size_guidance={"scalars": 0})  # 0 = keep every point
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        scalars[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events], dtype=float))
    return scalars


def summarise(scalars, last_n):
    """One run's numbers (nan where a tag is missing)."""
    steps, returns = scalars.get(RETURN, (np.array([]), np.array([])))
    row = {
        "steps": int(steps.max()) if len(steps) else 0,
        "episodes": len(returns),
        "auc": float(returns.mean()) if len(returns) else float("nan"),
        "final": float(returns[-last_n:].mean()) if len(returns) else float("nan"),
    }
    for key, tag in EVAL_TAGS.items():
        row[key] = float(scalars[tag][1].mean()) if tag in scalars else float("nan")
    if not np.isnan(row["eval_argmax"]) or not np.isnan(row["eval_sample"]):
        row["eval_default"] = float("nan")  # the plain tag is only a fallback for scripts without the two new tags
    sps_tag = next((tag for tag in SPS_TAGS if tag in scalars), None)
    row["sps"] = float(scalars[sps_tag][1][-1]) if sps_tag else float("nan")
    return row


def bootstrap_ci(values, reps=10000, seed=0):
    """95% percentile bootstrap CI of the mean of `values` [n]: resample n values with replacement `reps` times."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))  # [reps, n]
    means = values[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def normalise(table):
    """{task: {method: scores [seeds]}} -> the same, min-max normalised per task over every run of that task."""
    out = {}
    for task, by_method in table.items():
        pooled = np.concatenate([np.asarray(v, dtype=float) for v in by_method.values()])
        lo, hi = pooled.min(), pooled.max()
        span = hi - lo if hi > lo else 1.0
        out[task] = {m: (np.asarray(v, dtype=float) - lo) / span for m, v in by_method.items()}
    return out


def iqm_with_ci(table, reps=2000, seed=0):
    """{method: (iqm, lo, hi, n_tasks, n_runs)} through rliable: a [runs, tasks] matrix per method.

    Stratified bootstrap needs the same runs per task: each method keeps its first min-over-tasks seeds per task."""
    from rliable import library as rly
    from rliable import metrics

    by_method = defaultdict(dict)
    for task, methods in (normalise(table) if len(table) > 1 else table).items():
        for method, scores in methods.items():
            by_method[method][task] = np.asarray(scores, dtype=float)
    matrices = {}
    for method, tasks in by_method.items():
        n = min(len(s) for s in tasks.values())
        matrices[method] = np.stack([tasks[t][:n] for t in sorted(tasks)], axis=1)  # [runs, tasks]

    def iqm(scores):
        return np.array([metrics.aggregate_iqm(scores)])

    with warnings.catch_warnings():  # arch 7 warns that rliable's `random_state` argument will be renamed
        warnings.simplefilter("ignore", FutureWarning)
        point, interval = rly.get_interval_estimates(
            matrices, iqm, reps=reps, random_state=np.random.RandomState(seed)
        )  # rliable's default CI: percentile, 95%
    results = {}
    for method, m in matrices.items():
        results[method] = (float(point[method][0]), float(interval[method][0, 0]), float(interval[method][1, 0]))
        results[method] += (m.shape[1], m.shape[0])
    return results


def improvement_with_ci(table, reps=2000, seed=0):
    """{(method, baseline): (p, lo, hi, n_tasks)}: rliable's probability of improvement P(method > baseline).

    The baseline of `script:arm` is `script:K1` (plain SAC / PPO). P is the Mann-Whitney statistic per task (the
    share of (method run, baseline run) pairs the method wins, ties half) averaged over the tasks both were run
    on; 0.5 = no difference. The CI resamples each method's runs within each task (stratified bootstrap)."""
    from rliable import library as rly
    from rliable import metrics

    pairs = {}
    methods = sorted({m for by_method in table.values() for m in by_method})
    for method in methods:
        baseline = method.split(":")[0] + ":K1"
        tasks = sorted(t for t, by_method in table.items() if method in by_method and baseline in by_method)
        if method == baseline or not tasks:
            continue
        x, y = ([table[t][m] for t in tasks] for m in (method, baseline))
        n_x, n_y = min(len(v) for v in x), min(len(v) for v in y)
        pairs[(method, baseline)] = [np.stack([v[:n] for v in s], axis=1) for s, n in ((x, n_x), (y, n_y))]
    if not pairs:
        return {}

    def improvement(x, y):
        return np.array([metrics.probability_of_improvement(x, y)])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        point, interval = rly.get_interval_estimates(
            {f"{m} > {b}": v for (m, b), v in pairs.items()},
            improvement,
            reps=reps,
            random_state=np.random.RandomState(seed),
        )
    return {
        (m, b): (float(point[f"{m} > {b}"][0]), *map(float, interval[f"{m} > {b}"][:, 0]), v[0].shape[1])
        for (m, b), v in pairs.items()
    }


def collect(rows, labels, metric):
    """{task: {method: [value per seed, seed order]}} of one metric, leaving out nan."""
    table = defaultdict(lambda: defaultdict(list))
    for name in sorted(rows, key=lambda n: labels[n]["seed"]):
        value = rows[name][metric]
        if not np.isnan(value):
            table[labels[name]["task"]][labels[name]["method"]].append(value)
    return {task: dict(methods) for task, methods in table.items()}  # plain dicts: a lookup adds no empty entry


def fmt_ci(values):
    """`mean [lo, hi]` (95% bootstrap CI over seeds), or the value alone for one seed, or `-`."""
    if len(values) == 0:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    lo, hi = bootstrap_ci(values)
    return f"{np.mean(values):.0f} [{lo:.0f}, {hi:.0f}]"


def markdown(rows, labels, last_n):
    """The per-task table, the IQM table per metric and the per-run table."""
    tables = {m: collect(rows, labels, m) for m in METRICS}
    groups = defaultdict(list)
    for name in rows:
        groups[(labels[name]["task"], labels[name]["method"])].append(name)
    head = "| task | method | seeds | steps | AUC | final (last {n} ep.) | eval argmax | eval sample | eval (default) |"
    out = [
        "Mean over seeds with a 95% bootstrap CI over seeds in brackets.",
        "",
        head.format(n=last_n),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, method in sorted(groups):
        names = groups[(task, method)]
        cells = [fmt_ci(tables[m].get(task, {}).get(method, [])) for m in METRICS]
        steps = max(rows[n]["steps"] for n in names)
        out.append(f"| {task} | {method} | {len(names)} | {steps} | " + " | ".join(cells) + " |")
    iqm_metrics = (("auc", "AUC"), ("final", "final return"), ("eval_argmax", "eval argmax"), ("eval_default", "eval"))
    for metric, title in iqm_metrics:
        if not tables[metric]:
            continue
        results = iqm_with_ci(tables[metric])
        unit = "normalised per task, min-max over all runs" if len(tables[metric]) > 1 else "raw return"
        out += ["", f"IQM of the {title} across tasks ({unit}), 95% stratified-bootstrap CI (rliable):", ""]
        out += ["| method | tasks | runs per task | IQM | 95% CI |", "|---|---|---|---|---|"]
        for method, (iqm, lo, hi, n_tasks, n_runs) in sorted(results.items()):
            out.append(f"| {method} | {n_tasks} | {n_runs} | {iqm:.3g} | [{lo:.3g}, {hi:.3g}] |")
    for metric, title in (("auc", "AUC"), ("final", "final return"), ("eval_argmax", "eval argmax")):
        results = improvement_with_ci(tables[metric])
        if not results:
            continue
        out += ["", f"Probability that a method's {title} beats its script's K=1 run on the same task (rliable;"]
        out += ["0.5 = no difference), 95% stratified-bootstrap CI:", ""]
        out += ["| method | baseline | tasks | P(method > baseline) | 95% CI |", "|---|---|---|---|---|"]
        for (method, baseline), (p, lo, hi, n_tasks) in sorted(results.items()):
            out.append(f"| {method} | {baseline} | {n_tasks} | {p:.2f} | [{lo:.2f}, {hi:.2f}] |")
    out += ["", "<details><summary>Per run</summary>", ""]
    out += ["| run | steps | episodes | AUC | final | eval argmax | eval sample | eval default | SPS | wall (s) |"]
    out += ["|---|---|---|---|---|---|---|---|---|---|"]
    for name, x in sorted(rows.items()):
        cells = " | ".join(f"{x[m]:.1f}" for m in METRICS)
        out.append(f"| {name} | {x['steps']} | {x['episodes']} | {cells} | {x['sps']:.0f} | {x['wall']:.0f} |")
    out += ["", "</details>"]
    return "\n".join(out)


def mean_curve_with_ci(curves, grid, reps=2000, seed=0):
    """Runs' (steps, returns) -> mean [G] and 95% bootstrap band [2, G] over runs on `grid`.

    Each run's curve is linearly interpolated at the grid points (held flat outside its logged range)."""
    ys = np.stack([np.interp(grid, s, r) for s, r in curves])  # [runs, G]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ys), size=(reps, len(ys)))  # [reps, runs]
    means = ys[idx].mean(1)  # [reps, G]
    return ys.mean(0), np.percentile(means, [2.5, 97.5], axis=0)


def plot(scalars, labels, last_n, path):
    """A panel per (script, task), scripts in rows, tasks in columns (the scripts' step budgets differ): per method,
    the mean over seeds of the smoothed training return with a 95% bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    by_panel = defaultdict(lambda: defaultdict(list))
    for name, s in scalars.items():
        steps, returns = s.get(RETURN, (np.array([]), np.array([])))
        method, task = labels[name]["method"], labels[name]["task"]
        if len(returns):
            by_panel[(method.split(":")[0], task)][method].append((steps, trailing_mean(returns, last_n)))
    scripts, tasks = sorted({p[0] for p in by_panel}), sorted({p[1] for p in by_panel})
    fig, axes = plt.subplots(len(scripts), len(tasks), figsize=(5 * len(tasks), 3.6 * len(scripts)), squeeze=False)
    for row, script in enumerate(scripts):
        axes[row][0].set_ylabel(f"episodic return (trailing mean of {last_n})")
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


def trailing_mean(returns, n):
    """[N] -> [N]: the mean of each episode's return and the n-1 before it (fewer at the start)."""
    csum = np.cumsum(np.insert(np.asarray(returns, dtype=float), 0, 0.0))  # [N+1], csum[i] = sum of the first i
    end = np.arange(1, len(returns) + 1)
    start = np.maximum(end - n, 0)
    return (csum[end] - csum[start]) / (end - start)


def write_section(path, text, begin=BEGIN, end=END):
    """Replace what lies between the begin and end markers of `path` (append them if absent; create the file)."""
    body = f"{begin}\n{text}\n{end}"
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
    return rows


if __name__ == "__main__":
    main()
