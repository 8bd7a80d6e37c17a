"""Tests for the benchmarks/ tools: the sweep runner (grids, a real two-job local sweep, restart), the RL report
(AUC, final return, IQM against hand computations on synthetic TensorBoard runs), the GRPO report (mean, bootstrap
CI and curve data on synthetic eval JSONs) and the thinking-position statistics on a hand-built logits tensor."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import rl_benchmark  # noqa: E402

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

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "stage 0: 0 to run, 2 already done" in second.stdout
    for key, mtime in markers.items():
        assert os.path.getmtime(os.path.join(out, key, "DONE.json")) == mtime
