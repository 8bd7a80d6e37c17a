#!/usr/bin/env bash
# Reproduces the figures in benchmarks/results_pmoe_ppo.md (CPU, one torch thread per run).
#   bash benchmarks/pmoe_ppo.sh sps       # SPS, K=1 vs K=5, HalfCheetah-v5, 3 interleaved repeats of 5 PPO iterations
#   bash benchmarks/pmoe_ppo.sh returns   # 301,056 steps (147 iterations) on HalfCheetah-v5, K=1 then K=5, seed 1
#   bash benchmarks/pmoe_ppo.sh report    # markdown table + learning curves of the returns runs (benchmarks/rl_report.py)
#   bash benchmarks/pmoe_ppo.sh tests     # wall time of tests/test_pmoe_ppo.py
# TensorBoard runs and logs land in benchmarks/runs/ (gitignored). Each run ends with a "SUMMARY {json}" line:
# main()'s summary dict (final_return = mean of the last 10 training episodes; eval_return = 10 deterministic episodes).
# SPS: "wall" is CleanRL's charts/SPS (global_step / wall time); CPU_SPS divides global_step by the CPU time of the
# process, which is less sensitive to other jobs sharing the cores.
set -euo pipefail
cd "$(dirname "$0")"
. ../.venv/bin/activate
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
        out=$(run --num-experts "$K" --total-timesteps 10240 --exp-name "sps_k$K" 2>/dev/null)
        echo "rep=$rep K=$K wall $(grep '^SPS' <<< "$out" | tail -1) | $(grep '^CPU_SPS' <<< "$out") | load $(cut -d' ' -f1 /proc/loadavg)"
      done
    done | tee runs/pmoe_ppo_sps.log
    ;;&
  returns|all)
    for K in 1 5; do
      run --num-experts "$K" --total-timesteps 301056 --save-model --exp-name "pmoe_ppo_k$K" > "runs/pmoe_ppo_k$K.log" 2>&1
      grep -E '^(SUMMARY|CPU_SPS|eval/)' "runs/pmoe_ppo_k$K.log"
    done
    ;;&
  report|all)
    python rl_report.py runs --match 'pmoe_ppo_k[15]__' --last-n 10 --png runs/pmoe_ppo_curves.png
    ;;&
  tests|all)
    cd .. && /usr/bin/time -f "tests/test_pmoe_ppo.py wall %e s" python -m pytest -q tests/test_pmoe_ppo.py
    ;;
esac
