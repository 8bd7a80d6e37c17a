"""Tests for the benchmarks/ tools: the sweep runner (grids, a real two-job local sweep, restart), the RL report
(AUC, final return, IQM against hand computations on synthetic TensorBoard runs), the GRPO report (mean, bootstrap
CI and curve data on synthetic eval JSONs), the thinking-position statistics on a hand-built logits tensor and the
gradient-diagnosis statistics (Gumbel mask / clamp shares, kept-set changes, identical thinking, loss split)."""

import glob
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import grpo_grad_diagnosis  # noqa: E402
import grpo_report  # noqa: E402
import grpo_thinking_stats  # noqa: E402
import rl_benchmark  # noqa: E402
import rl_diagnose  # noqa: E402
import rl_report  # noqa: E402

# ---------------------------------------------------------------- sweep runner


def test_dry_run_lists_the_default_and_the_grpo_grids(tmp_path, capsys):
    runs = rl_benchmark.main(["--dry-run", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    # issue 11: SAC K1/K4 and PPO K1/K5 on 2 tasks x 3 seeds, and 4 more SAC arms on HalfCheetah x 3 seeds
    assert len(runs) == 2 * 2 * 3 + 2 * 2 * 3 + 4 * 3
    assert "36 runs, 0 done" in printed
    assert "pmoe_ppo__K5__Hopper-v5__s3" in printed
    assert (
        "--num-experts 5 --total-timesteps 300000 --save-model --seed 3 --exp-name pmoe_ppo__K5 --env-id Hopper-v5"
        in printed
    )
    assert sorted({r.labels["method"] for r in runs}) == [
        "pmoe_ppo:K1",
        "pmoe_ppo:K5",
        "pmoe_sac:K1",
        "pmoe_sac:K4",
        "pmoe_sac:gating",
        "pmoe_sac:gumbel",
        "pmoe_sac:mcp",
        "pmoe_sac:reinforce",
    ]
    keys = [r.key for r in runs]
    assert len(set(keys)) == len(keys)  # every run its own folder

    runs = rl_benchmark.main(["--dry-run", "--grid", "grpo-toy", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert len(runs) == 15  # 5 seeds x 2 trainings, then 5 evaluations of the discrete checkpoints
    assert sorted(r.labels["seed"] for r in runs if r.script == "discrete_grpo.py") == [1, 2, 3, 4, 5]
    evals = [r for r in runs if r.stage == 1]
    assert len(evals) == 5
    assert "{ckpt:discrete_grpo__grpo__toy__s4}" in evals[3].argv
    assert "--eval-every 10 --eval-settings sofT-grpo soft-baseline --seed 2 --exp-name sofT_grpo__softgrpo" in printed

    # the ablation's default arm is the main table's run: same folder, same command
    noise = rl_benchmark.main(["--dry-run", "--grid", "grpo-noise", "--out", str(tmp_path)])
    capsys.readouterr()
    main_table = {r.key: r.argv for r in runs}
    assert len(noise) == 9
    for r in noise:
        if r.labels["method"] == "sofT_grpo:softgrpo":
            assert main_table[r.key] == r.argv


def test_pmoe_evidence_grid_runs_the_issue_22_arms_in_priority_order(tmp_path, capsys):
    runs = rl_benchmark.main(["--dry-run", "--grid", "pmoe-evidence", "--out", str(tmp_path)])
    assert "75 runs, 0 done" in capsys.readouterr().out
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.stage, set()).add((r.labels["method"], r.labels["task"]))
    both = {"HalfCheetah-v5", "Hopper-v5"}
    assert by_stage[0] == {(m, t) for m in ("pmoe_ppo:K1", "pmoe_ppo:K5") for t in both}  # the fastest runs first
    assert by_stage[1] == {(m, t) for m in ("pmoe_sac:K1", "pmoe_sac:K4") for t in both}
    assert by_stage[2] == {("pmoe_sac:K4-M8", "HalfCheetah-v5")}
    assert by_stage[3] == {("pmoe_sac:K1-200k", "Hopper-v5"), ("pmoe_sac:K4-200k", "Hopper-v5")}
    assert {m for m, _ in by_stage[4]} == {f"pmoe_sac:{m}" for m in ("gumbel", "reinforce", "gating", "mcp")}
    assert len(runs) == 5 * (4 + 4 + 1 + 2 + 4) and len({r.key for r in runs}) == len(runs)
    stage1 = [r for r in runs if r.stage == 1]  # in seed order, so a stage cut short has K1 and K4 at its first seeds
    assert [r.labels["seed"] for r in stage1] == [s for s in range(1, 6) for _ in range(4)]
    assert [r.stage for r in runs] == sorted(r.stage for r in runs)
    for r in runs:  # every run has an evaluation curve; only the label-noise arm changes the label
        command = " ".join(r.argv)
        assert "--eval-every" in command and ("--label-samples 8" in command) == (
            r.labels["method"] == "pmoe_sac:K4-M8"
        )
        assert ("--save-model" in command) == (r.stage in (0, 1, 2))  # rl_diagnose --labels reads SAC's models
    capsys.readouterr()
    picked = rl_benchmark.main(
        ["--dry-run", "--grid", "pmoe-evidence", "--out", str(tmp_path), "--match", "200k.*s[12]$"]
    )
    assert "4 runs, 0 done" in capsys.readouterr().out  # --match: K1 and K4 at 200k, seeds 1 and 2, not 12 or 20
    assert sorted(r.key for r in picked) == sorted(r.key for r in runs if "200k" in r.key and r.labels["seed"] < 3)


def write_script(folder, body):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "fake.py"), "w") as f:
        f.write(body)


def test_run_one_marks_only_finished_runs_and_reruns_killed_ones(tmp_path):
    repo, out = str(tmp_path / "repo"), str(tmp_path / "out")
    write_script(repo, "import os, sys\nopen('ran.txt', 'a').write(os.environ['OMP_NUM_THREADS'])\nsys.exit(1)\n")
    run = rl_benchmark.grid("fake.py", {"a": "--x 1"}, None, [7])[0]
    result = rl_benchmark.run_one(run, out, repo, threads=1, timeout_s=60)
    assert result["rc"] == 1 and not rl_benchmark.is_done(run, out)  # a failed run leaves no marker

    with open(os.path.join(out, run.key, "stale.txt"), "w") as f:  # what a killed run left behind
        f.write("half")
    write_script(repo, "import os\nopen('ran.txt', 'a').write(os.environ['OMP_NUM_THREADS'])\n")
    result = rl_benchmark.run_one(run, out, repo, threads=1, timeout_s=60)
    assert result["rc"] == 0 and rl_benchmark.is_done(run, out)
    assert sorted(os.listdir(os.path.join(out, run.key))) == ["DONE.json", "log.txt", "ran.txt", "run.json"]
    with open(os.path.join(out, run.key, "ran.txt")) as f:
        assert f.read() == "1"  # started from scratch, with one thread
    with open(os.path.join(out, run.key, "DONE.json")) as f:
        done = json.load(f)
    assert done["command"][-4:] == ["--seed", "7", "--exp-name", "fake__a"] and done["wall_s"] > 0

    result = rl_benchmark.run_one(run, out, repo, threads=1, timeout_s=60)
    assert result["skipped"]  # complete: not run again
    with open(os.path.join(out, run.key, "ran.txt")) as f:
        assert f.read() == "1"


def test_checkpoint_placeholder_resolves_to_the_one_final_model(tmp_path):
    os.makedirs(tmp_path / "train" / "runs" / "toy__x__1__123" / "final")
    argv = ["--eval-only", "--model-name-or-path", "{ckpt:train}"]
    found = rl_benchmark.resolve(argv, str(tmp_path))
    assert found == [
        "--eval-only",
        "--model-name-or-path",
        str(tmp_path / "train" / "runs" / "toy__x__1__123" / "final"),
    ]
    with pytest.raises(FileNotFoundError):
        rl_benchmark.resolve(["{ckpt:missing}"], str(tmp_path))


def test_local_sweep_of_two_tiny_jobs_completes_and_is_skipped_on_the_second_call(tmp_path):
    out = str(tmp_path / "sweep")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "rl_benchmark.py"),
        "--scripts",
        "pmoe_ppo.py",
        "--variants",
        "K1=--num-experts 1",
        "K2=--num-experts 2",
        "--env-ids",
        "Pendulum-v1",
        "--extra-flags=--total-timesteps 256 --num-steps 128 --num-minibatches 2 --update-epochs 1",
        "--workers",
        "2",
        "--out",
        out,
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "stage 0: 2 to run, 0 already done" in first.stdout
    markers = {}
    for key in ("pmoe_ppo__K1__Pendulum-v1__s1", "pmoe_ppo__K2__Pendulum-v1__s1"):
        folder = os.path.join(out, key)
        markers[key] = os.path.getmtime(os.path.join(folder, "DONE.json"))
        (run_dir,) = os.listdir(os.path.join(folder, "runs"))  # the script's own TensorBoard run
        assert run_dir.startswith(f"Pendulum-v1__{key.split('__')[0]}__{key.split('__')[1]}__1__")
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(folder, "runs", run_dir)))

    listed = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True, timeout=60)
    assert listed.stdout.count("[done in ") == 2 and "2 runs, 2 done" in listed.stdout

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "stage 0: 0 to run, 2 already done" in second.stdout
    for key, mtime in markers.items():
        assert os.path.getmtime(os.path.join(out, key, "DONE.json")) == mtime


# ---------------------------------------------------------------- RL report

RETURNS = {  # (task, method, seed) -> training episode returns; eval returns below; seed 3 has not finished
    ("Hopper-v5", "sac:K1", 3): [1000.0],
    ("Hopper-v5", "sac:K1", 1): [10.0, 20.0, 30.0, 40.0],
    ("Hopper-v5", "sac:K1", 2): [0.0, 10.0, 50.0],
    ("Hopper-v5", "sac:K4", 1): [5.0, 5.0, 5.0, 25.0, 35.0],
    ("Hopper-v5", "sac:K4", 2): [100.0, 0.0],
    ("Ant-v5", "sac:K1", 1): [-4.0, 4.0, 8.0],
    ("Ant-v5", "sac:K1", 2): [1.0, 3.0],
    ("Ant-v5", "sac:K4", 1): [2.0, 2.0, 2.0, 6.0],
    ("Ant-v5", "sac:K4", 2): [0.0, 12.0],
}


def write_synthetic_runs(root):
    """rl_benchmark.py's layout: OUT/<key>/run.json and OUT/<key>/runs/<run_name>/events.out.tfevents.*"""
    for (task, method, seed), returns in RETURNS.items():
        key = f"{method.replace(':', '__')}__{task}__s{seed}"
        os.makedirs(os.path.join(root, key))
        with open(os.path.join(root, key, "run.json"), "w") as f:
            json.dump({"labels": {"task": task, "method": method, "seed": seed}}, f)
        if seed < 3:  # seed 3 below is still running: no DONE.json, left out of the report
            with open(os.path.join(root, key, "DONE.json"), "w") as f:
                json.dump({"wall_s": 100.0 * seed + len(returns)}, f)
        writer = SummaryWriter(os.path.join(root, key, "runs", f"{task}__{method}__{seed}__1"))
        for i, r in enumerate(returns):
            writer.add_scalar("charts/episodic_return", r, 100 * (i + 1))
        if method == "sac:K4":  # the new tags; K1 logs only the old one (the fallback column)
            writer.add_scalar("eval/episodic_return_argmax", 2.0 * seed, 0)
            writer.add_scalar("eval/episodic_return_argmax", 4.0 * seed, 1)
            writer.add_scalar("eval/episodic_return_sample", -1.0, 0)
            writer.add_scalar("eval/episodic_return_sample", -3.0, 1)
        else:
            writer.add_scalar("eval/episodic_return", 7.0, 0)
        writer.close()


def test_rl_report_step_auc_final_eval_tests_and_tables(tmp_path):
    write_synthetic_runs(str(tmp_path / "sweep"))
    md = tmp_path / "results.md"
    md.write_text("# Results\n\nprose\n\n<!-- rl_report:begin -->\nold\n<!-- rl_report:end -->\n\nmore prose\n")
    png = tmp_path / "img" / "curves.png"
    rows = rl_report.main([str(tmp_path / "sweep"), "--last-n", "2", "--png", str(png), "--md", str(md)])
    assert len(rows) == 8 and png.stat().st_size > 1000
    assert (tmp_path / "img" / "curves_eval.png").stat().st_size > 1000  # the K4 runs' eval curves
    labels = rl_report_labels(rows, tmp_path)
    by_key = {(labels[n]["task"], labels[n]["method"], labels[n]["seed"]): row for n, row in rows.items()}
    hopper_k4_1 = by_key[("Hopper-v5", "sac:K4", 1)]
    # episodes end at steps 100..500: the curve is 5 until step 300, then 5 -> 25 -> 35; area / 500 by hand
    assert hopper_k4_1["auc_train"] == pytest.approx((5 * 300 + (5 + 25) / 2 * 100 + (25 + 35) / 2 * 100) / 500)
    assert hopper_k4_1["episode_mean"] == pytest.approx((5 + 5 + 5 + 25 + 35) / 5)  # every episode, not an area
    assert hopper_k4_1["final"] == pytest.approx((25 + 35) / 2)  # the last 2
    assert hopper_k4_1["eval_argmax"] == 4.0 and hopper_k4_1["auc_eval_argmax"] == pytest.approx(3.0)  # 2 -> 4
    assert hopper_k4_1["eval_sample"] == -3.0 and hopper_k4_1["auc_eval_sample"] == pytest.approx(-2.0)
    assert np.isnan(by_key[("Hopper-v5", "sac:K1", 1)]["auc_eval_argmax"])  # no eval curve: no area
    assert np.isnan(hopper_k4_1["eval_default"]) and hopper_k4_1["wall"] == 105.0  # from the run's DONE.json
    assert by_key[("Ant-v5", "sac:K1", 2)]["eval_default"] == 7.0
    assert np.isnan(by_key[("Ant-v5", "sac:K1", 2)]["eval_argmax"])

    text = md.read_text()
    table = rl_report.collect(rows, labels, "auc_train")
    for task in ("Hopper-v5", "Ant-v5"):
        x, y = table[task]["sac:K4"], table[task]["sac:K1"]
        difference, p = np.mean(x) - np.mean(y), rl_report.permutation_p(x, y)
        line = f"| {task} | train AUC | sac:K4 | sac:K1 | 2 vs 2 | {difference:+.0f} | {p:.3f} | cannot be told apart |"
        assert line + " 1.000 |" in text  # Holm over the table's tests: p = 1/3 is 1 in a family of 3 or more
    iqms = rl_report.iqm_with_ci(table)
    for (task, method), (iqm, lo, hi, n) in iqms.items():  # 2 runs: rliable's IQM trims nothing, the mean
        assert iqm == pytest.approx(np.mean(table[task][method])) and n == 2 and lo <= iqm <= hi
    improvement = rl_report.improvement_with_ci(table)
    assert set(improvement) == {("Hopper-v5", "sac:K4", "sac:K1"), ("Ant-v5", "sac:K4", "sac:K1")}
    for (task, method, baseline), (p, lo, hi) in improvement.items():  # the share of (K4, K1) pairs K4 wins
        pairs = [(a, b) for a in table[task][method] for b in table[task][baseline]]
        assert p == pytest.approx(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]))
        assert lo <= p <= hi
    assert text.startswith("# Results\n\nprose\n\n<!-- rl_report:begin -->") and text.endswith("more prose\n")
    assert "\nold\n" not in text


def test_holm_adjustment_by_hand():
    # sorted: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08, raised to the running 0.09; 0.5 x 1 = 0.5
    assert rl_report.holm([0.04, 0.01, 0.5, 0.03]) == pytest.approx([0.09, 0.04, 0.5, 0.09])
    assert rl_report.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])  # 0.3 x 2 = 0.6; 0.6 x 1, kept at 0.6
    assert rl_report.holm([0.4, 0.7]) == pytest.approx([0.8, 0.8])  # 0.4 x 2; 0.7 raised to 0.8; capped at 1 below
    assert rl_report.holm([0.6, 0.9]) == [1.0, 1.0]


def rl_report_labels(rows, tmp_path):
    return {name: rl_report.labels_of(str(tmp_path / "sweep" / name)) for name in rows}


def test_step_grid_auc_weighs_by_steps_not_episodes():
    """Unequal episode lengths: a 100-step episode (return 100) then two long ones (10 each). By hand, the training
    curve is 100 to step 100, falls to 10 at step 200 and stays: (100*100 + 55*100 + 10*800) / 1000 = 23.5, where the
    per-episode mean says 40. The eval curve 0 -> 100 -> 50 at steps 0, 500, 1000: (25000 + 37500) / 1000 = 62.5.
    Planted: auc_train = the per-episode mean (the old "AUC"): red."""
    scalars = {
        rl_report.RETURN: (np.array([100, 200, 1000]), np.array([100.0, 10.0, 10.0])),
        "eval/episodic_return_sample": (np.array([0, 500, 1000]), np.array([0.0, 100.0, 50.0])),
        "eval/episodic_return_argmax": (np.array([0, 500, 1000]), np.array([0.0, 100.0, 50.0])),
    }
    row = rl_report.summarise(scalars, last_n=2)
    assert row["steps"] == 1000 and row["evals"] == 3
    assert row["auc_train"] == pytest.approx(23.5) and row["episode_mean"] == pytest.approx(40.0)
    assert row["auc_eval_sample"] == pytest.approx(62.5) and row["eval_sample"] == 50.0  # the last evaluation
    assert rl_report.step_grid_auc(np.array([0, 10]), np.array([0.0, 10.0]), 0, 10) == pytest.approx(5.0)


def test_permutation_p_equals_a_hand_enumeration():
    # 3 vs 3: C(6, 3) = 20 splits. [1,2,3] vs [4,5,6]: only the split itself and its mirror are as extreme
    assert rl_report.permutation_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(2 / 20)
    # [1,2,4] vs [3,5,6]: |2 s - 21| / 3 >= 7 / 3 for a group sum s <= 7 ({1,2,3}, {1,2,4}) or s >= 14 (their
    # complements): 4 of 20
    assert rl_report.permutation_p([1.0, 2.0, 4.0], [3.0, 5.0, 6.0]) == pytest.approx(4 / 20)
    assert rl_report.permutation_p([1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]) == pytest.approx(2 / 252)
    assert rl_report.permutation_p([1.0, 2.0], [1.0, 2.0]) == 1.0
    assert rl_report.permutation_p([0.1, 0.2, 0.3], [0.4, 0.5, 0.6]) == pytest.approx(2 / 20)  # float sums tie


def test_stratified_permutation_p_permutes_only_inside_each_stratum(tmp_path):
    """Seeds 1-3 and 4-5 trained from two builds of the base model: C(6, 3) x C(4, 2) = 120 splits, not C(10, 5).
    Planted: the pooled test (strata ignored): red in each case."""
    x, y = {1: 10.0, 2: 11.0, 3: 12.0, 4: 20.0, 5: 21.0}, {1: 0.0, 2: 1.0, 3: 2.0, 4: 3.0, 5: 4.0}
    # x above y in every seed: only the observed split and its mirror are as extreme (pooled: 2 / 252)
    assert grpo_report.stratified_permutation_p(x, y, [[1, 2, 3], [4, 5]]) == pytest.approx(2 / 120)
    # strata {1, 2} and {3}: x = 1, 2 | 10, y = 3, 4 | 0, observed |13 - 7| / 3 = 2, i.e. x sum <= 7 or >= 13; the
    # x sums of the 6 x 2 splits are {3, 4, 5, 5, 6, 7} + {0 or 10}: all 12 qualify (pooled: 16 of 20)
    assert grpo_report.stratified_permutation_p({1: 1.0, 2: 2.0, 3: 10.0}, {1: 3.0, 2: 4.0, 3: 0.0}, [[1, 2], [3]]) == 1

    # through the CLI, on the synthetic sweep: SofT-GRPO 0.65, 0.75 | 0.50 against GRPO 0.70, 0.80 | 0.60, Pass@1.
    # The x sums of the C(4, 2) x C(2, 1) = 12 splits are {1.35, 1.40, 1.45, 1.45, 1.50, 1.55} + {0.50 or 0.60};
    # |2 sum - 4.0| >= 0.2 in 4 of them (pooled: 12 of 20)
    write_synthetic_sweep(str(tmp_path / "sweep"))
    md = tmp_path / "results.md"
    grpo_report.main([str(tmp_path / "sweep"), "--seeds", "--t", "--strata", "1,2", "3", "--md", str(md)])
    text = md.read_text()
    assert "| SofT-GRPO, soft minus GRPO, discrete | 3 vs 3 | -6.7, p 0.333: cannot be told apart |" in text
    assert "inside each stratum of seeds (1,2 | 3)" in text
    with pytest.raises(SystemExit):  # seed 3 in no stratum
        grpo_report.main([str(tmp_path / "sweep"), "--seeds", "--t", "--strata", "1,2"])


def test_bootstrap_ci_equals_a_loop_over_the_same_draws():
    values = [71.0, 83.3, 80.6, 60.4, 75.0]
    lo, hi = rl_report.bootstrap_ci(values, reps=10000, seed=0)
    assert (lo, hi) == pytest.approx(hand_ci(values))
    assert min(values) < lo < np.mean(values) < hi < max(values)
    assert rl_report.bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)


def test_t_interval_and_baselines():
    values = [71.0, 83.3, 80.6, 60.4, 75.0]
    half = 2.7764451051977987 * np.std(values, ddof=1) / np.sqrt(5)  # t_0.975 with 4 degrees of freedom
    assert rl_report.t_interval(values) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert rl_report.t_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert rl_report.baselines_of("pmoe_sac:K4-M8") == ["pmoe_sac:K1", "pmoe_sac:K4"]
    assert rl_report.baselines_of("pmoe_sac:K4-200k") == ["pmoe_sac:K1-200k"]
    assert rl_report.baselines_of("pmoe_sac:K1-200k") == [] == rl_report.baselines_of("pmoe_ppo:K1")
    assert rl_report.baselines_of("pmoe_ppo:K5") == ["pmoe_ppo:K1"]


def test_rliable_intervals_are_identical_on_two_calls():
    """rliable 1.x draws from numpy's global generator: the report seeds it before each call. Planted: the seed
    removed (numpy's generator moved on between the calls): red."""
    rng = np.random.default_rng(0)
    table = {"Hopper-v5": {"sac:K1": list(rng.normal(0, 1, 5)), "sac:K4": list(rng.normal(0.5, 1, 5))}}
    first, second = rl_report.iqm_with_ci(table, reps=500), rl_report.iqm_with_ci(table, reps=500)
    assert first == second
    assert rl_report.improvement_with_ci(table, reps=500) == rl_report.improvement_with_ci(table, reps=500)


def test_trailing_mean_and_curve_band_by_hand():

    assert rl_report.trailing_mean([1.0, 3.0, 5.0, 7.0], 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    curves = [(np.array([0.0, 10.0]), np.array([0.0, 10.0])), (np.array([0.0, 10.0]), np.array([2.0, 2.0]))]
    mean, band = rl_report.mean_curve_with_ci(curves, np.array([0.0, 5.0, 10.0]))
    assert mean.tolist() == [1.0, 3.5, 6.0]  # runs interpolated at the grid, then averaged
    half = 12.7062047 * np.std([5.0, 2.0], ddof=1) / np.sqrt(2)  # t_{0.975, 1} = 12.706: a 2-run band is wide
    assert band[:, 1] == pytest.approx([3.5 - half, 3.5 + half])
    mean, band = rl_report.mean_curve_with_ci(curves[:1], np.array([0.0, 5.0, 10.0]))
    assert band.tolist() == [[0.0, 5.0, 10.0], [0.0, 5.0, 10.0]]  # one run: its curve, no band


class TwoExpertActor(torch.nn.Module):
    """K=2 experts on 1-D actions, the same in every state: expert 0 ~ N(0, 1), expert 1 ~ N(mu, 1) before tanh."""

    def __init__(self, states, mu, router=(0.3, 0.7)):
        super().__init__()
        self.S, self.mu, self.router = len(states), mu, torch.tensor(router).log()

    def forward(self, states):
        means = torch.tensor([[0.0], [self.mu]]).expand(len(states), 2, 1)
        return self.router.expand(len(states), 2), means, torch.zeros_like(means)

    def squash(self, x):  # identity: min_q below then ranks the Gaussian samples themselves
        return x


def test_label_distribution_and_its_comparison_with_the_router():
    """Q increasing in the action: k* = 1 when expert 1's sample is the larger, P(k* = 1) = Phi(mu / sqrt 2); with
    mu = 1: 0.760. Planted: argmin in label_distribution: P(k* = 1) = 0.240, red."""
    states = torch.zeros(50, 3)
    actor = TwoExpertActor(states, mu=1.0)

    def min_q(s, actions):  # [S, K, A] -> [S, K]
        return actions.sum(-1)

    torch.manual_seed(0)
    p, w = rl_diagnose.label_distribution(actor, min_q, states, draws=400)
    expected = 0.5 * (1 + math.erf(1.0 / 2))  # Phi(1 / sqrt(2)) = (1 + erf(1 / 2)) / 2
    assert p.shape == w.shape == (50, 2) and np.allclose(p.sum(1), 1.0)
    assert abs(p[:, 1].mean() - expected) < 0.01  # 20000 draws in all: standard error 0.003
    np.testing.assert_allclose(w, np.tile([0.3, 0.7], (50, 1)), rtol=1e-6)
    torch.manual_seed(0)  # 8 samples per expert averaged: a sharper label, P(k* = 1) = Phi(mu / sqrt(2 / 8)) = 0.977
    p8, _ = rl_diagnose.label_distribution(actor, min_q, states, draws=100, label_samples=8)
    assert abs(p8[:, 1].mean() - 0.5 * (1 + math.erf(2.0 / math.sqrt(2)))) < 0.01
    # the comparison by hand on two states: P = [[0.5, 0.5], [1, 0]], w = [[0.25, 0.75], [0.5, 0.5]]
    stats = rl_diagnose.compare_labels(np.array([[0.5, 0.5], [1.0, 0.0]]), np.array([[0.25, 0.75], [0.5, 0.5]]))
    kl = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75) + math.log(1 / 0.5)) / 2
    h_w = (-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + math.log(2)) / 2 / math.log(2)
    assert stats["agree"] == 0.5  # state 0: argmax P = 0 (the first of a tie), argmax w = 1; state 1: both 0
    assert stats["KL(P || w)"] == pytest.approx(kl) and stats["H(w) / ln K"] == pytest.approx(h_w)
    assert stats["H(P) / ln K"] == pytest.approx(0.5) and stats["max P"] == pytest.approx(0.75)


def test_rl_diagnose_tests_each_variant_against_its_parent_by_hand():
    """K4-M8 against K4 on one column: seeds {3, 5} against {1, 2}, difference +2.5; of the 6 splits of {3, 5, 1, 2}
    into pairs, 2 differ by 2.5 or more: p = 1/3. K1's column is missing (no router): "-". Planted: the p-value of
    the other arm's values against themselves (p = 1), red."""
    nan = float("nan")
    groups = {
        ("T", "pmoe_sac:K4"): [{"agree": 1.0}, {"agree": 2.0}],
        ("T", "pmoe_sac:K4-M8"): [{"agree": 3.0}, {"agree": 5.0}],
        ("T", "pmoe_sac:K1"): [{"agree": nan}, {"agree": nan}],
    }
    lines = rl_diagnose.differences(groups, ["agree"]).splitlines()
    assert "| T | pmoe_sac:K4-M8 - K4 | 2 vs 2 | +2.5, p 0.333 |" in lines
    assert "| T | pmoe_sac:K4-M8 - K1 | 2 vs 2 | - |" in lines and "| T | pmoe_sac:K4 - K1 | 2 vs 2 | - |" in lines
    assert rl_diagnose.differences({("T", "pmoe_sac:K4"): [{"agree": 1.0}]}, ["agree"]) == ""  # nothing to test


def test_rl_diagnose_labels_from_a_saved_pmoe_sac_model(tmp_path, monkeypatch):
    """--labels end to end on a tiny saved run: one row per K>1 model, every statistic in range."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import pmoe_sac

    key = tmp_path / "sweep" / "pmoe_sac__K3__Hopper-v5__s1"
    os.makedirs(key)
    (key / "run.json").write_text(json.dumps({"labels": {"task": "Hopper-v5", "method": "pmoe_sac:K3", "seed": 1}}))
    (key / "DONE.json").write_text("{}")
    monkeypatch.chdir(key)
    settings = dict(env_id="Hopper-v5", total_timesteps=300, learning_starts=150, batch_size=32, buffer_size=1000)
    pmoe_sac.main(pmoe_sac.Args(**settings, num_experts=3, eval_episodes=1, save_model=True, label_samples=2))
    rows = rl_diagnose.main([str(tmp_path / "sweep"), "--labels", "--draws", "16"])
    (row,) = rows["labels"].values()
    assert 0 <= row["agree"] <= 1 and row["KL(P || w)"] >= 0 and 1 / 3 <= row["max P"] <= 1
    assert 0 <= row["H(P) / ln K"] <= 1 and 0 <= row["H(w) / ln K"] <= 1
    (cache,) = glob.glob(
        str(key / "**" / "*.cleanrl_model.labels-16.json"), recursive=True
    )  # measured once, read back on the next call
    assert json.loads(open(cache).read()) == row
    open(cache, "w").write(json.dumps(dict(row, agree=0.123)))
    assert (
        list(rl_diagnose.main([str(tmp_path / "sweep"), "--labels", "--draws", "16"])["labels"].values())[0]["agree"]
        == 0.123
    )
    (model,) = glob.glob(str(key / "**" / "*.cleanrl_model"), recursive=True)
    os.remove(model)  # a clone: the statistics are committed, the model (gitignored) is not
    assert list(rl_diagnose.main([str(tmp_path / "sweep"), "--labels", "--draws", "16"])["labels"].values()) == [
        dict(row, agree=0.123)
    ]


def test_rl_diagnose_router_alpha_and_q_statistics_equal_hand_computations(tmp_path):

    root = tmp_path / "sweep"
    for method, k, seed in (("pmoe_sac:K4", 4, 1), ("pmoe_sac:K4", 4, 2), ("pmoe_sac:K1", 1, 1)):
        key = root / f"{method.replace(':', '__')}__Hopper-v5__s{seed}"
        os.makedirs(key)
        (key / "run.json").write_text(json.dumps({"labels": {"task": "Hopper-v5", "method": method, "seed": seed}}))
        (key / "DONE.json").write_text("{}")
        writer = SummaryWriter(str(key / "runs" / f"Hopper-v5__{method}__{seed}__1"))
        for step in range(0, 1000, 100):  # steps 0..900: the last 20% (step >= 720) is steps 800 and 900
            writer.add_scalar("losses/alpha", step / 1000, step)
            writer.add_scalar("losses/qf1_values", 10.0 * seed, step)
            writer.add_scalar("charts/episodic_return", 100.0 if step < 800 else 50.0, step)
            writer.add_scalar("charts/route_entropy", math.log(k) / 2 if step >= 800 else 0.0, step)
            usage = {800: [0.7, 0.1, 0.1, 0.1], 900: [0.2, 0.6, 0.1, 0.1]}.get(step, [0.25] * 4)
            for j in range(k):  # K=4: expert 0 acts most at step 800, expert 1 at step 900
                writer.add_scalar(f"charts/expert_usage_{j}", usage[j] if k > 1 else 1.0, step)
                writer.add_scalar(f"charts/best_expert_frac_{j}", 1.0 / k, step)
        writer.add_scalar("eval/episodic_return_argmax", 30.0 * seed, 999)
        writer.add_scalar("eval/episodic_return_sample", 10.0, 999)
        writer.close()
    md = tmp_path / "results.md"
    md.write_text("intro\n")
    rows = rl_diagnose.main([str(root), "--md", str(md)])
    by_seed = {(name.split("__")[1], int(name.split("__s")[1][0])): row for name, row in rows.items()}
    k4 = by_seed[("K4", 2)]
    assert k4["route H / ln K"] == pytest.approx(0.5)  # only the window's steps count
    assert k4["max usage"] == pytest.approx((0.7 + 0.6) / 2)  # the max over experts per step, then the mean
    assert k4["max k* share"] == pytest.approx(0.25)
    assert k4["alpha"] == pytest.approx((0.8 + 0.9) / 2)
    assert k4["Q"] == 20.0 and k4["Q / return"] == pytest.approx(20.0 / 50.0)
    assert k4["argmax - sample"] == 50.0
    k1 = by_seed[("K1", 1)]
    assert np.isnan(k1["route H / ln K"]) and np.isnan(k1["argmax - sample"])  # no router with one expert
    assert "| Hopper-v5 | pmoe_sac:K4 | 2 | 0.5 [0.5, 0.5] | 0.65 [0.65, 0.65] |" in md.read_text()
    with pytest.raises(SystemExit):
        rl_diagnose.main([str(root), "--window", "0"])


# ---------------------------------------------------------------- GRPO report

PASS1 = {  # (method, seed) -> Pass@1 at steps 0, 10, 20 (discrete decoding / SofT-GRPO's own decoding)
    ("discrete_grpo:grpo", 1): [0.40, 0.50, 0.70],
    ("discrete_grpo:grpo", 2): [0.40, 0.60, 0.80],
    ("discrete_grpo:grpo", 3): [0.40, 0.55, 0.60],
    ("sofT_grpo:softgrpo", 1): [0.30, 0.45, 0.65],
    ("sofT_grpo:softgrpo", 2): [0.35, 0.50, 0.75],
    ("sofT_grpo:softgrpo", 3): [0.25, 0.40, 0.50],
    ("discrete_grpo:grpo", 4): [0.40, 0.99],
}


def write_eval(folder, run, step, model, values):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"eval_step{step}.json"), "w") as f:
        json.dump({"run": run, "step": step, "model": model, "n": 8, **values}, f)


def write_synthetic_sweep(root):
    """rl_benchmark.py's grpo-toy layout, with eval JSONs in the scripts' format."""
    for (method, seed), pass1 in PASS1.items():
        script, variant = method.split(":")
        key = f"{script}__{variant}__toy__s{seed}"
        os.makedirs(os.path.join(root, key))
        with open(os.path.join(root, key, "run.json"), "w") as f:
            json.dump({"labels": {"script": script + ".py", "method": method, "task": "toy", "seed": seed}}, f)
        if seed < 4:  # seed 4 is still running: its last eval so far (step 10) must not count as a final model
            open(os.path.join(root, key, "DONE.json"), "w").close()
        run = f"toy-base__{script}__{variant}__{seed}__1"
        folder = os.path.join(root, key, "runs", run)
        for step, p in zip((0, 10, 20), pass1):
            if script == "discrete_grpo":
                values = {"pass@1": p, "pass@8": min(1.0, p + 0.3)}
            else:
                values = {
                    "sofT-grpo/pass@1": p,
                    "sofT-grpo/pass@8": min(1.0, p + 0.35),
                    "soft-baseline/pass@1": p - 0.1,
                }
            write_eval(folder, run, step, "/cache/toy-base" if step == 0 else "ignored", values)
        os.makedirs(os.path.join(folder, "final"))
        if script == "discrete_grpo" and seed < 3:  # training logs of two runs: 6 steps of length t, reward t / 10
            writer = SummaryWriter(folder)
            for t in range(1, 7):
                writer.add_scalar("completions/mean_length", float(t), t)
                writer.add_scalar("reward", t / 10, t)
            writer.close()
    # the discrete checkpoint of seed 2 decoded soft by an eval-only run (the paper's "GRPO, soft" row)
    key = "sofT_grpo__eval-of-grpo__toy__s2"
    os.makedirs(os.path.join(root, key))
    with open(os.path.join(root, key, "run.json"), "w") as f:
        json.dump({"labels": {"method": "sofT_grpo:eval-of-grpo", "task": "toy", "seed": 2}}, f)
    open(os.path.join(root, key, "DONE.json"), "w").close()
    ckpt = os.path.join(root, "discrete_grpo__grpo__toy__s2", "runs", "toy-base__discrete_grpo__grpo__2__1", "final")
    write_eval(
        os.path.join(root, key, "runs", "final__x__2__5"), "final__x__2__5", 0, ckpt, {"soft-baseline/pass@1": 0.77}
    )


def test_grpo_report_classifies_eval_only_runs_of_a_moved_sweep(tmp_path):
    """An eval-only run records its checkpoint's absolute path; after the sweep is moved (or cloned elsewhere) that
    path is gone, and the checkpoint's key must be found in the sweep being read, or the run would count as the base
    model. Planted: looking only at the recorded path: red."""
    write_synthetic_sweep(str(tmp_path / "sweep"))
    before = grpo_report.final_table(grpo_report.main([str(tmp_path / "sweep"), "--seeds"]))
    shutil.move(str(tmp_path / "sweep"), str(tmp_path / "moved"))
    table = grpo_report.final_table(grpo_report.main([str(tmp_path / "moved"), "--seeds"]))
    assert table[("discrete_grpo:grpo", "soft-baseline")] == {2: {1: 0.77}}
    assert table == before


def hand_ci(values, reps=10000, seed=0):
    """95% percentile bootstrap CI of the mean, one resample at a time (the same draws as the reports')."""
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(reps):
        means.append(np.mean([values[i] for i in rng.integers(0, len(values), size=len(values))]))
    return np.percentile(means, 2.5), np.percentile(means, 97.5)


def test_grpo_report_seed_means_cis_and_curves_equal_hand_computations(tmp_path):
    write_synthetic_sweep(str(tmp_path / "sweep"))
    md, png = tmp_path / "results.md", tmp_path / "img" / "curves.png"
    entries = grpo_report.main([str(tmp_path / "sweep"), "--seeds", "--md", str(md), "--png", str(png)])
    assert png.stat().st_size > 1000
    table = grpo_report.final_table(entries)
    discrete_last = {s: PASS1[("discrete_grpo:grpo", s)][-1] for s in (1, 2, 3)}
    assert {s: v[1] for s, v in table[("discrete_grpo:grpo", "discrete")].items()} == discrete_last
    assert table[("base", "discrete")] == {s: {1: 0.40, 8: pytest.approx(0.70)} for s in (1, 2, 3)}
    assert table[("discrete_grpo:grpo", "soft-baseline")] == {2: {1: 0.77}}  # classified by its checkpoint's run
    assert set(table) == {
        ("base", "discrete"),
        ("base", "sofT-grpo"),
        ("base", "soft-baseline"),
        ("discrete_grpo:grpo", "discrete"),
        ("discrete_grpo:grpo", "soft-baseline"),
        ("sofT_grpo:softgrpo", "sofT-grpo"),
        ("sofT_grpo:softgrpo", "soft-baseline"),
    }

    # the table cell of SofT-GRPO's Pass@1, by hand: the mean of 0.65, 0.75, 0.50 and its bootstrap CI
    final = [0.65, 0.75, 0.50]
    lo, hi = hand_ci(final)
    cell = f"{100 * np.mean(final):.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    text = md.read_text()
    assert f"| SofT-GRPO, soft | 3 | {cell} |" in text
    assert "| GRPO, soft | 1 | 77.0 [77.0, 77.0] | - |" in text
    assert "| discrete_grpo:grpo | 2 | 3 / 4 | 0.3 / 0.4 | - | - |" in text  # means of steps 1-5 and 2-6
    assert "| SofT-GRPO, soft | 3 | 50.0 | 85.0 |" in text  # per-seed section, seed 3

    # SofT-GRPO minus GRPO (discrete), Pass@1: 0.6333 - 0.7 by hand, and the CI from the same draws one by one
    a, b = [0.65, 0.75, 0.50], [0.70, 0.80, 0.60]
    rng = np.random.default_rng(0)
    ia, ib = rng.integers(0, 3, size=(10000, 3)), rng.integers(0, 3, size=(10000, 3))
    diffs = [np.mean([a[i] for i in ra]) - np.mean([b[i] for i in rb]) for ra, rb in zip(ia, ib)]
    d, lo, hi = grpo_report.difference_ci(a, b)
    assert d == pytest.approx(np.mean(a) - np.mean(b))
    assert (lo, hi) == pytest.approx((np.percentile(diffs, 2.5), np.percentile(diffs, 97.5)))
    assert (
        f"| SofT-GRPO, soft minus GRPO, discrete | 3 vs 3 | {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] |" in text
    )

    kept = grpo_report.main(
        [str(tmp_path / "sweep"), "--seeds", "--keep-seeds", "1", "3", "--md", str(md), "--section", "x"]
    )
    assert {e["seed"] for e in kept} == {1, 3}
    kept = grpo_report.main([str(tmp_path / "sweep"), "--seeds", "--methods", "sofT_grpo:softgrpo"])
    assert {e["model"] for e in kept} == {"base", "sofT_grpo:softgrpo"}
    assert "<!-- grpo_report:x:begin -->\n| model, decoding | seeds |" in md.read_text()
    assert f"| SofT-GRPO, soft | 2 | {100 * np.mean([0.65, 0.50]):.1f} [" in md.read_text()

    steps, mean, lo, hi, n = grpo_report.curve(entries, "discrete_grpo:grpo", "discrete", 1)
    assert steps.tolist() == [0, 10, 20] and n == 3
    assert mean == pytest.approx([0.40, 0.55, 0.70])  # step 0 is the base model
    assert lo[0] == hi[0] == pytest.approx(0.40)  # three equal seeds: no spread
    assert (lo[2], hi[2]) == pytest.approx(hand_ci([0.70, 0.80, 0.60]))
    steps, mean, _, _, _ = grpo_report.curve(entries, "sofT_grpo:softgrpo", "sofT-grpo", 8)
    expected = [np.mean([0.65, 0.70, 0.60]), np.mean([0.80, 0.85, 0.75]), np.mean([1.0, 1.0, 0.85])]
    assert mean == pytest.approx(expected)


def test_late_slope_fits_the_last_third_per_seed_and_calls_the_trend():
    steps = list(range(0, 601, 50))

    def entries_of(model, decoding, curves):  # curves: {seed: f(step) -> Pass@1}; step 0 is the base model
        return [
            dict(model="base" if x == 0 else model, decoding=decoding, step=x, seed=seed, passk={1: f(x)})
            for seed, f in curves.items()
            for x in steps
        ]

    flat = {  # rise until step 400, then flat up to +-1 point: nothing left to learn in the last third
        1: lambda x: 0.3 + 0.001 * min(x, 400) + (0.01 if x == 500 else 0),
        2: lambda x: 0.3 + 0.001 * min(x, 400) - (0.01 if x == 450 else 0),
        3: lambda x: 0.3 + 0.001 * min(x, 400),
    }
    rising = {s: (lambda x, s=s: 0.2 + (0.0008 + 0.0001 * s) * x) for s in (1, 2, 3)}  # 9, 10, 11 points / 100 steps
    entries = entries_of("discrete_grpo:grpo", "discrete", flat) + entries_of("sofT_grpo:softgrpo", "sofT-grpo", rising)
    fitted, slopes = grpo_report.late_slope(entries, "sofT_grpo:softgrpo", "sofT-grpo")
    assert fitted == [400, 450, 500, 550, 600]  # the last third of 600 steps
    assert slopes == pytest.approx([9.0, 10.0, 11.0])
    fitted, slopes = grpo_report.late_slope(entries, "discrete_grpo:grpo", "discrete")
    x = np.array(fitted, dtype=float)
    for seed, slope in zip((1, 2, 3), slopes):  # least squares by hand: cov(x, y) / var(x), in points per 100 steps
        y = np.array([flat[seed](v) for v in fitted])
        assert slope == pytest.approx(1e4 * ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    assert slopes[2] == pytest.approx(0.0, abs=1e-9)
    lines = "\n".join(grpo_report.plateau_markdown(entries))
    lo, hi = t_interval_by_hand(slopes)
    row = f"| GRPO, discrete | 3 | 400-600 (5 evals) | {np.mean(slopes):+.2f} [{lo:+.2f}, {hi:+.2f}] |"
    assert row + " flat (CI inside +-2) |" in lines
    assert "| SofT-GRPO, soft | 3 | 400-600 (5 evals) | +10.00 [" in lines and "still rising" in lines
    noisy = entries_of(
        "discrete_grpo:grpo", "discrete", {s: (lambda x, s=s: 0.5 + 0.0004 * (s - 2) * x) for s in (1, 2, 3)}
    )
    assert "0.00 [-9.94, +9.94] | undecided (CI covers 0) |" in "\n".join(grpo_report.plateau_markdown(noisy))
    # a seed that stopped at step 500: the fit ends at the last step every seed reached
    short = [e for e in entries if not (e["seed"] == 3 and e["step"] > 500)]
    assert grpo_report.late_slope(short, "sofT_grpo:softgrpo", "sofT-grpo")[0] == [350, 400, 450, 500]


def t_interval_by_hand(values):
    from scipy import stats

    v = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return v.mean() - half, v.mean() + half


# ---------------------------------------------------------------- thinking-position statistics


def test_thinking_position_stats_on_a_hand_built_logits_tensor():
    # row 0: a uniform step over 4 ids, then a step with probabilities 1/2, 1/4, 1/8, 1/8; row 1: a masked-out step
    # with huge logits (it must not count) and a step that is near one-hot
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0, 0.0], [math.log(4), math.log(2), 0.0, 0.0]],
            [[100.0, 0.0, 0.0, 0.0], [0.0, -20.0, -20.0, -20.0]],
        ]
    )  # [B 2, T 2, V 4]
    mask = torch.tensor([[True, True], [False, True]])
    near_one_hot = 1 / (1 + 3 * math.exp(-20))
    h_uniform, h_dyadic = math.log(4), 0.5 * math.log(2) + 0.25 * math.log(4) + 2 * 0.125 * math.log(8)
    h_sharp = -near_one_hot * math.log(near_one_hot) - 3 * (1 - near_one_hot) / 3 * math.log((1 - near_one_hot) / 3)
    st = grpo_thinking_stats.thinking_position_stats(logits, mask)
    assert st["positions"] == 3
    assert st["entropy"] == pytest.approx((h_uniform + h_dyadic + h_sharp) / 3, rel=1e-5)
    assert st["top1"] == pytest.approx((0.25 + 0.5 + near_one_hot) / 3, rel=1e-6)
    assert st["frac_top1_above_0.99"] == pytest.approx(1 / 3)

    # temperature 2 halves the logits: the dyadic step becomes probabilities proportional to 2, sqrt 2, 1, 1
    st = grpo_thinking_stats.thinking_position_stats(logits[:1, 1:], mask[:1, 1:], temperature=2.0)
    q = torch.tensor([2.0, math.sqrt(2), 1.0, 1.0]) / (4 + math.sqrt(2))
    assert st["top1"] == pytest.approx(q[0].item(), rel=1e-6)
    assert st["entropy"] == pytest.approx(-(q * q.log()).sum().item(), rel=1e-6)

    # top-k 3 keeps 1/2, 1/4, 1/8 -> 4/7, 2/7, 1/7; top-p 0.8 then keeps 4/7 and 2/7 (4/7 < 0.8) -> 2/3, 1/3
    st = grpo_thinking_stats.thinking_position_stats(logits[:1, 1:], mask[:1, 1:], top_k=3, top_p=0.8)
    assert st["top1"] == pytest.approx(2 / 3, rel=1e-6)
    assert st["entropy"] == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3), rel=1e-6)


def test_thinking_mask_keeps_the_steps_up_to_and_including_think_end():
    END = 9
    ids = torch.tensor([[1, 2, END, 3, 4], [END, 5, 6, 0, 0], [1, 1, 1, 1, 1]])
    completion_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    expected = [[True, True, True, False, False], [True, False, False, False, False], [True, True, True, True, False]]
    assert grpo_thinking_stats.thinking_mask(ids, completion_mask, END).tolist() == expected


# ---------------------------------------------------------------- gradient diagnosis statistics


def test_gumbel_mask_stats_on_hand_built_soft_positions():
    # k = 3 stored ids per position. Row 0: q = .9, .06, .04 -> log q = -0.105, -2.81 (kept), -3.22 (masked); noise
    # g' = 0.5, 3.5 (clamped high), -2 (masked, so not counted). Row 1: q ~ 1, 4.5e-5, 4.5e-5 -> only id 0 kept,
    # g' = -1.6: clamped low, so the position has no gradient at all. Row 2: q = 1/3 each, g' = 0, 1, -1: all kept.
    q = torch.tensor([[0.9, 0.06, 0.04], [1.0, math.exp(-10), math.exp(-10)], [1 / 3, 1 / 3, 1 / 3]])
    z = q.log()  # logits of the stored ids
    g = torch.tensor([[0.5, 3.5, -2.0], [-1.6, 0.0, 0.0], [0.0, 1.0, -1.0]])
    y = torch.log(z.softmax(-1) + 1e-6) + g
    st = grpo_grad_diagnosis.gumbel_mask_stats(z, y)
    assert st["positions"] == 3
    assert st["kept_components"] == pytest.approx((2 + 1 + 3) / 3)
    assert st["frac_one_kept"] == pytest.approx(1 / 3)
    assert st["frac_kept_clamped_low"] == pytest.approx(1 / 6)  # 6 kept components in all
    assert st["frac_kept_clamped_high"] == pytest.approx(1 / 6)
    assert st["frac_no_gradient"] == pytest.approx(1 / 3)

    # the script's own log-density agrees: no gradient at row 1, some at rows 0 and 2
    s = grpo_grad_diagnosis.load_script(ROOT, "sofT_grpo")
    zg = z.clone().requires_grad_(True)
    s.soft_log_density(zg, y, "gumbel").sum().backward()
    assert zg.grad[1].abs().max() == 0
    assert zg.grad[0].abs().max() > 0 and zg.grad[2].abs().max() > 0


def test_kept_set_changes_when_a_component_crosses_log_q_minus_3():
    # id 1 moves from q = 0.06 (log -2.81, kept) to 0.04 (log -3.22, masked); row 1 moves but keeps its set
    z_old = torch.tensor([[0.90, 0.06, 0.04], [0.5, 0.3, 0.2]]).log()
    z_new = torch.tensor([[0.92, 0.04, 0.04], [0.6, 0.2, 0.2]]).log()
    assert grpo_grad_diagnosis.kept(z_old).tolist() == [[True, True, False], [True, True, True]]
    assert grpo_grad_diagnosis.kept_set_changes(z_old, z_new).tolist() == [True, False]


def test_identical_thinking_groups_compares_only_thinking_positions():
    # G = 2. Group 0: same thinking tokens (7, 8), different answers (3 vs 4). Group 1: differs at thinking step 1.
    ids = torch.tensor([[7, 8, 3], [7, 8, 4], [7, 8, 3], [7, 9, 3]])
    thinking = torch.tensor([[True, True, False]] * 4)
    assert grpo_grad_diagnosis.identical_thinking_groups(ids, thinking, 2) == 0.5
    assert grpo_grad_diagnosis.identical_thinking_groups(ids, torch.zeros_like(thinking), 2) == 1.0


def test_loss_grad_split_parts_add_up_and_equal_a_hand_gradient():
    # log pi = w, one parameter per position: at ratio 1 the token-mean GRPO loss has d loss / d w[b, t] = -A_b / N
    # at the N valid tokens. Thinking = step 0 of each row; answer = steps 1, 2 (row 3's step 2 is padding).
    d = grpo_grad_diagnosis.load_script(ROOT, "discrete_grpo")
    w = torch.nn.Parameter(torch.zeros(4, 3))
    model = torch.nn.Module()
    model.w = w
    completion_mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0])  # two groups of G = 2
    thinking = torch.tensor([[True, False, False]] * 4)
    masks = {"thinking": thinking, "answer": completion_mask.bool() & ~thinking}
    batch = {"completion_mask": completion_mask, "advantages": adv}
    out = grpo_grad_diagnosis.loss_grad_split(d, lambda m: m.w * 1.0, model, batch, masks, 2, 3, 0)
    n = 11
    a2 = adv.pow(2)
    assert out["norm_thinking"] == pytest.approx(math.sqrt(a2.sum().item()) / n)
    assert out["norm_answer"] == pytest.approx(math.sqrt((2 * a2[:3].sum() + a2[3]).item()) / n)
    assert out["norm_total"] == pytest.approx(math.sqrt((3 * a2[:3].sum() + 2 * a2[3]).item()) / n)
    assert out["cosine_thinking_answer"] == pytest.approx(0.0)  # disjoint parameters
    # every row thinks at the same single step: shuffling A within a group only permutes the gradient's entries
    assert out["norm_thinking_shuffled_advantages"] == pytest.approx(out["norm_thinking"])


def test_logit_grad_norms_of_the_categorical_and_the_gumbel_log_density_by_hand():
    # V = 3, logits 0 everywhere. Step 0 is a soft position storing ids (0, 1) with y = log(1/2) + (0, 1); step 1
    # is an answer token (id 1). Categorical: d log p_x / dz = onehot(x) - p, p = 1/3 each: norm sqrt(6) / 3.
    # Gumbel density over the two stored ids, both kept (log q = log 1/2 > -3): the mean of phi(g_i), with
    # d phi / d log q_i = 1 - exp(-g_i) = 0 and 1 - 1/e, and d log q_2 / dz = (-1/2, 1/2, 0):
    # norm (1 - 1/e) / 2 / sqrt 2.
    s = grpo_grad_diagnosis.load_script(ROOT, "sofT_grpo")
    logits = torch.zeros(1, 2, 3)
    batch = {
        "completion_ids": torch.tensor([[0, 1]]),
        "soft_ids": torch.tensor([[[0, 1], [1, 0]]]),
        "soft_y": math.log(0.5 + 1e-6) + torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]),
    }
    masks = {"thinking": torch.tensor([[True, False]]), "answer": torch.tensor([[False, True]])}
    categorical = grpo_grad_diagnosis.logit_grad_norms(s, logits, batch, masks, False, "gumbel")
    assert categorical[0].tolist() == pytest.approx([math.sqrt(6) / 3] * 2, rel=1e-6)
    soft = grpo_grad_diagnosis.logit_grad_norms(s, logits, batch, masks, True, "gumbel")
    assert soft[0].tolist() == pytest.approx([(1 - math.exp(-1)) / 2 / math.sqrt(2), math.sqrt(6) / 3], rel=1e-4)


def test_official_top_p_slots_drop_the_top_p_dropped_component_from_the_density():
    # top-k 3 probabilities .6, .35, .05; top-p 0.95 drops the third (.6 + .35 >= .95), so the sampler renormalises
    # to .6/.95, .35/.95 and stores y = log(pi + 1e-6) + g, the third at the floor log(1e-6) + g. The official
    # sampler stores a probability-0 filler id in that slot: the density is the mean of phi(g) over the first two,
    # with g' = g exactly. sofT_grpo.py's stored third id has log q = log .05 = -2.996 > -3: it joins the mean
    # with the constant phi(-1.5) = 1.5 - e^1.5.
    s = grpo_grad_diagnosis.load_script(ROOT, "sofT_grpo")
    z = torch.tensor([[0.6, 0.35, 0.05]]).log()
    g = torch.tensor([[0.3, -0.2, 1.0]])
    pi = torch.tensor([[0.6 / 0.95, 0.35 / 0.95, 0.0]])
    y = torch.log(pi + 1e-6) + g
    phi = -g - torch.exp(-g)
    patched = grpo_grad_diagnosis.official_top_p_slots(s.soft_log_density)(z, y, "gumbel")
    assert patched.item() == pytest.approx(phi[0, :2].mean().item(), abs=1e-4)
    # sofT_grpo.py now applies the same fix; before it, the third id joined the mean with phi(-1.5) = 1.5 - e^1.5
    assert s.soft_log_density(z, y, "gumbel").item() == pytest.approx(patched.item(), abs=1e-6)
