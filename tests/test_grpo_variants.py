"""The teaching files and their paper-scale variants: the teaching files hold no distributed code, and the soft
method is the same set of lines in both pairs (`sofT_grpo.py` vs `discrete_grpo.py` and `sofT_grpo_fsdp.py` vs
`discrete_grpo_fsdp.py`), so a change to the soft method made in one copy only fails here."""

import ast
import difflib
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_lines(script: str) -> list:
    """The script's lines, whitespace-stripped and blank lines dropped, without the module docstring (each file's
    header names itself and its own commands)."""
    with open(os.path.join(REPO, script)) as f:
        src = f.read()
    doc_end = ast.parse(src).body[0].end_lineno
    return [line.strip() for line in src.split("\n")[doc_end:] if line.strip()]


def changed(parent: str, child: str) -> tuple:
    """The lines the child removes from and adds to the parent (as `diff -w` shows them), as sorted lists."""
    a, b = code_lines(parent), code_lines(child)
    removed, added = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += a[i1:i2]
            added += b[j1:j2]
    return sorted(removed), sorted(added)


def test_the_soft_diff_is_the_same_in_both_pairs():
    removed, added = changed("discrete_grpo.py", "sofT_grpo.py")
    removed_fsdp, added_fsdp = changed("discrete_grpo_fsdp.py", "sofT_grpo_fsdp.py")
    assert len(added) > 100  # the soft method itself
    assert added == added_fsdp, sorted(set(added) ^ set(added_fsdp))
    assert removed == removed_fsdp, sorted(set(removed) ^ set(removed_fsdp))


@pytest.mark.parametrize("script", ["discrete_grpo.py", "sofT_grpo.py"])
def test_teaching_files_have_no_distributed_code(script):
    code = "\n".join(code_lines(script))
    for word in ("torch.distributed", "FSDP", "fully_shard", "world", "rank", "StaticCache", "torch.compile"):
        assert word not in code, word


def test_the_docs_reading_maps_are_generated_from_today_s_code(monkeypatch, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "grpo_reading_map", os.path.join(REPO, "benchmarks", "grpo_reading_map.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--check"]) == 0  # stale: run python benchmarks/grpo_reading_map.py
    # and the check can fail: a map generated from a shifted file differs
    monkeypatch.setattr(tool, "reading_map", lambda script: "| lines |")
    assert tool.main(["--check"]) == 1


# the functions the scale-out changes (the rest of each variant is its teaching file's code, character for character)
SCALED = {"rollout", "generate", "token_logprobs", "grpo_loss", "old_and_ref_logprobs", "ppo_update", "autocast"}
SCALED |= {"main", "validate", "micro_size"}


@pytest.mark.parametrize("teaching", ["discrete_grpo.py", "sofT_grpo.py"])
def test_a_variant_changes_only_the_functions_of_the_scale_out(teaching):
    def functions(script: str) -> dict:
        with open(os.path.join(REPO, script)) as f:
            src = f.read()
        return {n.name: ast.get_source_segment(src, n) for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}

    plain, variant = functions(teaching), functions(teaching.replace(".py", "_fsdp.py"))
    assert set(plain) <= set(variant)  # the variant adds the scale-out helpers and keeps every function
    changed = {name for name in plain if plain[name] != variant[name]}
    assert changed == SCALED
