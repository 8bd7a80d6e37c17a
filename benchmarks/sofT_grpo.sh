#!/usr/bin/env bash
# Reproduces the figures in benchmarks/results_sofT_grpo.md (CPU).
#   bash benchmarks/sofT_grpo.sh speed   # rollout tokens/s: soft vs discrete, same toy model and batch, fixed length
#   bash benchmarks/sofT_grpo.sh toy     # default toy runs of sofT_grpo.py and discrete_grpo.py, seed 1, same steps
#   bash benchmarks/sofT_grpo.sh grid    # every trained model under every decoding: discrete CoT and the 3 soft settings
#   bash benchmarks/sofT_grpo.sh report  # Pass@k table (grpo_report.py): every model x decoding
#   bash benchmarks/sofT_grpo.sh tests   # wall time of tests/test_sofT_grpo.py
#   bash benchmarks/sofT_grpo.sh time    # wall and CPU time of the default run, `python sofT_grpo.py`
# Runs and logs land in benchmarks/runs/ (gitignored). Each run ends with a "SUMMARY {json}" line (main()'s summary).
# Needs only the README's install (`python` with requirements.txt); activate your own environment first if you use one.
set -euo pipefail
cd "$(dirname "$0")"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p runs

run() {  # run SCRIPT.main with CLI flags (its own cli(), presets included) and print its summary as JSON
  python - "$@" <<'EOF'
import importlib, json, sys
sys.path.insert(0, "..")
mod = importlib.import_module(sys.argv[1])
print("SUMMARY " + json.dumps(mod.main(mod.cli(sys.argv[2:])), default=float))
EOF
}

case "${1:-all}" in
  speed|all)
    python - <<'EOF' | tee runs/sofT_grpo_speed.log
import sys, time
sys.path.insert(0, "..")
import torch
import discrete_grpo as d, sofT_grpo as s
args = s.Args()  # the default toy model and one default training rollout batch (16 prompts x G 8, 48 steps)
path = s.build_toy_base(args)
tok, model = s.AutoTokenizer.from_pretrained(path), s.AutoModelForCausalLM.from_pretrained(path).eval()
rows = [r for r in s.render_prompts(tok, s.toy_splits(args)[0][: args.prompts_per_step], 10**9)[0] for _ in range(args.group_size)]
never = torch.tensor([tok.pad_token_id])  # a stop id that is never sampled: every row decodes all 48 steps in both scripts
soft = dict(think_end_id=tok.convert_tokens_to_ids("</think>"), temperature=1.0, top_k=5, top_p=0.95, answer_top_k=5, answer_top_p=0.95,
            tau_g=0.1, noise_scale=1.0, noise="gumbel")
runs = {"discrete, its defaults (T 1, no top-k/p)": (d, dict(temperature=1.0, top_k=0, top_p=1.0)),
        "discrete, T 1, top-k 5, top-p 0.95": (d, dict(temperature=1.0, top_k=5, top_p=0.95)),
        "soft, its defaults (T 1, k 5, p 0.95, tau_g 0.1)": (s, soft)}
rates = {k: [] for k in runs}
for rep in range(6):  # interleaved repeats; the first is a warm-up and is dropped
    for name, (mod, kw) in runs.items():
        t0 = time.perf_counter()
        out = mod.generate(model, tok, rows, args.rollout_batch_size, args.max_new_tokens, never, torch.Generator().manual_seed(rep), **kw)
        rates[name] += [out["completion_ids"].numel() / (time.perf_counter() - t0)] if rep else []
ref = sorted(rates[next(iter(runs))])[2]
for name, r in rates.items():
    med = sorted(r)[2]
    print(f"{name:52s} median {med:7.0f} tokens/s (min {min(r):.0f}, max {max(r):.0f}) = {med / ref:.2f}x discrete defaults")
print(f"{len(rows)} rows x {args.max_new_tokens} steps, torch threads {torch.get_num_threads()}, 5 repeats")
EOF
    ;;&
  toy|all)
    run sofT_grpo --seed 1 --output-dir runs/sofT_toy > runs/sofT_grpo_toy.log 2>&1
    run discrete_grpo --seed 1 --output-dir runs/discrete_toy > runs/discrete_grpo_toy.log 2>&1
    grep -h '^SUMMARY' runs/sofT_grpo_toy.log runs/discrete_grpo_toy.log
    ;;&
  grid|all)
    soft_ckpt=$(ls -d runs/sofT_toy/*/final | tail -1)
    disc_ckpt=$(ls -d runs/discrete_toy/*/final | tail -1)
    run sofT_grpo --eval-only --model-name-or-path "$disc_ckpt" --output-dir runs/grid > runs/grid_discrete_ckpt_soft.log 2>&1
    run discrete_grpo --eval-only --model-name-or-path "$soft_ckpt" --output-dir runs/grid > runs/grid_soft_ckpt_discrete.log 2>&1
    grep -h '^SUMMARY' runs/grid_*.log
    ;;&
  report|all)  # sofT_grpo.py writes '<setting>/pass@k' keys: one grpo_report.py row per model x decoding
    python - <<'EOF'
import glob, json, os
import grpo_report
rows, seen = [], set()
for src in ("discrete_toy", "sofT_toy", "grid"):
    for f in sorted(glob.glob(f"runs/{src}/*/eval_step*.json")):
        r = json.load(open(f))
        if src == "grid":  # eval-only of the other script's trained checkpoint
            model = "discrete GRPO" if "discrete_toy" in r["model"] else "SofT-GRPO"
        else:
            model = "base" if r["step"] == 0 else {"sofT_toy": "SofT-GRPO", "discrete_toy": "discrete GRPO"}[src]
        for name in sorted({k.split("/")[0] for k in r if "/pass@" in k}) or ["discrete CoT"]:
            if (model, name) not in seen:  # the base model is evaluated by both training runs
                seen.add((model, name))
                rows.append({"model": model, "decoding": name, "step": r["step"], "script": r["run"].split("__")[1],
                             **{k.split("/")[-1]: v for k, v in r.items() if k.startswith(("pass@", name + "/pass@"))}})
order = ["base", "discrete GRPO", "SofT-GRPO"]
print(grpo_report.markdown_table(sorted(rows, key=lambda r: order.index(r["model"])), ["model", "decoding", "script"]))
EOF
    ;;&
  time)  # not part of `all`: the default run, timed (the toy base model is built first if it is not cached)
    cd .. && /usr/bin/time -v python sofT_grpo.py --output-dir benchmarks/runs/sofT_default 2>&1 | tee benchmarks/runs/sofT_default.log \
      | grep -E "eval step|Elapsed|User time|System time"
    ;;
  tests|all)
    cd .. && /usr/bin/time -f "tests/test_sofT_grpo.py wall %e s" python -m pytest -q tests/test_sofT_grpo.py
    ;;
esac
