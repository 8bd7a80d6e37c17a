"""Rollout throughput of both paper-scale GRPO variants (`*_fsdp.py`, the files that carry --compile) on one
default training rollout batch of the toy (16 prompts x G 8 =
128 rows, 48 new tokens, the scripts' training sampling): the eager loop, --compile (StaticCache + compiled step,
timed after a warm-up call) and Hugging Face `generate` with the same sampling (discrete only: it has no soft
thinking). Every method decodes all 48 tokens of every row (no stop token; `min_new_tokens` for `generate`), so the
work is equal. Three interleaved repeats, the median reported. Writes a markdown table.

    python benchmarks/grpo_rollout_speed.py [--threads N] [--repeats 3]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import discrete_grpo_fsdp as discrete_grpo  # noqa: E402
import sofT_grpo_fsdp as sofT_grpo  # noqa: E402

NEW_TOKENS = 48


def setup(M):
    args = M.Args()  # the default toy and the default training flags
    path = M.build_toy_base(args)
    tok = M.AutoTokenizer.from_pretrained(path)
    model = M.AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = M.render_prompts(tok, M.toy_splits(args)[0][: args.prompts_per_step], 10**9)[0]
    rows = [p for p in prompts for _ in range(args.group_size)]
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if M is sofT_grpo:
        sampling.update(think_end_id=tok.convert_tokens_to_ids(args.think_end), answer_top_k=args.answer_top_k)
        sampling.update(answer_top_p=args.answer_top_p, tau_g=args.tau_g, noise_scale=args.noise_scale)
        sampling.update(noise=args.noise)
    return args, tok, model, rows, sampling


def ours(M, args, tok, model, rows, sampling, compiled):
    never = torch.tensor([-1])  # no stop token: every row decodes all NEW_TOKENS
    g = torch.Generator().manual_seed(0)
    return M.generate(model, tok, rows, args.rollout_batch_size, NEW_TOKENS, never, g, compiled, **sampling)


def hf_generate(M, args, tok, model, rows):
    batch = ours_prompts(M, tok, rows)
    kw = dict(do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)
    kw.update(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    return model.generate(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], **kw)


def ours_prompts(M, tok, rows):
    P = max(len(r["prompt_ids"]) for r in rows)
    ids = torch.tensor([[tok.pad_token_id] * (P - len(r["prompt_ids"])) + r["prompt_ids"] for r in rows])
    mask = torch.tensor([[0] * (P - len(r["prompt_ids"])) + [1] * len(r["prompt_ids"]) for r in rows])
    return {"prompt_ids": ids, "prompt_mask": mask}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    results = {}
    for M in (discrete_grpo, sofT_grpo):
        args, tok, model, rows, sampling = setup(M)
        compiled = torch.compile(model, dynamic=False)
        t0 = time.time()
        ours(M, args, tok, model, rows, sampling, compiled)  # warm-up: compiles the step
        warmup = time.time() - t0
        names = ["eager", "--compile"] + (["HF generate"] if M is discrete_grpo else [])
        times = {name: [] for name in names}
        with torch.no_grad():
            for _ in range(opts.repeats):  # interleaved, so load changes hit every method alike
                for name in names:
                    t0 = time.time()
                    if name == "HF generate":
                        hf_generate(M, args, tok, model, rows)
                    else:
                        ours(M, args, tok, model, rows, sampling, compiled if name == "--compile" else None)
                    times[name].append(time.time() - t0)
        for name, ts in times.items():
            results[(M.__name__, name)] = (statistics.median(ts), warmup if name == "--compile" else None)
        print(f"{M.__name__}: compile warm-up {warmup:.1f} s", flush=True)
    tokens = 128 * NEW_TOKENS
    print(f"\n{opts.threads} torch thread(s), 128 rows x {NEW_TOKENS} tokens, median of {opts.repeats}\n")
    print("| script | method | seconds | tokens/s | vs eager |")
    print("|---|---|---|---|---|")
    for (script, name), (sec, _) in results.items():
        eager = results[(script, "eager")][0]
        print(f"| {script} | {name} | {sec:.2f} | {tokens / sec:.0f} | {eager / sec:.2f}x |")
    soft, discrete = results[("sofT_grpo_fsdp", "--compile")][0], results[("discrete_grpo_fsdp", "--compile")][0]
    eager_ratio = results[("discrete_grpo", "eager")][0] / results[("sofT_grpo", "eager")][0]
    print(f"\nsoft / discrete throughput: eager {eager_ratio:.2f}, --compile {discrete / soft:.2f}")


if __name__ == "__main__":
    main()
