#!/usr/bin/env bash
# CPU step time of the default toy step (16 prompts x G 8) in one process and in 2 gloo ranks (torchrun + FSDP2),
# the same total work per step, for both paper-scale variants (*_fsdp.py); and the memory table of docs/discrete_grpo.md.
# Usage: bash benchmarks/grpo_scale.sh [timing|memory]   (from the repository root, after the README's install)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/runs/grpo_scale   # gitignored
FLAGS="--total-steps 6 --eval-problems 8 --eval-samples 2 --log-completions-every 0"

if [ "${1:-timing}" = "timing" ]; then
  rm -rf "$OUT"
  python discrete_grpo_fsdp.py --eval-only --eval-problems 1 > /dev/null 2>&1   # build and cache the toy base model once
  for script in discrete_grpo_fsdp sofT_grpo_fsdp; do
    OMP_NUM_THREADS=1 python $script.py $FLAGS --output-dir "$OUT/$script/1proc_1thread" > /dev/null 2>&1
    OMP_NUM_THREADS=2 python $script.py $FLAGS --output-dir "$OUT/$script/1proc_2threads" > /dev/null 2>&1
    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 $script.py $FLAGS \
      --output-dir "$OUT/$script/2ranks_1thread" > /dev/null 2>&1
  done
  uptime
  python - "$OUT" <<'PY'
import glob, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
print("| script | setting | rollout s/step | update s/step | step s | reward (mean of 6 steps) |")
print("|---|---|---|---|---|---|")
for run in sorted(glob.glob(sys.argv[1] + "/*/*/*/")):
    ea = EventAccumulator(run)
    ea.Reload()
    def mean(tag, skip=1):  # step 1 is a warm-up
        xs = [e.value for e in ea.Scalars(tag)][skip:]
        return sum(xs) / len(xs)
    g, t = mean("perf/gen_time"), mean("perf/train_time")
    script, setting = run.rstrip("/").split("/")[-3:-1]
    print(f"| {script} | {setting} | {g:.2f} | {t:.2f} | {g + t:.2f} | {mean('reward', 0):.3f} |")
PY
fi
if [ "${1:-timing}" = "memory" ]; then
  python benchmarks/grpo_memory.py
fi
