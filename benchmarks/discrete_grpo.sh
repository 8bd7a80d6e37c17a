#!/usr/bin/env bash
# Reproduces the figures in benchmarks/results_discrete_grpo.md (2-core CPU, no GPU, offline).
# Usage: bash benchmarks/discrete_grpo.sh            (from the repository root, after the README's install)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/runs/discrete_grpo   # gitignored
CACHE=benchmarks/runs/toy_cache     # a fresh cache, so the first run includes the toy SFT
rm -rf "$OUT" "$CACHE"

# 1. The default toy run (no flags except where outputs go), cold cache: toy SFT + base eval + GRPO + final eval.
/usr/bin/time -v python discrete_grpo.py --output-dir "$OUT" --toy-cache-dir "$CACHE" 2>&1 | tee "$OUT.log" | grep -E "eval step|Elapsed|prompts"

# 2. Held-out Pass@k before and after, from the eval JSON files.
python benchmarks/grpo_report.py "$OUT" --delta

# 3. Rollout throughput and the generation / training split of a step, from TensorBoard.
python - "$OUT" <<'EOF'
import glob, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for run in sorted(glob.glob(sys.argv[1] + "/*/")):
    ea = EventAccumulator(run); ea.Reload()
    vals = lambda tag: [e.value for e in ea.Scalars(tag)]
    mean = lambda xs: sum(xs) / len(xs)
    g, t = mean(vals("perf/gen_time")[1:]), mean(vals("perf/train_time")[1:])  # step 1 is a warm-up
    print(f"{run}: gen {mean(vals('perf/gen_tokens_per_s')[1:]):.0f} tokens/s; step = gen {g:.2f} s ({100 * g / (g + t):.0f}%)"
          f" + train {t:.2f} s; completion length {mean(vals('completions/mean_length')):.1f};"
          f" reward first/last 5 steps {mean(vals('reward')[:5]):.3f} / {mean(vals('reward')[-5:]):.3f}")
EOF

# 4. The same base model evaluated alone (cached now): the eval-only path, as a check of the base numbers.
python discrete_grpo.py --eval-only --output-dir "$OUT-evalonly" --toy-cache-dir "$CACHE" 2>&1 | grep "eval step"

# 5. The default run again with the toy base model cached (RL + two evaluations only), then its step split.
/usr/bin/time -v python discrete_grpo.py --output-dir "$OUT-warm" --toy-cache-dir "$CACHE" 2>&1 | tee "$OUT-warm.log" | grep -E "eval step|Elapsed"
python benchmarks/grpo_report.py "$OUT-warm" --delta
