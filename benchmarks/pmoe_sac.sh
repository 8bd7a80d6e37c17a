#!/usr/bin/env bash
# Reproduces benchmarks/results_pmoe_sac.md on a CPU: one torch thread per run, at most two runs at a time.
# Usage: bash benchmarks/pmoe_sac.sh [learning|sps|default_run|tests|report|speed|profile|all]   (default: all)
# `speed` (not in `all`) runs eager and --compile, K=1 and K=4, beside CleanRL's own script in its own environment:
# CLEANRL_DIR holds sac_continuous_action.py and cleanrl_utils/buffers.py, CLEANRL_PYTHON is the python of a venv
# with gymnasium==0.29.1 mujoco==3.1.6 "numpy<2" torch==2.13.0 tyro tensorboard imageio (results_pmoe_sac.md, Speed).
# Needs only the README's install (`pip install -r requirements.txt`); it runs whatever `python` is on PATH.
# TensorBoard logs and console logs go to benchmarks/sac/runs/ (gitignored by the `runs/` pattern; a separate folder
# because another job emptied the shared benchmarks/runs/ while these ran).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p sac/runs && cd sac
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
part="${1:-all}"
ENV=HalfCheetah-v5
STEPS=30000

learning() {  # one 30k-step run per estimator (K=4) and plain SAC (K=1), seed 1, CleanRL defaults otherwise
  python ../../pmoe_sac.py --env-id $ENV --total-timesteps $STEPS --seed 1 --num-experts 4 --gradient-estimator pmoe \
    --exp-name pmoe_sac_pmoe_K4 > runs/log_pmoe_K4.txt 2>&1 &
  python ../../pmoe_sac.py --env-id $ENV --total-timesteps $STEPS --seed 1 --num-experts 1 \
    --exp-name pmoe_sac_sac_K1 > runs/log_sac_K1.txt 2>&1 &
  wait
  python ../../pmoe_sac.py --env-id $ENV --total-timesteps $STEPS --seed 1 --num-experts 4 --gradient-estimator gumbel \
    --exp-name pmoe_sac_gumbel_K4 > runs/log_gumbel_K4.txt 2>&1 &
  python ../../pmoe_sac.py --env-id $ENV --total-timesteps $STEPS --seed 1 --num-experts 4 --gradient-estimator reinforce \
    --exp-name pmoe_sac_reinforce_K4 > runs/log_reinforce_K4.txt 2>&1 &
  wait
}

sps() {  # steady-state SPS after learning_starts, K=1 and K=4 interleaved, one run at a time, 3 repeats
  for rep in 1 2 3; do
    for K in 1 4; do
      python -c "import sys; sys.path.insert(0, '../..'); import pmoe_sac
s = pmoe_sac.main(pmoe_sac.Args(env_id='$ENV', total_timesteps=3000, learning_starts=1000, eval_episodes=0,
                                num_experts=$K, exp_name='sps_K$K'))
print('K=$K rep=$rep SPS after learning_starts: %.1f' % s['sps_after_learning_starts'])" 2>/dev/null
    done
  done
}

default_run() {  # the out-of-the-box run, timed: Hopper-v5, K=4, 20k steps, then 2 x 10 evaluation episodes
  /usr/bin/time -f "wall %e s" python ../../pmoe_sac.py --exp-name default_run 2>&1 | tr '\r' '\n' | grep -E "eval|wall"
}

tests() {  # wall time of the test file (pytest's own timer)
  (cd ../.. && python -m pytest -q tests/test_pmoe_sac.py 2>&1 | tail -1)
}

speed() {  # benchmarks/rl_speed.py: every arm in its own process, interleaved, 1 and 2 threads, 2 repeats
  python ../rl_speed.py sac --cleanrl-dir "$CLEANRL_DIR" --cleanrl-python "$CLEANRL_PYTHON" --threads 1 2 \
    --repeats 2 --workdir runs/speed | tee runs/speed_sac.log
}

profile() {  # where one update's time goes: matrix products against everything else, eager and compiled
  python ../rl_speed_profile.py | tee runs/speed_profile.log
}

report() {
  python ../rl_report.py runs --match "__pmoe_sac_" --last-n 10 --png runs/pmoe_sac_curves.png
}

case "$part" in
  learning) learning ;;
  sps) sps ;;
  default_run) default_run ;;
  tests) tests ;;
  report) report ;;
  speed) speed ;;
  profile) profile ;;
  all) learning; sps; default_run; tests; report; profile ;;
esac
