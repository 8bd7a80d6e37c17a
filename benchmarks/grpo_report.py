"""Markdown Pass@k table from the eval JSON files that discrete_grpo.py and sofT_grpo.py write.

Each evaluation writes OUTPUT_DIR/<run_name>/eval_step<N>.json with at least "step" and "pass@k" keys;
any other scalar keys (run, model, n, problems, temperature, ...) become columns when asked for.
    python benchmarks/grpo_report.py runs/                      # every eval under runs/, one row each
    python benchmarks/grpo_report.py runs/A runs/B --last       # before/after only: first and last step per run
    python benchmarks/grpo_report.py runs/ --columns run step temperature --delta
"""

import argparse
import glob
import json
import os


def load_evals(paths: list) -> list:
    """Every eval_step*.json under the given folders (searched recursively) or given directly.

    Sorted by run and step."""
    files = []
    for p in paths:
        files += [p] if os.path.isfile(p) else glob.glob(os.path.join(p, "**", "eval_step*.json"), recursive=True)
    records = []
    for f in sorted(set(files)):
        with open(f) as fh:
            r = json.load(fh)
        r.setdefault("run", os.path.basename(os.path.dirname(os.path.abspath(f))))
        records.append(r)
    return sorted(records, key=lambda r: (r["run"], r["step"]))


def pass_keys(records: list) -> list:
    """pass@k keys present in any record, ordered by k."""
    return sorted({k for r in records for k in r if k.startswith("pass@")}, key=lambda k: int(k.split("@")[1]))


def markdown_table(records: list, columns: list, delta: bool = False) -> str:
    """One row per record; Pass@k in percent. With delta, a row per run with last minus first step."""
    keys = pass_keys(records)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns + keys) + " |", "|" + "---|" * (len(columns) + len(keys))]
    for r in records:
        lines.append(
            "| "
            + " | ".join([fmt(r.get(c, "")) for c in columns] + [f"{100 * r[k]:.1f}" if k in r else "" for k in keys])
            + " |"
        )
    if delta:
        runs = {}
        for r in records:
            runs.setdefault(r["run"], []).append(r)
        for run, rs in runs.items():
            if len(rs) > 1:
                first, last = rs[0], rs[-1]
                cells = [f"{run} (step {last['step']} - step {first['step']})" if c == "run" else "" for c in columns]
                diffs = [f"{100 * (last[k] - first[k]):+.1f}" if k in first and k in last else "" for k in keys]
                lines.append("| " + " | ".join(cells + diffs) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders (searched recursively) or eval JSON files")
    parser.add_argument(
        "--columns", nargs="+", default=["run", "step", "n", "problems", "temperature"], help="non-Pass@k columns"
    )
    parser.add_argument("--last", action="store_true", help="keep only the first and last evaluation of each run")
    parser.add_argument("--delta", action="store_true", help="add a last-minus-first row per run (percentage points)")
    args = parser.parse_args()
    records = load_evals(args.paths)
    if not records:
        raise SystemExit(f"error: no eval_step*.json under {' '.join(args.paths)}")
    if args.last:
        by_run = {}
        for r in records:
            by_run.setdefault(r["run"], []).append(r)
        records = [r for rs in by_run.values() for r in ([rs[0], rs[-1]] if len(rs) > 1 else rs)]
    print(markdown_table(records, args.columns, args.delta))
