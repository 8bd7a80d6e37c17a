"""Reading maps of the GRPO scripts, generated from the code: every top-level definition with its line range and
the first line of its docstring (or of the comment above it), in file order, grouped under the file's section
comments. Written between the `<!-- reading-map: SCRIPT -->` and `<!-- /reading-map -->` markers of a docs page.

    python benchmarks/grpo_reading_map.py            # rewrite the maps in docs/discrete_grpo.md and docs/sofT_grpo.md
    python benchmarks/grpo_reading_map.py --check    # exit 1 if a map is stale (tests/test_grpo_variants.py runs it)
"""

import argparse
import ast
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = {
    "docs/discrete_grpo.md": ["discrete_grpo.py", "discrete_grpo_fsdp.py"],
    "docs/sofT_grpo.md": ["sofT_grpo.py", "sofT_grpo_fsdp.py"],
}


# definitions whose docstring or comment does not say what they are in a reading map
KNOWN = {
    "`AggMode`": "verl's loss aggregation modes (`--loss-agg-mode`)",
    "`PresetName`": "the presets of this file (`--preset`)",
    "`EvalName`": "the paper's soft decodings (`--eval-settings`)",
    "`Args`": "every flag; the comment after a field is its `--help` text (tyro)",
    "`_SOFT`": "what the paper's soft decodings share",
    "`EVAL_SETTINGS`": "the paper's soft decodings: SofT-GRPO's, the soft baseline's, noise-free Soft Thinking",
    "`main`": "the training loop: rollout, rewards and group advantages, old/ref log-probs, PPO update, logging, eval",
    "`PRESETS`": "named settings applied before the flags: the toy and the paper's base models",
    "`validate`": "flag combinations that cannot run: one-line errors before any heavy work",
    "`__main__`": "`main(cli())`",
}


def summary(node, name: str, lines: list) -> str:
    """The first line of the node's docstring, else of the comment line right above it, else its own comment."""
    if name in KNOWN:
        return KNOWN[name]
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node):
        return ast.get_docstring(node).split("\n")[0]
    above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
    if above.startswith("#") and not re.match(r"# [A-Z]", above):  # not a section comment (shown as a section)
        return above.lstrip("# ")
    tail = lines[node.lineno - 1].split("  # ", 1)  # an assignment's own comment
    return tail[1].strip() if len(tail) == 2 else ""


def reading_map(script: str) -> str:
    """A markdown table: lines | definition | what it is."""
    with open(os.path.join(REPO, script)) as f:
        src = f.read()
    lines, tree = src.split("\n"), ast.parse(src)
    rows = ["| lines | definition | what it is |", "| --- | --- | --- |"]
    body = tree.body
    rows.append(f"| 1-{body[0].end_lineno} | module docstring | what the file is, how to run it |")
    imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
    rows.append(f"| {imports[0].lineno}-{imports[-1].end_lineno} | imports | |")
    for node in body[1:]:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr)):
            continue
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name = f"`{node.name}`"
        elif isinstance(node, ast.If):
            name = "`__main__`"
        else:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            name = ", ".join(f"`{ast.unparse(t)}`" for t in targets)
        start = node.decorator_list[0].lineno if getattr(node, "decorator_list", None) else node.lineno
        section = lines[start - 2].strip() if start > 1 else ""
        if re.match(r"# [A-Z]", section):  # a section comment opens here
            rows.append(f"| | **{section.lstrip('# ')}** | |")
        what = summary(node, name, lines).replace("|", "\\|")
        rows.append(f"| {start}-{node.end_lineno} | {name} | {what} |")
    return "\n".join(rows)


def render(page: str) -> tuple:
    """The page's text with fresh maps, and its current text."""
    with open(os.path.join(REPO, page)) as f:
        text = f.read()
    new = text
    for script in PAGES[page]:
        pattern = re.compile(rf"(<!-- reading-map: {re.escape(script)} -->\n).*?(<!-- /reading-map -->)", re.S)
        if not pattern.search(new):
            raise SystemExit(f"error: {page} has no reading-map marker for {script}")
        new = pattern.sub(lambda m, s=script: m.group(1) + reading_map(s) + "\n" + m.group(2), new)
    return new, text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a page's map differs from the code")
    args = parser.parse_args(argv)
    stale = []
    for page in PAGES:
        new, old = render(page)
        if new != old:
            stale.append(page)
            if not args.check:
                with open(os.path.join(REPO, page), "w") as f:
                    f.write(new)
    if args.check and stale:
        print(f"stale reading maps in {', '.join(stale)}: run python benchmarks/grpo_reading_map.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
