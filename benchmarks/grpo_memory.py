"""Memory per GPU of the GRPO presets, by arithmetic from the real model configs (written out below, since no Hub
is reachable here) and the presets' batch flags. Prints the markdown table of docs/discrete_grpo.md.

    python benchmarks/grpo_memory.py

Assumptions, as the scripts run: fp32 master weights, fp32 gradients and fp32 AdamW states (16 bytes a parameter),
sharded over the GPUs by FSDP2 (one GPU: not sharded); bf16 compute (one GPU: autocast keeps a bf16 copy of the
weights during a forward; FSDP2: one gathered bf16 decoder layer at a time, plus the root); a bf16 reference model
(sharded like the policy); gradient checkpointing (each decoder layer keeps its bf16 input, one layer is recomputed
at a time); the chunked log-probs (256 positions of fp32 logits at a time, about 3 copies in the backward); a
rollout gathers the whole bf16 model on every GPU and holds a bf16 KV cache of --rollout-batch-size rows.
"""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

GB = 1e9
# config.json of each Hub model (the fields that set the sizes)
CONFIGS = {
    "r1-distill-qwen-1.5b": Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    ),  # fmt: skip
    "llama-3.2-3b-instruct": LlamaConfig(
        vocab_size=128256,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    ),  # fmt: skip
    "r1-distill-qwen-7b": Qwen2Config(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),  # fmt: skip
}
MICRO = {"r1-distill-qwen-1.5b": 2, "llama-3.2-3b-instruct": 2, "r1-distill-qwen-7b": 1}  # --micro-batch-size
ROWS = {"r1-distill-qwen-1.5b": 32, "llama-3.2-3b-instruct": 16, "r1-distill-qwen-7b": 16}  # --rollout-batch-size
PROMPT, NEW, EVAL_NEW, CHUNK = 1024, 8192, 32768, 256  # --max-prompt-length, --(eval-)max-new-tokens, LOGPROB_CHUNK


def table():
    rows = []
    for name, cfg in CONFIGS.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        P = sum(p.numel() for p in model.parameters())  # tied embeddings are counted once
        layer = sum(p.numel() for p in model.model.layers[0].parameters())
        root = P - cfg.num_hidden_layers * layer  # embeddings, final norm, lm_head
        H, V, L, micro = cfg.hidden_size, cfg.vocab_size, PROMPT + NEW, MICRO[name]
        head_dim = getattr(cfg, "head_dim", None) or H // cfg.num_attention_heads
        kv_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * 2  # K and V, bf16
        for gpus in (1, 8):
            weights, grads, adam, ref = 4 * P / gpus, 4 * P / gpus, 8 * P / gpus, 2 * P / gpus
            working = 2 * P if gpus == 1 else 2 * (root + 2 * layer)  # bf16 copies used by the compute
            kept = micro * L * H * 2 * cfg.num_hidden_layers  # checkpointed layer inputs
            recompute = micro * L * (10 * H + 4 * cfg.intermediate_size) * 2  # one layer's activations
            logits = 3 * micro * CHUNK * V * 4
            train = weights + grads + adam + ref + working + kept + recompute + logits
            gathered = weights + adam + ref + 2 * P  # gradients freed; the whole bf16 model gathered
            rollout = gathered + ROWS[name] * L * kv_per_token
            evaluation = gathered + ROWS[name] * (PROMPT + EVAL_NEW) * kv_per_token
            row = (weights, grads, adam, ref, working, kept + recompute, logits, train, rollout, evaluation)
            rows.append((name, gpus, P, *row))
    return rows


if __name__ == "__main__":
    print(
        "| preset | GPUs | params | fp32 weights | fp32 grads | AdamW | ref (bf16) | bf16 working copy "
        "| activations | logits chunk | **train peak** | **rollout peak** (8k) | **eval peak** (32k) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, gpus, P, *sizes in table():
        cells = [f"{x / GB:.1f}" for x in sizes[:-3]] + [f"**{x / GB:.1f}**" for x in sizes[-3:]]
        print(f"| {name} | {gpus} | {P / 1e9:.2f}B | " + " | ".join(cells) + " |")
