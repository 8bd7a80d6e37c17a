"""Pass@k tables and curves from the eval JSON files that discrete_grpo.py and sofT_grpo.py write.

Each evaluation writes OUTPUT_DIR/<run_name>/eval_step<N>.json with "step", "model" and Pass@k keys: `pass@k` for
discrete_grpo.py's decoding, `<setting>/pass@k` for each of sofT_grpo.py's --eval-settings.
    python benchmarks/grpo_report.py runs/                      # every eval under runs/, one row each
    python benchmarks/grpo_report.py runs/A runs/B --last       # before/after only: first and last step per run
    python benchmarks/grpo_report.py runs/ --columns run step temperature --delta

--seeds reads an rl_benchmark.py sweep (OUT/<key>/run.json beside OUT/<key>/runs/<run_name>/eval_step*.json) and
gives, for each model x decoding, Pass@k as the mean over seeds with a 95% bootstrap CI over seeds, the per-seed
values, the training rollouts' mean completion length, and Pass@1 / Pass@8 against the training step with CI bands:
    python benchmarks/grpo_report.py benchmarks/runs/grpo_toy --seeds --png docs/img/grpo_pass_at_k_vs_step.png \\
        --md benchmarks/results_grpo_seeds.md
With --t: t-intervals, exact permutation tests, and whether each arm's Pass@1 has flattened (its slope over the
last third of the steps, per seed; "flat" when the whole 95% interval lies inside +-2 points per 100 steps).
--strata 1,2,3 4,5 (with --t) tests within strata of seeds, for seeds whose runs differ by more than the arm (e.g.
trained from a toy base model rebuilt on another CPU): arm labels are permuted only inside each stratum.
A model is "base" (step 0 of a training run, or an eval-only run of the toy base model), or the method of the run
that trained it (its last step, or an eval-only run of its final checkpoint). A decoding is "discrete"
(discrete_grpo.py's eval: T 0.6, top-k 30, top-p 0.95) or the name of a sofT_grpo.py eval setting.
"""

import argparse
import glob
import itertools
import json
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl_report import bootstrap_ci, load_scalars, permutation_p, t_interval, verdict, write_section  # noqa: E402

BEGIN, END = "<!-- grpo_report:begin -->", "<!-- grpo_report:end -->"
# The paper's rows (model, decoding) -> name; "soft-baseline" is the paper's soft decoding of base and GRPO models
PAPER_ROWS = {
    ("base", "discrete"): "No-RL, discrete",
    ("base", "soft-baseline"): "No-RL, soft",
    ("discrete_grpo:grpo", "discrete"): "GRPO, discrete",
    ("discrete_grpo:grpo", "soft-baseline"): "GRPO, soft",
    ("sofT_grpo:softgrpo", "sofT-grpo"): "SofT-GRPO, soft",
}


def load_evals(paths: list) -> list:
    """Every eval_step*.json under the given folders (searched recursively) or given directly.

    Sorted by run and step."""
    files = []
    for p in paths:
        if os.path.isfile(p):
            files.append(p)
        else:
            files += glob.glob(os.path.join(p, "**", "eval_step*.json"), recursive=True)
    records = []
    for f in sorted(set(files)):
        with open(f) as fh:
            r = json.load(fh)
        r.setdefault("run", os.path.basename(os.path.dirname(os.path.abspath(f))))
        r["path"] = f
        records.append(r)
    return sorted(records, key=run_and_step)


def run_and_step(record):
    return record["run"], record["step"]


def k_of(key):
    return int(key.split("@")[1])


def pass_keys(records: list) -> list:
    """pass@k keys present in any record, ordered by k."""
    keys = set()
    for r in records:
        keys |= {k for k in r if k.startswith("pass@")}
    return sorted(keys, key=k_of)


def fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(records: list, columns: list, delta: bool = False) -> str:
    """One row per record; Pass@k in percent. With delta, a row per run with last minus first step."""
    keys = pass_keys(records)
    lines = ["| " + " | ".join(columns + keys) + " |", "|" + "---|" * (len(columns) + len(keys))]
    for r in records:
        cells = [fmt(r.get(c, "")) for c in columns] + [f"{100 * r[k]:.1f}" if k in r else "" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    if delta:
        runs = defaultdict(list)
        for r in records:
            runs[r["run"]].append(r)
        for run, rs in runs.items():
            if len(rs) > 1:
                first, last = rs[0], rs[-1]
                cells = [f"{run} (step {last['step']} - step {first['step']})" if c == "run" else "" for c in columns]
                diffs = [f"{100 * (last[k] - first[k]):+.1f}" if k in first and k in last else "" for k in keys]
                lines.append("| " + " | ".join(cells + diffs) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- seed sweeps


def sweep_entries(records: list) -> list:
    """Flatten a sweep's eval records into entries {model, decoding, step, last, seed, pass: {k: value}, key}.

    Needs the run.json that rl_benchmark.py writes at OUT/<key>/ (two folders above the eval JSON); runs without
    its DONE.json (still running, or killed) are left out."""
    last_step = defaultdict(int)
    for r in records:
        last_step[r["run"]] = max(last_step[r["run"]], r["step"])
    entries, seen = [], set()
    for r in records:
        key_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(r["path"]))))
        if not os.path.isfile(os.path.join(key_dir, "DONE.json")):  # still running (or killed): not a final model
            continue
        with open(os.path.join(key_dir, "run.json")) as f:
            labels = json.load(f)["labels"]
        trained_by = trainer_of(r["model"], os.path.dirname(key_dir))
        if trained_by:  # an eval-only run of a checkpoint: the model is the trainer's, at its last step
            model, step, is_last = trained_by, None, True
        elif r["step"] == 0:
            model, step, is_last = "base", 0, False
        else:
            model, step, is_last = labels["method"], r["step"], r["step"] == last_step[r["run"]]
        by_decoding = defaultdict(dict)
        for k, v in r.items():
            if "pass@" in k:
                decoding, _, metric = k.rpartition("/")
                by_decoding[decoding or "discrete"][k_of(metric)] = v
        for decoding, values in by_decoding.items():
            ident = (model, decoding, step, labels["seed"])  # step None: a checkpoint's eval-only run
            if ident in seen:  # the base model is evaluated by every training run of a seed: identical numbers
                continue
            seen.add(ident)
            entry = dict(model=model, decoding=decoding, step=step, last=is_last, seed=labels["seed"], passk=values)
            entries.append(entry)
    return entries


def trainer_of(model_path, sweep_root=None):
    """'sofT_grpo:softgrpo' for .../<key>/runs/<run>/final whose <key>/run.json names that method, else None. <key> is
    looked up in the sweep being read first (a sweep moved or cloned elsewhere keeps its eval-only runs classified,
    not read as the base model), then at the recorded path."""
    parts = os.path.abspath(model_path).rstrip("/").split(os.sep)
    if len(parts) < 4 or parts[-1] != "final" or parts[-3] != "runs":
        return None
    for key_dir in ([os.path.join(sweep_root, parts[-4])] if sweep_root else []) + [os.sep.join(parts[:-3])]:
        if os.path.isfile(os.path.join(key_dir, "run.json")):
            with open(os.path.join(key_dir, "run.json")) as f:
                return json.load(f)["labels"]["method"]
    return None


def final_table(entries):
    """{(model, decoding): {seed: {k: pass@k}}} of the final models (and the base model at step 0)."""
    table = defaultdict(dict)
    for e in entries:
        if e["model"] == "base" or e["last"]:
            table[(e["model"], e["decoding"])][e["seed"]] = e["passk"]
    return table


MODEL_NAMES = {
    "base": "No-RL",
    "discrete_grpo:grpo": "GRPO",
    "sofT_grpo:softgrpo": "SofT-GRPO",
    "discrete_grpo:grpo-k5p95": "GRPO k5/p0.95",  # discrete GRPO on SofT-GRPO's top-k 5 / top-p 0.95 rollouts
}


def model_name(model):
    """Readable model names; an ablation arm `sofT_grpo:<arm>` reads `SofT-GRPO <arm>`."""
    if model in MODEL_NAMES:
        return MODEL_NAMES[model]
    return "SofT-GRPO " + model.split(":", 1)[1] if model.startswith("sofT_grpo:") else model


def row_name(model, decoding):
    """The paper's name of the row, else `<model>, <decoding> decoding`."""
    return PAPER_ROWS.get((model, decoding), f"{model_name(model)}, {decoding} decoding")


def row_order(item):
    (model, decoding), _ = item
    paper = list(PAPER_ROWS)
    return (paper.index((model, decoding)) if (model, decoding) in paper else len(paper), model, decoding)


def mean_ci(values, t=False):
    """(mean, lo, hi) in percent: the mean over seeds and its 95% CI, a percentile bootstrap or (t) a t-interval,
    which holds at a few seeds (a single seed: its value, no interval)."""
    if t and len(values) < 2:
        return (100 * float(values[0]),) * 3
    lo, hi = t_interval(values) if t else bootstrap_ci(values)
    return 100 * float(np.mean(values)), 100 * lo, 100 * hi


def difference_ci(a, b, reps=10000, seed=0):
    """mean(a) - mean(b) and its 95% percentile bootstrap CI, a and b resampled independently (different runs)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), size=(reps, len(a)))  # [reps, n_a]
    ib = rng.integers(0, len(b), size=(reps, len(b)))  # [reps, n_b]
    diffs = a[ia].mean(1) - b[ib].mean(1)
    return float(a.mean() - b.mean()), float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def stratified_permutation_p(x: dict, y: dict, strata: list) -> float:
    """Exact two-sided permutation p-value of mean(x) - mean(y), x and y {seed: value}, when the seeds come in strata
    (lists of seeds) that may differ by more than the arm: the arm labels are permuted only inside each stratum,
    keeping its counts, so every split keeps each arm's mix of strata. The share of all such splits (the product over
    strata of C(n_x + n_y, n_x)) whose |difference of means| is at least the observed one, ties counted."""
    blocks = []  # per stratum: its pooled values and how many of them belong to x
    for stratum in strata:
        xs, ys = [x[s] for s in stratum if s in x], [y[s] for s in stratum if s in y]
        blocks.append((np.array(xs + ys, dtype=float), len(xs)))
    observed = abs(np.mean(list(x.values())) - np.mean(list(y.values())))
    choices = [itertools.combinations(range(len(values)), n_x) for values, n_x in blocks]
    extreme = total = 0
    for split in itertools.product(*choices):
        in_x, in_y = [], []
        for (values, _), chosen in zip(blocks, split):
            mask = np.zeros(len(values), dtype=bool)
            mask[list(chosen)] = True
            in_x.append(values[mask])
            in_y.append(values[~mask])
        difference = abs(np.concatenate(in_x).mean() - np.concatenate(in_y).mean())
        extreme += difference >= observed - 1e-9 * max(1.0, observed)  # float sums in another order: same value
        total += 1
    return extreme / total


def comparison(table, ks, treated, control, t=False, strata=None):
    """Markdown lines: treated minus control row, per Pass@k, in points, with a 95% bootstrap CI or (t) the exact
    permutation p-value over all splits of the pooled seeds (strata: only splits inside each stratum of seeds) and
    its verdict (p >= 0.05: cannot be told apart)."""
    if treated not in table or control not in table:
        return []
    cells = []
    for k in ks:
        a = [v[k] for v in table[treated].values() if k in v]
        b = [v[k] for v in table[control].values() if k in v]
        if not (a and b) or (t and len(a) + len(b) < 3):
            cells.append("-")
        elif t:
            diff = 100 * (np.mean(a) - np.mean(b))
            if strata:
                x = {s: v[k] for s, v in table[treated].items() if k in v}
                y = {s: v[k] for s, v in table[control].items() if k in v}
                p = stratified_permutation_p(x, y, strata)
            else:
                p = permutation_p(a, b)
            cells.append(f"{diff:+.1f}, p {p:.3f}: {verdict(diff, p)}")
        else:
            cells.append("%+.1f [%+.1f, %+.1f]" % tuple(100 * x for x in difference_ci(a, b)))
    name = f"{row_name(*treated)} minus {row_name(*control)}"
    return [f"| {name} | {len(table[treated])} vs {len(table[control])} | " + " | ".join(cells) + " |"]


K5 = "discrete_grpo:grpo-k5p95"  # issue 23's third arm
ARMS = [("discrete_grpo:grpo", "discrete"), ("sofT_grpo:softgrpo", "sofT-grpo"), (K5, "discrete")]  # own decodings


def late_slope(entries, model, decoding, k=1, fraction=1 / 3):
    """Has Pass@k flattened? Per seed, the least-squares slope of Pass@k over the evaluations in the last `fraction`
    of the steps every seed reached, in points per 100 steps. Returns (steps fitted, slopes per seed)."""
    by_seed = defaultdict(dict)
    seeds = {e["seed"] for e in entries if e["model"] == model and e["decoding"] == decoding}
    for e in entries:
        if e["step"] is not None and e["model"] in ("base", model) and e["decoding"] == decoding and k in e["passk"]:
            if e["seed"] in seeds:
                by_seed[e["seed"]][e["step"]] = e["passk"][k]
    if not by_seed:
        return [], []
    last = min(max(steps) for steps in by_seed.values())  # the last step that every seed reached
    fitted = sorted({s for steps in by_seed.values() for s in steps if (1 - fraction) * last - 1e-9 <= s <= last})
    slopes = [100 * 100 * np.polyfit(fitted, [by_seed[s][x] for x in fitted], 1)[0] for s in sorted(by_seed)]
    return fitted, slopes


def plateau_markdown(entries, k=1, margin=2.0):
    """Markdown lines: each arm's late slope, mean over seeds with a 95% t-interval, and whether it still moves.
    "flat" needs the whole interval inside +-margin points per 100 steps (an equivalence test, not a missing rise)."""
    out = [f"| model, decoding | seeds | steps fitted | Pass@{k} slope, points per 100 steps | verdict |"]
    out.append("|---|---|---|---|---|")
    for model, decoding in ARMS:
        fitted, slopes = late_slope(entries, model, decoding, k)
        if len(slopes) < 2 or len(fitted) < 3:
            continue
        lo, hi = t_interval(slopes)
        trend = "still rising" if lo > 0 else "still falling" if hi < 0 else "undecided (CI covers 0)"
        trend = f"flat (CI inside +-{margin:g})" if -margin < lo and hi < margin else trend
        cell = f"{np.mean(slopes):+.2f} [{lo:+.2f}, {hi:+.2f}]"
        span = f"{fitted[0]}-{fitted[-1]} ({len(fitted)} evals)"
        out.append(f"| {row_name(model, decoding)} | {len(slopes)} | {span} | {cell} | {trend} |")
    return out if len(out) > 2 else []


def seeds_markdown(entries, lengths, t=False, strata=None):
    """The table (mean [95% CI] per Pass@k), the rollout lengths and the per-seed values in a folded section.
    t: t-intervals and exact permutation tests (issue 23) instead of percentile bootstraps; strata: lists of seeds
    inside which the permutation tests permute."""
    table = final_table(entries)
    ks = sorted({k for seeds in table.values() for values in seeds.values() for k in values})
    out = ["| model, decoding | seeds | " + " | ".join(f"Pass@{k}" for k in ks) + " |"]
    out.append("|---|---|" + "---|" * len(ks))
    for (model, decoding), seeds in sorted(table.items(), key=row_order):
        cells = []
        for k in ks:
            values = [seeds[s][k] for s in sorted(seeds) if k in seeds[s]]
            if t and len(values) == 1:  # one seed: its value, no interval
                cells.append(f"{100 * values[0]:.1f}")
            else:
                cells.append("%.1f [%.1f, %.1f]" % mean_ci(values, t) if values else "-")
        out.append(f"| {row_name(model, decoding)} | {len(seeds)} | " + " | ".join(cells) + " |")
    soft, grpo = "sofT_grpo:softgrpo", "discrete_grpo:grpo"
    # the paper's comparison first: each model in its own decoding
    diffs = comparison(table, ks, (soft, "sofT-grpo"), (grpo, "discrete"), t, strata)
    diffs += comparison(table, ks, (soft, "sofT-grpo"), (grpo, "soft-baseline"), t, strata)
    diffs += comparison(table, ks, (soft, "sofT-grpo"), (K5, "discrete"), t, strata)
    for decoding in ("sofT-grpo", "soft-baseline", "discrete"):  # two checkpoints under one and the same decoding
        diffs += comparison(table, ks, (soft, decoding), (grpo, decoding), t, strata)
        diffs += comparison(table, ks, (soft, decoding), (K5, decoding), t, strata)
        diffs += comparison(table, ks, (K5, decoding), (grpo, decoding), t, strata)
    if diffs:
        how = "95% bootstrap CI, the two sets of runs resampled apart"
        if t:
            how = "exact permutation p over all splits of the pooled runs; p >= 0.05: cannot be told apart"
            if strata:
                groups = " | ".join(",".join(map(str, stratum)) for stratum in strata)
                how = f"exact permutation p over the splits inside each stratum of seeds ({groups}); p >= 0.05: "
                how += "cannot be told apart"
        out += ["", f"Differences in points (mean over seeds, {how}):", ""]
        out += ["| comparison | seeds | " + " | ".join(f"Pass@{k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
        out += diffs
    plateau = plateau_markdown(entries) if t else []
    if plateau:
        out += [
            "",
            "Has Pass@1 flattened? The slope over the last third of the steps, fitted per seed (95% t-interval):",
        ]
        out += [""] + plateau
    if lengths:
        out += [
            "",
            "Training rollouts (T 1.0, TensorBoard): mean over seeds of the first 5 / the last 5 training steps.",
            "",
        ]
        out += ["| method | seeds | " + " | ".join(TRAIN_TAGS) + " |", "|---|---|" + "---|" * len(TRAIN_TAGS)]
        for method in sorted(lengths[TRAIN_TAGS[0]]):
            cells = []
            for tag in TRAIN_TAGS:
                per_seed = list(lengths[tag].get(method, {}).values())
                first, last = [v[0] for v in per_seed], [v[1] for v in per_seed]
                cells.append(f"{np.mean(first):.3g} / {np.mean(last):.3g}" if per_seed else "-")
            out.append(f"| {method} | {len(lengths[TRAIN_TAGS[0]][method])} | " + " | ".join(cells) + " |")
    out += ["", "<details><summary>Per seed (Pass@k in %)</summary>", ""]
    out += ["| model, decoding | seed | " + " | ".join(f"Pass@{k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for (model, decoding), seeds in sorted(table.items(), key=row_order):
        for s in sorted(seeds):
            cells = [f"{100 * seeds[s][k]:.1f}" if k in seeds[s] else "-" for k in ks]
            out.append(f"| {row_name(model, decoding)} | {s} | " + " | ".join(cells) + " |")
    out += ["", "</details>"]
    return "\n".join(out)


def curve(entries, model, decoding, k, t=False):
    """Pass@k against the training step of one trained model in one decoding, over seeds.

    Step 0 is the base model. Returns steps [S], mean [S], lo [S], hi [S] (fractions) and seeds per step [S];
    only steps that every seed of the model reached are kept."""
    by_step = defaultdict(dict)
    seeds = {e["seed"] for e in entries if e["model"] == model and e["decoding"] == decoding}
    for e in entries:
        on_curve = e["step"] is not None and e["model"] in ("base", model)
        if on_curve and e["decoding"] == decoding and e["seed"] in seeds and k in e["passk"]:
            by_step[e["step"]][e["seed"]] = e["passk"][k]
    steps = sorted(s for s, values in by_step.items() if set(values) == seeds)
    mean, lo, hi = [], [], []
    for s in steps:
        values = [by_step[s][seed] for seed in sorted(seeds)]
        mean.append(float(np.mean(values)))
        ci = t_interval(values) if t and len(values) > 1 else bootstrap_ci(values)
        lo.append(ci[0])
        hi.append(ci[1])
    return np.array(steps), np.array(mean), np.array(lo), np.array(hi), len(seeds)


def plot_curves(entries, arms, ks, path, t=False):
    """One panel per k: for each (model, decoding) arm, the mean Pass@k over seeds against the step, 95% CI band."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks), 3.8), squeeze=False)
    for ax, k in zip(axes[0], ks):
        for color, (model, decoding) in enumerate(arms):
            steps, mean, lo, hi, n = curve(entries, model, decoding, k, t)
            if len(steps) == 0:
                continue
            label = f"{row_name(model, decoding)} ({n} seeds)"
            ax.plot(steps, 100 * mean, marker="o", color=f"C{color}", label=label)
            ax.fill_between(steps, 100 * lo, 100 * hi, color=f"C{color}", alpha=0.2)
        ax.set_title(f"Pass@{k} (held-out toy problems)")
        ax.set_xlabel("GRPO step (0 = base model)")
        ax.set_ylabel(f"Pass@{k} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


TRAIN_TAGS = ("completions/mean_length", "reward", "kl", "soft/top1_weight")  # TRL's names; the last: sofT_grpo.py


def rollout_lengths(sweep_dir, keep_seeds=None, methods=None):
    """{tag: {method: {seed: (mean over the first 5 steps, over the last 5)}}} of TRAIN_TAGS, from TensorBoard."""
    stats = defaultdict(lambda: defaultdict(dict))
    for meta in sorted(glob.glob(os.path.join(sweep_dir, "*", "run.json"))):
        if not os.path.isfile(os.path.join(os.path.dirname(meta), "DONE.json")):
            continue
        with open(meta) as f:
            labels = json.load(f)["labels"]
        if (keep_seeds and labels["seed"] not in keep_seeds) or (methods and labels["method"] not in methods):
            continue
        for run_dir in glob.glob(os.path.join(os.path.dirname(meta), "runs", "*")):
            scalars = load_scalars(run_dir) if glob.glob(os.path.join(run_dir, "events.out.tfevents*")) else {}
            for tag in TRAIN_TAGS:
                if tag in scalars and "completions/mean_length" in scalars:  # training runs only
                    values = scalars[tag][1]
                    stats[tag][labels["method"]][labels["seed"]] = (float(values[:5].mean()), float(values[-5:].mean()))
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders (searched recursively) or eval JSON files")
    parser.add_argument(
        "--columns", nargs="+", default=["run", "step", "n", "problems", "temperature"], help="non-Pass@k columns"
    )
    parser.add_argument("--last", action="store_true", help="keep only the first and last evaluation of each run")
    parser.add_argument("--delta", action="store_true", help="add a last-minus-first row per run (percentage points)")
    parser.add_argument("--seeds", action="store_true", help="an rl_benchmark.py sweep: mean and CI over seeds")
    parser.add_argument("--png", default=None, help="with --seeds: Pass@1 / Pass@8 against the step, as this PNG")
    parser.add_argument("--md", default=None, help="with --seeds: write the tables between this file's markers")
    parser.add_argument("--section", default=None, help="with --md: use the markers grpo_report:SECTION:begin/end")
    parser.add_argument("--keep-seeds", nargs="+", type=int, help="with --seeds: only these seeds (e.g. 1 2 3)")
    parser.add_argument("--methods", nargs="+", help="with --seeds: only the base model and these trained models")
    parser.add_argument("--t", action="store_true", help="with --seeds: t-intervals and exact permutation tests")
    parser.add_argument(
        "--strata", nargs="+", help="with --t: seeds in strata, e.g. 1,2,3 4,5: permutation tests permute inside each"
    )
    args = parser.parse_args(argv)
    strata = None
    if args.strata:
        try:
            strata = [[int(seed) for seed in group.split(",")] for group in args.strata]
        except ValueError:
            print(
                f"error: --strata: {' '.join(args.strata)} is not seeds; write e.g. --strata 1,2,3 4,5", file=sys.stderr
            )
            raise SystemExit(2) from None
    records = load_evals(args.paths)
    if not records:
        print(f"error: paths: no eval_step*.json under {' '.join(args.paths)}", file=sys.stderr)
        raise SystemExit(2)
    if args.seeds:
        entries = sweep_entries(records)
        if args.keep_seeds:
            entries = [e for e in entries if e["seed"] in args.keep_seeds]
        if args.methods:
            entries = [e for e in entries if e["model"] == "base" or e["model"] in args.methods]
        lengths = defaultdict(dict)
        for p in args.paths:
            if os.path.isdir(p):
                for tag, by_method in rollout_lengths(p, args.keep_seeds, args.methods).items():
                    lengths[tag].update(by_method)
        if strata:
            missing = sorted({e["seed"] for e in entries} - {seed for stratum in strata for seed in stratum})
            if missing:
                print(f"error: --strata: seeds {missing} are in no stratum; list every seed once", file=sys.stderr)
                raise SystemExit(2)
        text = seeds_markdown(entries, lengths, args.t, strata)
        print(text)
        if args.md:
            begin, end = BEGIN, END
            if args.section:
                begin, end = f"<!-- grpo_report:{args.section}:begin -->", f"<!-- grpo_report:{args.section}:end -->"
            write_section(args.md, text, begin, end)
        if args.png:
            plot_curves(entries, ARMS, [1, 8], args.png, args.t)
            print(f"\ncurves: {args.png}")
        return entries
    if args.last:
        by_run = defaultdict(list)
        for r in records:
            by_run[r["run"]].append(r)
        records = []
        for rs in by_run.values():
            records += [rs[0], rs[-1]] if len(rs) > 1 else rs
    print(markdown_table(records, args.columns, args.delta))
    return records


if __name__ == "__main__":
    main()
