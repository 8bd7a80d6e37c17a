"""Tests of sofT_grpo.py: the soft-thinking sampler, the soft-token log-density, parity with the discrete path,
and a few SofT-GRPO steps on a tiny toy model (CPU, about a minute)."""

import glob
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_grpo_shared import ROLLOUT_FLAGS, ScriptedModel  # the shared helper tests' stand-in LM and flags
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

import discrete_grpo  # only tests may import both scripts (the toy base models must be bit-identical)
import sofT_grpo
import sofT_grpo_fsdp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(toy_hidden_size=32, toy_num_layers=1, toy_sft_steps=2)  # a toy base model in seconds
SAMPLING = ROLLOUT_FLAGS["sofT_grpo"]  # the rollout flags of the scripted-model tests (</think> is id 3 there)


@pytest.fixture(scope="module", params=[sofT_grpo, sofT_grpo_fsdp], ids=["sofT_grpo", "sofT_grpo_fsdp"])
def sg(request):
    """The teaching file or its paper-scale variant: the helper tests run on both copies, so neither drifts.
    Tests of `main` run the teaching file (the variant's own main is tested in test_grpo_scale.py)."""
    return request.param


@pytest.fixture(scope="module")
def toy(sg, tmp_path_factory):
    path = sg.build_toy_base(sg.Args(**TINY, toy_cache_dir=str(tmp_path_factory.mktemp("cache"))))
    return path, AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def weights_hash(folder):
    sd = load_file(glob.glob(os.path.join(folder, "*.safetensors"))[0])
    return hashlib.sha256(b"".join(k.encode() + sd[k].numpy().tobytes() for k in sorted(sd))).hexdigest()


def test_toy_base_model_is_bit_identical_to_discrete(toy, tmp_path):
    path_d = discrete_grpo.build_toy_base(discrete_grpo.Args(**TINY, toy_cache_dir=str(tmp_path)))
    assert weights_hash(toy[0]) == weights_hash(path_d)
    assert open(os.path.join(toy[0], "tokenizer.json")).read() == open(os.path.join(path_d, "tokenizer.json")).read()


def clamped_gumbel_max_probs(a, lo, hi, n=200001):
    """P(argmax_i a_i + clamp(G_i, lo, hi)) for i.i.d. standard Gumbel G, by quadrature (independent of the sampler)."""

    def cdf(g):  # the CDF of clamp(G, lo, hi): atoms at lo and hi
        return np.where(g < lo, 0.0, np.where(g >= hi, 1.0, np.exp(-np.exp(-np.clip(g, lo, hi)))))

    def others(x, i):  # P(every other component stays below a_i + x)
        return np.prod([cdf(a[i] + x - a[j]) for j in range(len(a)) if j != i], axis=0)

    g, out = np.linspace(lo, hi, n), []
    for i in range(len(a)):
        atoms = (
            np.exp(-np.exp(-lo)) * others(np.array([lo]), i)[0]
            + (1 - np.exp(-np.exp(-hi))) * others(np.array([hi]), i)[0]
        )
        out.append(np.trapezoid(np.exp(-g - np.exp(-g)) * others(g, i), g) + atoms)
    return np.array(out)


@pytest.mark.parametrize("clamp", [(-math.inf, math.inf), sofT_grpo.GUMBEL_CLAMP])
def test_emitted_thinking_tokens_are_gumbel_max_samples(sg, monkeypatch, clamp):
    """Unclamped: argmax y ~ Cat(pi) exactly. With the official clamp: the law computed by quadrature."""
    monkeypatch.setattr(sg, "GUMBEL_CLAMP", clamp)
    n, embed = 40000, torch.nn.Embedding(7, 4)
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.3, -0.5, -3.0, -4.0]]).repeat(n, 1)
    gen = torch.Generator().manual_seed(0)
    tok, _, (ids, y, soft) = sg.soft_sample_step(
        logits, embed, gen, torch.ones(n, dtype=torch.bool), 99, 1.0, 5, 1.0, 5, 1.0, 0.1, 1.0, "gumbel"
    )
    assert soft.all() and (ids[:, 0] == tok).all() and (y.argmax(-1) == 0).all()
    pi = torch.softmax(logits[0, :5].double(), 0).numpy()
    expected = pi if clamp[0] == -math.inf else clamped_gumbel_max_probs(np.log(pi + 1e-6), *clamp)
    assert abs(expected.sum() - 1) < 1e-6
    counts = np.bincount(tok.numpy(), minlength=7)
    assert counts[5:].sum() == 0  # only the top-k ids can be emitted
    chi2 = ((counts[:5] - n * expected) ** 2 / (n * expected)).sum()
    assert chi2 < 18.47  # chi-square, 4 degrees of freedom, p = 0.001


def test_answer_rows_sample_with_their_own_top_k_and_top_p(sg):
    n, embed = 20000, torch.nn.Embedding(6, 4)
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04, 0.0]]).repeat(n, 1) + 1e-12)
    tok, nxt, (_, _, soft) = sg.soft_sample_step(
        logits,
        embed,
        torch.Generator().manual_seed(1),
        torch.zeros(n, dtype=torch.bool),
        99,
        1.0,
        5,
        1.0,
        4,
        0.85,
        0.1,
        1.0,
        "gumbel",
    )
    counts = np.bincount(tok.numpy(), minlength=6)
    assert not soft.any() and counts[3:].sum() == 0  # top-p 0.85 keeps {0.4, 0.3, 0.2}
    expected = n * np.array([0.4, 0.3, 0.2]) / 0.9
    assert ((counts[:3] - expected) ** 2 / expected).sum() < 13.82  # 2 degrees of freedom, p = 0.001
    assert torch.equal(nxt, embed(tok))  # answer inputs are one-hot


def test_think_end_switches_the_row_to_answer_mode_one_hot(sg):
    embed = torch.nn.Embedding(6, 4)
    logits = torch.tensor([[0.0, 0, 0, 0, 9, 0], [9.0, 0, 0, 0, 0, 0]])  # row 0 emits 4 (= </think> here)
    tok, nxt, (_, _, soft) = sg.soft_sample_step(
        logits,
        embed,
        torch.Generator().manual_seed(0),
        torch.tensor([True, True]),
        4,
        1.0,
        3,
        1.0,
        3,
        1.0,
        0.1,
        0.0,
        "gumbel",
    )
    assert tok.tolist() == [4, 0] and soft.tolist() == [False, True]
    assert torch.equal(nxt[0], embed.weight[4])  # the </think> step feeds exactly E[</think>]


def gumbel_logpdf_reference(z, y):
    """Independent numpy evaluation: mean standard-Gumbel log-pdf of clamp(y - log q) over log q > -3."""
    q = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    ell = np.log(q + 1e-6)
    g = np.clip(y - ell, -1.5, 3.0)
    return torch.distributions.Gumbel(0.0, 1.0).log_prob(torch.tensor(g[ell > -3])).mean().item()


def test_soft_log_density_against_independent_references(sg):
    torch.manual_seed(0)
    z = torch.randn(64, 5, dtype=torch.float64) * 2
    pi = torch.softmax(torch.randn(64, 5, dtype=torch.float64), -1)
    y = torch.log(pi + 1e-6) + torch.distributions.Gumbel(0.0, 1.0).sample((64, 5)).double()
    got = sg.soft_log_density(z, y, "gumbel")
    assert np.allclose(got.numpy(), [gumbel_logpdf_reference(a, b) for a, b in zip(z.numpy(), y.numpy())], atol=1e-10)
    # the ablations: Gamma(q, 1) log-pdf clamped to [-5, 3], Normal(q, 0.05) at y clamped to q +- 0.15,
    # mean over q > 0.05
    q = torch.softmax(z, -1).numpy()
    yg = torch.distributions.Gamma(pi, 1.0).sample().clamp(min=1e-30).numpy()
    gam = np.clip((q - 1) * np.log(yg) - yg - np.vectorize(math.lgamma)(q), -5, 3)
    yn = pi.numpy() + 0.08 * np.random.default_rng(0).standard_normal(pi.shape)
    yc = np.clip(yn, q - 0.15, q + 0.15)
    nor = -0.5 * ((yc - q) / 0.05) ** 2 - math.log(0.05 * math.sqrt(2 * math.pi))
    for noise, ref, yy in (("dirichlet", gam, yg), ("gaussian", nor, yn)):
        keep = q > 0.05
        expected = (ref * keep).sum(-1) / keep.sum(-1)
        assert np.allclose(sg.soft_log_density(z, torch.tensor(yy), noise).numpy(), expected, atol=1e-8), noise


def test_gradient_reaches_only_the_stored_ids_through_log_q(sg):
    torch.manual_seed(0)
    z = torch.randn(3, 40, requires_grad=True)
    ids = torch.stack([torch.randperm(40)[:5] for _ in range(3)])
    y = torch.log(torch.softmax(torch.randn(3, 5), -1) + 1e-6) + torch.distributions.Gumbel(0.0, 1.0).sample((3, 5))
    lp = sg.soft_log_density(z.gather(-1, ids), y, "gumbel")
    lp[0].backward()
    g = z.grad
    on_ids = torch.zeros_like(g, dtype=torch.bool).scatter(-1, ids[:1], True)
    on_ids[1:] = False
    assert (g[~on_ids] == 0).all() and g[on_ids].abs().sum() > 0
    assert abs(g[0].sum().item()) < 1e-6  # invariant to a shift of the k logits: a function of log q only
    # analytic: d/d ell_i of mean phi(g_i) is (exp(-g_i) - 1) / |M| for unclamped kept components, and ell = log q
    ell = torch.log(torch.softmax(z[0, ids[0]].detach(), -1) + 1e-6)
    gh, keep = y[0] - ell, ell > -3
    dl = torch.where(keep & (gh > -1.5) & (gh < 3), 1 - torch.exp(-gh), torch.zeros_like(gh)) / keep.sum()
    q = torch.softmax(z[0, ids[0]].detach(), -1)
    dz = (dl * q / (q + 1e-6)) - q * (dl * q / (q + 1e-6)).sum()  # chain rule through log(q + 1e-6) and the softmax
    assert torch.allclose(g[0, ids[0]], dz, atol=1e-6)


def sampling(tok, **kw):
    """The scripted-model flags with the toy tokenizer's </think> id, plus overrides."""
    return {**SAMPLING, "think_end_id": tok.convert_tokens_to_ids("</think>"), **kw}


def rows_for(tok, n):
    return sofT_grpo.render_prompts(tok, sofT_grpo.toy_splits(sofT_grpo.Args(**TINY))[1][:n], 10**9)[0]


@pytest.mark.parametrize("noise", ["gumbel", "dirichlet", "gaussian"])
def test_kv_cache_rollout_matches_full_forward_on_rebuilt_inputs(sg, toy, monkeypatch, noise):
    """The log-prob under the rollout's own (KV-cache) logits at T = 0.6 equals the one recomputed by token_logprobs
    from the stored (ids, y) with one full forward; so do the logits (compared through the entropy)."""
    _, tok, model = toy
    seen, step = [], sg.soft_sample_step
    monkeypatch.setattr(sg, "soft_sample_step", lambda logits, *a, **k: seen.append(logits) or step(logits, *a, **k))
    torch.manual_seed(0)
    rows = rows_for(tok, 6)  # different prompt lengths: left padding and position ids are exercised
    stop = torch.tensor([tok.eos_token_id])
    kw = sampling(tok, noise=noise, temperature=0.6)
    first = sg.generate(model, tok, rows, len(rows), 24, stop, torch.Generator().manual_seed(0), **kw)
    kw["think_end_id"] = first["completion_ids"][0, 3].item()  # a token this barely trained model does emit
    seen.clear()
    batch = sg.generate(model, tok, rows, len(rows), 24, stop, torch.Generator().manual_seed(0), **kw)
    hard = ~batch["soft_mask"] & batch["completion_mask"].bool()
    assert batch["soft_mask"].any() and hard.any()  # both kinds of position are scored
    with torch.no_grad():
        logp, ent = sg.token_logprobs(model, batch, 0.6, noise, kw["tau_g"])
    z = torch.stack(seen, 1) / 0.6  # [B, T, V]: the logits each sampling step saw, at the rollout's temperature
    m = batch["completion_mask"].bool()
    ref = z.log_softmax(-1).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    soft = batch["soft_mask"]
    ref[soft] = sg.soft_log_density(z.gather(-1, batch["soft_ids"])[soft], batch["soft_y"][soft], noise)
    assert torch.allclose(logp[m], ref[m], atol=1e-4)
    assert torch.allclose(ent[m], -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)[m], atol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_chunked_logprobs_equal_the_full_log_softmax(sg, toy, monkeypatch, temperature):
    """token_logprobs in chunks of 5 positions equals the full log_softmax(...).gather(...) at hard positions and
    soft_log_density of the full logits' k stored entries at soft positions."""
    _, tok, model = toy
    monkeypatch.setattr(sg, "LOGPROB_CHUNK", 5)
    kw = sampling(tok, temperature=temperature)
    batch = sg.generate(model, tok, rows_for(tok, 4), 4, 12, torch.tensor([2]), torch.Generator().manual_seed(0), **kw)
    batch["soft_mask"][:, ::3] = False  # hard positions as well: their stored token is scored by the log-softmax
    seen = []
    hook = model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        logp, _ = sg.token_logprobs(model, batch, temperature)
        hook.remove()
        attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(inputs_embeds=seen[0], attention_mask=attn, position_ids=position_ids).logits
    T, soft = batch["completion_ids"].shape[1], batch["soft_mask"]
    full = logits[:, -(T + 1) : -1].float() / temperature  # [B, T, V]
    ref = full.log_softmax(-1).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    ref[soft] = sg.soft_log_density(full.gather(-1, batch["soft_ids"])[soft], batch["soft_y"][soft], "gumbel")
    assert T > 5 and soft.any() and (~soft).any()
    assert (logp - ref).abs().max() < 1e-6
    with torch.no_grad():  # the defaults are the paper's Gumbel noise and tau_g = 0.1
        assert torch.equal(sg.token_logprobs(model, batch, temperature, "gumbel", 0.1)[0], logp)


def test_one_hot_soft_inputs_give_the_discrete_logits(sg, toy):
    """Soft positions whose mixture is one-hot feed exactly E[token]: the logits equal discrete_grpo's path."""
    _, tok, model = toy
    rows = rows_for(tok, 3)
    batch = sg.generate(
        model, tok, rows, 3, 12, torch.tensor([tok.eos_token_id]), torch.Generator().manual_seed(0), **sampling(tok)
    )
    B, T, k = batch["soft_ids"].shape
    batch["soft_ids"][..., 0] = batch["completion_ids"]
    batch["soft_y"] = torch.tensor([0.0] + [-1e4] * (k - 1)).expand(B, T, k).clone()  # w = (1, 0, ..., 0)
    batch["soft_mask"] = torch.ones(B, T, dtype=torch.bool)
    with torch.no_grad():
        _, ent_soft = sg.token_logprobs(model, batch, 1.0)
        _, ent_disc = discrete_grpo.token_logprobs(model, batch, 1.0)
    assert torch.equal(ent_soft, ent_disc)


def test_first_minibatch_ratio_is_one_and_kl_zero(sg, toy):
    path, tok, model = toy
    batch = sg.generate(
        model,
        tok,
        rows_for(tok, 4),
        4,
        16,
        torch.tensor([tok.eos_token_id]),
        torch.Generator().manual_seed(0),
        **sampling(tok),
    )
    ref_model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        logp_old = sg.token_logprobs(model.train(), batch, 1.0)[0]
        logp_ref = sg.token_logprobs(ref_model, batch, 1.0)[0]
    logp, _ = sg.token_logprobs(model, batch, 1.0)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, st = sg.grpo_loss(logp, logp_old, logp_ref, adv, batch["completion_mask"], beta=0.001)
    assert (
        torch.equal(torch.exp(logp - logp_old), torch.ones_like(logp))
        and st["kl"] == 0
        and st["clip_ratio/region_mean"] == 0
    )
    loss.backward()
    assert (
        model.get_input_embeddings().weight.grad is not None
    )  # tied head: the embedding learns through the output side only
    model.zero_grad(set_to_none=True)
    model.eval()


def test_soft_inputs_are_detached(sg):
    """No pathwise gradient through the mixture embeddings: an untied input embedding gets no gradient."""
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=30,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=False,
        )
    )
    B, P, T, k = 2, 3, 4, 5
    batch = {
        "prompt_ids": torch.randint(0, 30, (B, P)),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(0, 30, (B, T)),
        "completion_mask": torch.ones(B, T, dtype=torch.long),
        "soft_ids": torch.stack([torch.randperm(30)[:k] for _ in range(B * T)]).view(B, T, k),
        "soft_y": torch.randn(B, T, k),
        "soft_mask": torch.tensor([[True, True, False, False], [True, False, True, False]]),
    }
    logp, _ = sg.token_logprobs(model, batch, 1.0)
    logp.sum().backward()
    assert model.get_input_embeddings().weight.grad is None
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_topk_topp_probs_against_brute_force(sg):
    torch.manual_seed(0)
    logits = torch.randn(6, 11) * 2
    for temperature, k, p in [(0.6, 5, 0.8), (1.0, 5, 0.95), (1.4, 3, 0.5), (0.7, 11, 1.0)]:
        pi, ids = sg.topk_topp_probs(logits, temperature, k, p)
        for b in range(6):
            probs = torch.softmax(logits[b].double() / temperature, 0).tolist()
            order = sorted(range(11), key=lambda i: -probs[i])[:k]
            top = [probs[i] / sum(probs[j] for j in order) for i in order]  # top-k renormalised
            kept = []
            for q in top:  # then the smallest prefix whose mass reaches p
                if sum(kept) >= p:
                    break
                kept.append(q)
            expected = [q / sum(kept) for q in kept] + [0.0] * (len(order) - len(kept))
            assert ids[b].tolist() == order
            assert torch.allclose(pi[b].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    pi, ids = sg.topk_topp_probs(logits, 0.0, 5, 0.95)  # T = 0: greedy, all the mass on the argmax
    assert torch.equal(ids[:, 0], logits.argmax(-1)) and (pi[:, 0] == 1).all() and (pi[:, 1:] == 0).all()
    pi, ids = sg.topk_topp_probs(torch.tensor([[5.0, 0, 0, 0, 0, 0]] * 2), 0.0, 5, 0.95)  # argmax id 0 < k
    assert pi.shape == (2, 5) and (ids[:, 0] == 0).all() and (pi[:, 0] == 1).all()
    seen, answering, embed = (
        torch.zeros(6, dtype=torch.bool),
        torch.zeros(2, dtype=torch.bool),
        torch.nn.Embedding(6, 2),
    )
    kw = dict(SAMPLING, think_end_id=99, answer_top_k=0, answer_top_p=1.0)  # answer top-k off, on a batch of 2 rows
    for seed in range(300):
        tok = sg.soft_sample_step(torch.zeros(2, 6), embed, torch.Generator().manual_seed(seed), answering, **kw)[0]
        seen[tok] = True
    assert seen.all()  # every id of the vocabulary can come out, not only the top-2 (the batch size)


@pytest.mark.parametrize("noise", ["dirichlet", "gaussian"])
def test_ablation_noises_have_their_laws(sg, noise):
    """Dirichlet: y_i ~ Gamma(pi_i, 1) (mean and variance pi_i); Gaussian: y_i ~ N(pi_i, 0.05^2)."""
    torch.manual_seed(0)  # the Gamma draw uses the global RNG
    n, logits = 20000, torch.tensor([[2.0, 1.5, 1.0, 0.3, -0.5, -3.0]])
    pi, top = sg.topk_topp_probs(logits, 1.0, 5, 1.0)
    embed, thinking = torch.nn.Embedding(6, 2), torch.ones(n, dtype=torch.bool)
    kw = dict(SAMPLING, think_end_id=99, top_p=1.0, answer_top_p=1.0, noise=noise)
    _, nxt, (ids, y, _) = sg.soft_sample_step(
        logits.repeat(n, 1), embed, torch.Generator().manual_seed(0), thinking, **kw
    )
    w = y / y.sum(-1, keepdim=True)  # the ablations mix with the renormalised sample
    torch.testing.assert_close(nxt, (w[..., None] * embed(ids)).sum(1), atol=1e-5, rtol=1e-5)
    for token, p in zip(top[0].tolist(), pi[0].tolist()):
        draws = y[ids == token].double()  # the sort by weight permutes the components: collect them by id
        assert len(draws) == n
        sd = math.sqrt(p) if noise == "dirichlet" else 0.05
        assert abs(draws.mean().item() - p) < 5 * sd / math.sqrt(n), (noise, token)
        assert abs(draws.std().item() / sd - 1) < 0.05, (noise, token)


def test_soft_step_stores_the_sorted_ids_and_the_perturbed_logits(sg):
    torch.manual_seed(0)
    B, V, k, T, p = 6, 12, 5, 0.7, 0.9
    logits, embed = torch.randn(B, V) * 2, torch.nn.Embedding(V, 4)
    thinking = torch.ones(B, dtype=torch.bool)
    gen = torch.Generator().manual_seed(3)
    tok, nxt, (ids, y, soft) = sg.soft_sample_step(
        logits, embed, gen, thinking, V + 1, T, k, p, k, p, 0.1, 1.0, "gumbel"
    )
    pi, top = sg.topk_topp_probs(logits, T, k, p)
    w32 = torch.softmax(y / 0.1, -1)  # the rollout's fp32 weights (tiny ones underflow to ties at 0)
    assert soft.all() and torch.equal(tok, ids[:, 0]) and (w32[:, :-1] >= w32[:, 1:]).all()  # sorted by weight
    draws = torch.empty(B, k).exponential_(generator=torch.Generator().manual_seed(3))  # the step's first draws
    noise = (-draws.log()).clamp(-1.5, 3.0)  # clamped standard Gumbel
    for b in range(B):
        assert sorted(ids[b].tolist()) == sorted(top[b].tolist())  # the top-k ids, permuted by the sort
        pi_of = dict(zip(top[b].tolist(), pi[b].tolist()))
        g = [yi - math.log(pi_of[i] + 1e-6) for i, yi in zip(ids[b].tolist(), y[b].tolist())]  # y = log(pi + 1e-6) + g
        assert torch.allclose(torch.tensor(sorted(g)), noise[b].sort().values, atol=1e-5)
    w = torch.softmax(y.double() / 0.1, -1)
    torch.testing.assert_close(nxt.double(), (w[..., None] * embed.weight[ids].double()).sum(1), atol=1e-6, rtol=0)


def test_thinking_to_answer_switch_from_a_scripted_model(sg):
    """soft_mask: True while a row thinks, False from the step that emits </think> (3) on; an EOS (2) emitted while
    thinking is a soft action; the input after </think> is exactly E[</think>]."""
    script = [[5, 6, 2, 7, 7, 7], [5, 3, 6, 6, 2, 8], [3, 2, 9, 9, 9, 9], [5, 5, 5, 5, 5, 2]]
    model = ScriptedModel(script, vocab=12)
    inputs = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: inputs.append(kwargs["inputs_embeds"]), with_kwargs=True)
    prompt_ids = torch.tensor([[0, 4], [4, 4], [4, 4], [0, 4]])
    out = sg.rollout(model, prompt_ids, (prompt_ids != 0).long(), 8, torch.tensor([2]), None, **SAMPLING)
    soft = out["soft_mask"].tolist()
    assert soft == [[True] * 6, [True] + [False] * 5, [False] * 6, [True] * 6]
    E = model.embed.weight
    assert torch.equal(inputs[2][1, 0], E[3]) and torch.equal(inputs[1][2, 0], E[3])  # one-hot E[</think>]
    assert torch.equal(out["soft_ids"][1, 1], torch.tensor([3, *out["soft_ids"][1, 1, 1:].tolist()]))


def test_temperature_0_is_greedy(sg, toy):
    """Greedy soft rollouts emit the parent's greedy tokens (the Gumbel-perturbed one-hot keeps its argmax)."""
    _, tok, model = toy
    rows = rows_for(tok, 5)
    stop = torch.tensor([tok.eos_token_id])
    soft = sg.generate(
        model, tok, rows, 5, 16, stop, torch.Generator().manual_seed(0), **sampling(tok, temperature=0.0)
    )
    hard = discrete_grpo.generate(model, tok, rows, 5, 16, stop, None, temperature=0.0, top_k=0, top_p=1.0)
    T = hard["completion_ids"].shape[1]
    assert torch.equal(soft["completion_ids"][:, :T], hard["completion_ids"])
    with torch.no_grad():
        greedy, at_one = sg.token_logprobs(model, soft, 0.0)[0], sg.token_logprobs(model, soft, 1.0)[0]
    assert torch.isfinite(greedy).all() and torch.equal(greedy, at_one)  # greedy rollouts are scored at T = 1


def test_each_eval_setting_runs_once(toy, tmp_path):
    path, _, _ = toy
    args = sofT_grpo.Args(model_name_or_path=path, eval_only=True, eval_problems=3, eval_samples=3, max_new_tokens=12)
    summary = sofT_grpo.main(sofT_grpo.replace(args, output_dir=str(tmp_path)))
    with open(os.path.join(summary["run_dir"], "eval_step0.json")) as f:
        record = json.load(f)
    assert record["settings"] == sofT_grpo.EVAL_SETTINGS and record["grader"] == "math-verify"
    for name in sofT_grpo.EVAL_SETTINGS:
        keys = {f"{name}/pass@{k}" for k in (1, 2, 3)} | {f"{name}/accuracy/{g}" for g in ("math-verify", "rule")}
        assert keys <= set(record) and all(0 <= record[key] <= 1 for key in keys), name
        assert record[f"{name}/pass@1"] == record[f"{name}/accuracy/math-verify"]


def test_bad_input_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        sofT_grpo.main(sofT_grpo.Args(top_k=0))
    assert e.value.code == 2 and "--top-k" in capsys.readouterr().err


def without_timings(summary):
    """A run summary less its wall-clock fields, which differ between identical runs."""
    kept = {}
    for key, value in summary.items():
        if not key.startswith("perf/") and key not in ("run_dir", "train_wall_time"):
            kept[key] = value
    return kept


def run_tiny(tmp_path, monkeypatch, out):
    # Rewards from a random tiny model are all 0 (no learning signal): reward an even-length completion instead
    monkeypatch.setattr(sofT_grpo, "math_reward", lambda text, answer: float(len(text) % 2 == 0))
    args = sofT_grpo.Args(
        **TINY,
        toy_cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / out),
        total_steps=2,
        prompts_per_step=4,
        mini_batch_prompts=2,
        group_size=4,
        micro_batch_size=4,
        max_new_tokens=16,
        eval_problems=2,
        eval_samples=2,
        eval_settings=("sofT-grpo",),
        learning_rate=1e-3,
        log_completions_every=1,
    )
    return args, sofT_grpo.main(args)


def test_a_few_sofT_grpo_steps_train_every_parameter_deterministically(tmp_path, monkeypatch):
    args, s1 = run_tiny(tmp_path, monkeypatch, "a")
    assert math.isfinite(s1["loss"]) and s1["soft/thinking_length"] > 0 and 0 < s1["soft/top1_weight"] <= 1
    base = AutoModelForCausalLM.from_pretrained(sofT_grpo.build_toy_base(args))
    final = AutoModelForCausalLM.from_pretrained(os.path.join(s1["run_dir"], "final"))
    decay = (1 - args.learning_rate * 0.01) ** (args.total_steps * args.prompts_per_step // args.mini_batch_prompts)
    for (name, p0), p1 in zip(base.named_parameters(), final.parameters()):
        assert not torch.allclose(p1, p0 * decay, rtol=0, atol=1e-6), f"{name} moved by weight decay only"
    _, s2 = run_tiny(tmp_path, monkeypatch, "b")
    assert weights_hash(os.path.join(s1["run_dir"], "final")) == weights_hash(os.path.join(s2["run_dir"], "final"))
    assert without_timings(s1) == without_timings(s2)


def test_a_top_p_emptied_slot_leaves_the_gumbel_density(sg):
    """Probabilities (0.6, 0.35, 0.05) with top-p 0.9: the sampler keeps two components and stores y = log(1e-6) + g
    in the third slot. As in the official sampler, whose slot holds a probability-0 id, the density is the mean of the
    Gumbel log-pdf over the two kept components, with q renormalised over them (0.05 would pass log q > -3)."""
    logits = torch.tensor([[0.6, 0.35, 0.05]]).log()
    pi, ids = sg.topk_topp_probs(logits, 1.0, 3, 0.9)
    assert torch.equal(ids, torch.tensor([[0, 1, 2]])) and pi[0, 2] == 0
    y = torch.log(pi + 1e-6) + torch.tensor([[0.3, -0.2, 1.0]])
    q = torch.tensor([0.6, 0.35]) / 0.95
    g = y[0, :2] - torch.log(q + 1e-6)
    expected = (-g - torch.exp(-g)).mean()
    assert torch.allclose(sg.soft_log_density(logits, y, "gumbel"), expected[None], atol=1e-6)
