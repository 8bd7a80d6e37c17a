#!/usr/bin/env bash
# Reproduces the figures in benchmarks/results_pmoe_ppo.md. Needs only the README's install
# (`pip install -r requirements.txt`): it runs whichever `python` is on PATH.
#   bash benchmarks/pmoe_ppo.sh sps       # SPS, K=1 vs K=5, HalfCheetah-v5, 3 interleaved repeats of 5 PPO iterations
#   bash benchmarks/pmoe_ppo.sh returns   # 301,056 steps (147 iterations) on HalfCheetah-v5, K=5 then K=1, seed 1
#   bash benchmarks/pmoe_ppo.sh routing   # the routing diagnostics of the K=5 returns run, read from TensorBoard
#   bash benchmarks/pmoe_ppo.sh tests     # wall time of tests/test_pmoe_ppo.py
#   bash benchmarks/pmoe_ppo.sh speed     # eager and --compile, K=1 and K=5, beside CleanRL's own script (see below)
#   bash benchmarks/pmoe_ppo.sh profile   # where one minibatch step's time goes: matmuls vs the rest
# `speed` needs CleanRL's script in its own environment: CLEANRL_DIR holds ppo_continuous_action.py (and, for SAC,
# sac_continuous_action.py and cleanrl_utils/buffers.py), CLEANRL_PYTHON is the python of a venv with
# gymnasium==0.29.1 mujoco==3.1.6 "numpy<2" torch==2.13.0 tyro tensorboard imageio (results_pmoe_ppo.md, Speed).
# TensorBoard runs and logs land in benchmarks/runs/ (gitignored). Each run ends with a "SUMMARY {json}" line:
# main()'s summary dict (final_return = mean of the last 10 training episodes; eval/* = 10 deterministic episodes).
# SPS: "wall" is CleanRL's charts/SPS (global_step / wall time); CPU_SPS divides global_step by the CPU time of the
# process, which is less sensitive to other jobs sharing the cores.
set -euo pipefail
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # torch takes its intra-op thread count from OMP_NUM_THREADS
mkdir -p runs

run() {  # pmoe_ppo.main with CLI flags; prints steps per CPU-second of the process and the summary as JSON
  python - "$@" <<'PY'
import json, sys, time
sys.path.insert(0, "..")
import tyro
import pmoe_ppo
start = time.process_time()
summary = pmoe_ppo.main(tyro.cli(pmoe_ppo.Args))
print(f"CPU_SPS: {summary['global_step'] / (time.process_time() - start):.0f}")
print("SUMMARY " + json.dumps(summary, default=float))
PY
}

case "${1:-all}" in
  sps|all)
    for rep in 1 2 3; do
      for K in 1 5; do
        out=$(run --num-experts "$K" --total-timesteps 10240 --eval-episodes 1 --exp-name "sps_k$K" 2>/dev/null)
        sps=$(grep '^SUMMARY' <<< "$out" | python -c 'import json,sys; print(json.loads(sys.stdin.read()[8:])["charts/SPS"])')
        echo "rep=$rep K=$K wall SPS $sps | $(grep '^CPU_SPS' <<< "$out") | load $(cut -d' ' -f1 /proc/loadavg)"
      done
    done | tee runs/pmoe_ppo_sps.log
    ;;&
  returns|all)
    for K in 5 1; do
      start=$SECONDS
      run --num-experts "$K" --total-timesteps 301056 --save-model --exp-name "pmoe_ppo_k$K" > "runs/pmoe_ppo_k$K.log" 2>&1
      grep -E '^(SUMMARY|CPU_SPS)' "runs/pmoe_ppo_k$K.log"
      echo "K=$K wall $((SECONDS - start)) s, load $(cut -d' ' -f1 /proc/loadavg)"
    done
    ;;&
  routing|all)
    python - <<'PY'
import glob
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for run in sorted(glob.glob("runs/HalfCheetah-v5__pmoe_ppo_k5__*")):
    events = EventAccumulator(run, size_guidance={"scalars": 0})
    events.Reload()
    print(run)
    for tag in ["charts/route_entropy", "charts/expert_spread", "losses/route_loss", "losses/q_loss"]:
        values = [event.value for event in events.Scalars(tag)]
        picks = {"first": values[0], "min": min(values), "max": max(values), "last": values[-1]}
        print(f"  {tag}: " + ", ".join(f"{name} {value:.4f}" for name, value in picks.items()))
    usage = [events.Scalars(f"charts/expert_usage_{k}")[-1].value for k in range(5)]
    print("  charts/expert_usage_k (last): " + ", ".join(f"{u:.3f}" for u in usage))
PY
    ;;&
  speed)  # not in `all`: it needs CleanRL's environment
    python rl_speed.py ppo --cleanrl-dir "$CLEANRL_DIR" --cleanrl-python "$CLEANRL_PYTHON" --threads 1 2 \
      --repeats 2 --workdir runs/speed_ppo | tee runs/speed_ppo.log
    ;;
  profile|all)
    python rl_speed_profile.py | tee runs/speed_profile.log
    ;;&
  tests|all)
    cd .. && /usr/bin/time -f "tests/test_pmoe_ppo.py wall %e s" python -m pytest -q tests/test_pmoe_ppo.py
    ;;
esac
