"""Decoding against hand computations and against transformers' own `model.generate` and logits warpers.

The key claim: with the same settings and `torch.manual_seed`, `utils.decoding.generate` returns exactly the
tokens `model.generate` returns (greedy, temperature, top-k, top-p, all three, left-padded batches, EOS),
and the processed logits it samples from are exactly transformers' `output_scores`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from utils.decoding import (
    GenerationOutput,
    SamplingConfig,
    apply_temperature,
    generate,
    generate_with_logprobs,
    next_token_distribution,
    process_logits,
    top_k_filter,
    top_p_filter,
)
from utils.seed import set_seed

VOCAB, PAD = 50, 0
INF = float("inf")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A 2-layer, 32-wide model is all per-op overhead; extra threads only contend (and the CI box has 2 cores).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_and_eos():
    """A tiny random GPT-2 (2 layers, 2 heads, width 32, vocab 50) whose EOS is its favourite token.

    initializer_range=0.2 (GPT-2 uses 0.02) spreads the logits (std ~1), so top-k/top-p cut real mass and
    EOS, chosen as the token with the highest average probability, actually ends sequences in the tests.
    """
    set_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=VOCAB,
        n_positions=64,
        initializer_range=0.2,
        bos_token_id=PAD,
        eos_token_id=PAD,
        pad_token_id=PAD,
    )
    model = GPT2LMHeadModel(config).eval()  # eval: dropout would change logits and consume RNG
    with torch.no_grad():
        probs = model(torch.randint(1, VOCAB, (8, 8))).logits.softmax(-1)  # (8, 8, V)
    eos = int(probs[..., 1:].mean(dim=(0, 1)).argmax()) + 1  # any token but PAD, so pads stay distinguishable
    model.generation_config.eos_token_id = eos
    model.generation_config.bos_token_id = eos
    return model, eos


def _prompts(eos: int, left_padded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A (3, 6) batch of prompts free of EOS and PAD; optionally left-padded to different lengths."""
    ids = torch.randint(1, VOCAB, (3, 6), generator=torch.Generator().manual_seed(1))
    ids[ids == eos] = eos % (VOCAB - 1) + 1  # a different non-PAD token
    if not left_padded:
        return ids, None
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # row 0: 3 real tokens
    mask[2, :1] = 0  # row 2: 5 real tokens; row 1 is unpadded
    return ids.masked_fill(mask == 0, PAD), mask


def _hf_generate(model, ids, mask, config: SamplingConfig, **extra):
    """`model.generate` with every knob set explicitly, so no default processor (top_k=50, ...) sneaks in."""
    generation_config = GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=config.do_sample,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_length=0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        renormalize_logits=False,
        remove_invalid_values=False,
    )
    return model.generate(ids, attention_mask=mask, generation_config=generation_config, **extra)


# ------------------------------------------------------------------------------------------ transforms


def test_apply_temperature_by_hand():
    logits = torch.tensor([1.0, 2.0, -3.0])
    torch.testing.assert_close(apply_temperature(logits, 2.0), torch.tensor([0.5, 1.0, -1.5]))
    torch.testing.assert_close(apply_temperature(logits, 0.5), torch.tensor([2.0, 4.0, -6.0]))
    # Softmax of the scaled logits: temperature 2 flattens, 0.5 sharpens the top probability.
    p1, p2, p05 = (F.softmax(apply_temperature(logits, t), -1)[1] for t in (1.0, 2.0, 0.5))
    assert p2 < p1 < p05


def test_top_k_filter_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5], [4.0, -1.0, 0.0, 2.0]])
    expected = torch.tensor([[-INF, 3.0, 2.0, -INF], [4.0, -INF, -INF, 2.0]])
    torch.testing.assert_close(top_k_filter(logits, 2), expected)
    assert torch.equal(top_k_filter(logits, 0), logits)  # 0 disables
    assert torch.equal(top_k_filter(logits, 10), logits)  # k > V keeps everything
    # Ties with the k-th value are all kept, as in transformers.
    tied = torch.tensor([1.0, 2.0, 2.0, 0.0])
    torch.testing.assert_close(top_k_filter(tied, 1), torch.tensor([-INF, 2.0, 2.0, -INF]))


def test_top_p_filter_by_hand():
    # Probabilities 0.15, 0.5, 0.05, 0.3 (deliberately unsorted); logits = log-probabilities.
    logits = torch.tensor([0.15, 0.5, 0.05, 0.3]).log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).tolist()  # noqa: E731
    assert kept(0.4) == [False, True, False, False]  # 0.5 alone reaches 0.4
    assert kept(0.75) == [False, True, False, True]  # 0.5 + 0.3 = 0.8 >= 0.75
    assert kept(0.9) == [True, True, False, True]  # 0.95 >= 0.9
    assert kept(0.99) == [True, True, True, True]
    assert kept(1e-6) == [False, True, False, False]  # the top token always survives
    assert torch.equal(top_p_filter(logits, 1.0), logits)  # 1 disables
    # Exactly at the boundary (all sums exact in float): two of four equal tokens hold exactly p = 0.5,
    # so the smallest nucleus has two tokens, not three.
    assert int(torch.isfinite(top_p_filter(torch.zeros(4), 0.5)).sum()) == 2
    # Kept logits are untouched, and each row of a batch gets its own nucleus.
    batch = torch.stack([logits, logits.flip(0)])
    out = top_p_filter(batch, 0.75)
    torch.testing.assert_close(out[0], torch.tensor([-INF, logits[1], -INF, logits[3]]))
    torch.testing.assert_close(out[1], torch.tensor([logits[3], -INF, logits[1], -INF]))


@pytest.mark.parametrize("top_k", [1, 3, 10, 50, 80])
@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.8, 0.95])
def test_filters_match_transformers_warpers(top_k, top_p):
    logits = torch.randn(4, VOCAB) * 2
    torch.testing.assert_close(top_k_filter(logits, top_k), TopKLogitsWarper(top_k)(None, logits), rtol=0, atol=0)
    torch.testing.assert_close(top_p_filter(logits, top_p), TopPLogitsWarper(top_p)(None, logits), rtol=0, atol=0)


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.7), (0.6, 8, 0.9), (1.8, 20, 0.5)]
)
def test_process_logits_matches_transformers_chain(temperature, top_k, top_p):
    # Order matters (temperature changes which tokens fall inside the nucleus), so compare with the chain.
    chain = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        chain.append(TopKLogitsWarper(top_k))
    chain.append(TopPLogitsWarper(top_p))
    logits = torch.randn(4, VOCAB) * 2
    expected = chain(None, logits)
    torch.testing.assert_close(process_logits(logits, temperature, top_k, top_p), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: apply_temperature(torch.zeros(3), 0.0), "temperature must be a finite number > 0, got 0.0"),
        (lambda: apply_temperature(torch.zeros(3), -1.0), "temperature must be a finite number > 0, got -1.0"),
        (lambda: apply_temperature(torch.zeros(3), math.inf), "temperature must be a finite number > 0, got inf"),
        (lambda: top_k_filter(torch.zeros(3), -1), "top_k must be an int >= 0"),
        (lambda: top_k_filter(torch.zeros(3), 2.5), "top_k must be an int >= 0"),
        (lambda: top_p_filter(torch.zeros(3), 0.0), r"top_p must be a finite number in \(0, 1\]"),
        (lambda: top_p_filter(torch.zeros(3), 1.5), r"top_p must be a finite number in \(0, 1\]"),
        (lambda: SamplingConfig(temperature=0), "SamplingConfig.temperature must be a finite number > 0, got 0"),
        (lambda: SamplingConfig(temperature=math.inf), "SamplingConfig.temperature must be a finite number > 0"),
        (lambda: SamplingConfig(top_k=-3), "SamplingConfig.top_k must be an int >= 0"),
        (lambda: SamplingConfig(top_p=-0.1), r"SamplingConfig.top_p must be a finite number in \(0, 1\]"),
        (lambda: SamplingConfig(max_new_tokens=0), "max_new_tokens must be an int >= 1"),
        (lambda: SamplingConfig(do_sample="yes"), "do_sample must be a bool"),
        (lambda: SamplingConfig(eos_token_id=-1), "eos_token_id must be None or an int >= 0"),
        (lambda: SamplingConfig(pad_token_id=1.0), "pad_token_id must be None or an int >= 0"),
    ],
)
def test_bad_values_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_pad_defaults_to_eos():
    assert SamplingConfig(eos_token_id=7).pad_token_id == 7
    assert SamplingConfig(eos_token_id=7, pad_token_id=3).pad_token_id == 3


# ------------------------------------------------------------------------------------------ generation vs HF

MODES = {
    "greedy": dict(do_sample=False),
    "temperature": dict(temperature=0.7),
    "hot": dict(temperature=1.5),
    "top_k": dict(top_k=5),
    "top_p": dict(top_p=0.8),
    "combined": dict(temperature=0.8, top_k=10, top_p=0.9),
}


@pytest.mark.parametrize("left_padded", [False, True], ids=["unpadded", "left_padded"])
@pytest.mark.parametrize("mode", list(MODES))
def test_generate_matches_transformers(model_and_eos, mode, left_padded):
    model, eos = model_and_eos
    ids, mask = _prompts(eos, left_padded)
    config = SamplingConfig(max_new_tokens=16, eos_token_id=eos, pad_token_id=PAD, **MODES[mode])
    for seed in (0, 1):
        torch.manual_seed(seed)
        ours = generate_with_logprobs(model, ids, mask, config, output_scores=True)
        torch.manual_seed(seed)
        theirs = _hf_generate(model, ids, mask, config, return_dict_in_generate=True, output_scores=True)

        assert torch.equal(ours.sequences, theirs.sequences), f"seed {seed}"
        hf_scores = torch.stack(theirs.scores, dim=1)  # (B, N, V) processed logits
        torch.testing.assert_close(ours.scores, hf_scores, rtol=0, atol=0)
        hf_logprobs = model.compute_transition_scores(theirs.sequences, theirs.scores, normalize_logits=True)
        real = ours.completion_mask
        torch.testing.assert_close(ours.logprobs[real], hf_logprobs[real], rtol=1e-5, atol=1e-5)
    torch.manual_seed(seed)
    assert torch.equal(generate(model, ids, mask, config), ours.sequences)  # the plain entry point agrees


def test_eos_stops_early_and_pads_like_transformers(model_and_eos):
    """Search a few seeds for a batch where every row ends before max_new_tokens, then check the EOS rules."""
    model, eos = model_and_eos
    ids, mask = _prompts(eos, left_padded=True)
    config = SamplingConfig(max_new_tokens=24, temperature=0.7, eos_token_id=eos, pad_token_id=PAD)
    for seed in range(30):
        torch.manual_seed(seed)
        out = generate_with_logprobs(model, ids, mask, config)
        if out.sequences.size(1) < ids.size(1) + config.max_new_tokens:
            break
    else:
        pytest.fail("no seed made every row emit EOS; the EOS path went untested")
    torch.manual_seed(seed)
    assert torch.equal(out.sequences, _hf_generate(model, ids, mask, config))

    new = out.sequences[:, ids.size(1) :]  # (B, N)
    eos_step = (new == eos).int().argmax(dim=1)  # first EOS of each row
    steps = torch.arange(new.size(1))
    assert (new == eos).any(dim=1).all()  # it stopped because every row finished...
    assert int(eos_step.max()) == new.size(1) - 1  # ...and not one step later
    after_eos = steps[None] > eos_step[:, None]  # (B, N)
    assert (new[after_eos] == PAD).all()
    assert torch.equal(out.completion_mask, ~after_eos)
    assert (out.logprobs[after_eos] == 0).all() and (out.logprobs[~after_eos] < 0).all()


def test_kv_cache_feeds_the_prompt_once_then_one_token_per_step(model_and_eos):
    model, eos = model_and_eos
    ids, mask = _prompts(eos, left_padded=True)
    seen_lengths = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen_lengths.append(kwargs["input_ids"].size(1)), with_kwargs=True
    )
    try:
        out = generate(model, ids, mask, SamplingConfig(max_new_tokens=5, do_sample=False))
    finally:
        hook.remove()
    assert seen_lengths == [ids.size(1), 1, 1, 1, 1]
    assert out.shape == (3, ids.size(1) + 5)


def test_left_padding_does_not_change_a_row(model_and_eos):
    model, eos = model_and_eos
    ids, mask = _prompts(eos, left_padded=True)
    config = SamplingConfig(max_new_tokens=8, do_sample=False)
    padded = generate(model, ids, mask, config)
    alone = generate(model, ids[:1, 3:], None, config)  # row 0 without its 3 pads
    assert torch.equal(padded[0, 3:], alone[0])
    torch.testing.assert_close(
        next_token_distribution(model, ids, attention_mask=mask)[0],
        next_token_distribution(model, ids[0, 3:]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_greedy_logprobs_are_the_plain_softmax(model_and_eos):
    model, eos = model_and_eos
    ids, _ = _prompts(eos, left_padded=False)
    config = SamplingConfig(max_new_tokens=4, do_sample=False)
    out = generate_with_logprobs(model, ids, config=config, output_scores=True)
    with torch.no_grad():
        logits = model(out.sequences).logits[:, ids.size(1) - 1 : -1]  # (B, N, V) logits that chose each new token
    torch.testing.assert_close(out.scores, logits, rtol=1e-5, atol=1e-5)  # cached decoding = full recompute
    expected = F.log_softmax(logits, -1).gather(-1, out.sequences[:, ids.size(1) :, None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs, expected, rtol=1e-5, atol=1e-5)


def test_generator_is_reproducible_and_leaves_global_rng_alone(model_and_eos):
    model, eos = model_and_eos
    ids, mask = _prompts(eos, left_padded=True)
    config = SamplingConfig(max_new_tokens=12)
    state = torch.get_rng_state()
    a = generate(model, ids, mask, config, generator=torch.Generator().manual_seed(5))
    b = generate(model, ids, mask, config, generator=torch.Generator().manual_seed(5))
    c = generate(model, ids, mask, config, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_outputs_can_feed_a_training_forward(model_and_eos):
    # no_grad rather than inference_mode: PPO embeds these ids again with autograd on.
    model, eos = model_and_eos
    ids, mask = _prompts(eos, left_padded=False)
    out = generate_with_logprobs(model, ids, config=SamplingConfig(max_new_tokens=3))
    assert isinstance(out, GenerationOutput) and not out.sequences.is_inference()
    logprobs = F.log_softmax(model(out.sequences).logits, -1)
    (logprobs.mean() - out.logprobs.mean()).backward()
    assert model.transformer.wte.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_generate_rejects_bad_inputs(model_and_eos):
    model, _ = model_and_eos
    ids = torch.ones(2, 4, dtype=torch.long)
    right_padded = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with pytest.raises(ValueError, match="pad prompts on the LEFT"):
        generate(model, ids, right_padded)
    with pytest.raises(ValueError, match="max_position_embeddings 64"):
        generate(model, ids, config=SamplingConfig(max_new_tokens=61))
    with pytest.raises(ValueError, match=r"input_ids must be a \(B, T\) LongTensor"):
        generate(model, ids.float())
    with pytest.raises(ValueError, match="config must be a SamplingConfig"):
        generate(model, ids, config={"max_new_tokens": 3})


# ------------------------------------------------------------------------------------------ distribution widget


def test_next_token_distribution(model_and_eos):
    model, eos = model_and_eos
    ids, _ = _prompts(eos, left_padded=False)
    with torch.no_grad():
        last_logits = model(ids).logits[:, -1]  # (B, V)
    probs = next_token_distribution(model, ids, temperature=0.5, top_k=7, top_p=0.9)
    assert probs.shape == (3, VOCAB)
    torch.testing.assert_close(probs, F.softmax(process_logits(last_logits, 0.5, 7, 0.9), -1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert ((probs > 0).sum(-1) <= 7).all()
    plain = next_token_distribution(model, ids[1])  # (T,) in, (V,) out, no transforms
    assert plain.shape == (VOCAB,)
    torch.testing.assert_close(plain, F.softmax(last_logits[1], -1))
    nucleus_of_one = next_token_distribution(model, ids[1], top_p=1e-9)  # only the top token survives
    assert float(nucleus_of_one.max()) == 1.0 and int(nucleus_of_one.argmax()) == int(plain.argmax())
