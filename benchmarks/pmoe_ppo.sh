#!/usr/bin/env bash
# Reproduces the figures in benchmarks/results_pmoe_ppo.md (CPU, one torch thread per run).
#   bash benchmarks/pmoe_ppo.sh sps       # SPS, K=1 vs K=5, HalfCheetah-v5, 3 interleaved repeats of 5 PPO iterations
#   bash benchmarks/pmoe_ppo.sh returns   # 301,056 steps (147 iterations) on HalfCheetah-v5, K=1 then K=5, seed 1
#   bash benchmarks/pmoe_ppo.sh tests     # wall time of tests/test_pmoe_ppo.py
# TensorBoard runs and logs land in benchmarks/runs/ (gitignored). Each run ends with a "SUMMARY {json}" line:
# main()'s summary dict (final_return = mean of the last 10 training episodes; eval_return = 10 deterministic episodes).
set -euo pipefail
cd "$(dirname "$0")"
. ../.venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # torch takes its intra-op thread count from OMP_NUM_THREADS
mkdir -p runs

run() {  # run pmoe_ppo.main with CLI flags and print its summary as JSON
  python - "$@" <<'EOF'
import json, sys
sys.path.insert(0, "..")
import tyro
import pmoe_ppo
print("SUMMARY " + json.dumps(pmoe_ppo.main(tyro.cli(pmoe_ppo.Args)), default=float))
EOF
}

case "${1:-all}" in
  sps|all)
    for rep in 1 2 3; do
      for K in 1 5; do
        echo "rep=$rep K=$K $(run --num-experts "$K" --total-timesteps 10240 --exp-name "sps_k$K" | grep '^SPS' | tail -1)"
      done
    done | tee runs/pmoe_ppo_sps.log
    ;;&
  returns|all)
    for K in 1 5; do
      run --num-experts "$K" --total-timesteps 301056 --save-model --exp-name "pmoe_ppo_k$K" > "runs/pmoe_ppo_k$K.log" 2>&1
      grep -E '^(SUMMARY|eval/)' "runs/pmoe_ppo_k$K.log"
    done
    ;;&
  tests|all)
    cd .. && /usr/bin/time -f "tests/test_pmoe_ppo.py wall %e s" python -m pytest -q tests/test_pmoe_ppo.py
    ;;
esac
