"""Checks for the exercises of notebook 05 (decoding). Reference implementations live here or in
``utils.decoding``; a check compares the student's function with them on inputs the student has not seen."""

from __future__ import annotations

import math

import torch

from utils import review_world as rw
from utils.exercises import NotYet, exercise

ACTING_PROMPT = "the acting was"


def reference_min_p(probs: torch.Tensor, min_p: float) -> torch.Tensor:
    kept = torch.where(probs >= min_p * probs.max(), probs, torch.zeros_like(probs))
    return kept / kept.sum()


@exercise("05.1")
def check_min_p(min_p_filter):
    toy = torch.tensor([2.0, 1.6, 1.0, 0.8, 0.4, 0.2, -1.0, -2.0]).softmax(-1)  # section 1's distribution
    cases = [(toy, 0.25), (toy, 0.05), (toy, 0.9)]
    generator = torch.Generator().manual_seed(5)
    cases += [(torch.randn(50, generator=generator).mul(2).softmax(-1), m) for m in (0.1, 0.5)]
    for probs, min_p in cases:
        yours = torch.as_tensor(min_p_filter(probs.clone(), min_p), dtype=probs.dtype)
        if yours.shape != probs.shape:
            raise NotYet(f"return a distribution of the input's shape {tuple(probs.shape)}, got {tuple(yours.shape)}")
        if abs(yours.sum().item() - 1) > 1e-5:
            raise NotYet(f"with min_p = {min_p} your probabilities sum to {yours.sum().item():.4f}: renormalise")
        if not torch.allclose(yours, reference_min_p(probs, min_p), atol=1e-6):
            kept, expected = int((yours > 0).sum()), int((reference_min_p(probs, min_p) > 0).sum())
            raise NotYet(f"with min_p = {min_p} you keep {kept} of {len(probs)} tokens; {expected} should survive")


@exercise("05.2")
def check_truncation_to_greedy(decode):
    greedy = decode({"do_sample": False}, 0)
    if not isinstance(greedy, str):
        raise NotYet(f"decode should return the review as a string, got {type(greedy).__name__}")
    samples = {decode({"temperature": 1.0}, seed) for seed in (0, 1, 2)}
    if len(samples) == 1:
        raise NotYet("plain sampling gave the same review for seeds 0, 1 and 2: does decode pass the seed on?")
    for knobs in ({"top_k": 1}, {"top_p": 1e-6}):
        for seed in (0, 1, 2):
            if decode(knobs, seed) != greedy:
                raise NotYet(f"sampling with {knobs} and seed {seed} did not give the greedy review")


def exact_next_words(prompt_form: str = "was") -> dict[str, float]:
    """The review world's exact distribution of the word after "the ASPECT was": a degree word or an adjective."""
    config = rw.GrammarConfig()
    forms = dict(zip(rw.CLAUSE_FORMS, config.clause_form_probs))
    adjective, degree = forms[prompt_form], forms["degree"]
    exact = {w: degree / (adjective + degree) * weight / sum(x[1] for x in rw.DEGREES) for w, weight, _ in rw.DEGREES}
    for table in rw.ADJECTIVES.values():
        total = sum(x[1] for x in table)
        exact |= {w: adjective / (adjective + degree) * 0.5 * weight / total for w, weight, _ in table}
    return exact


@exercise("05.3")
def check_exact_distribution(distribution):
    exact = exact_next_words()
    if abs(sum(distribution.values()) - 1) > 1e-6:
        raise NotYet(f"your probabilities sum to {sum(distribution.values()):.4f}, not 1")
    missing, extra = set(exact) - set(distribution), {w for w, p in distribution.items() if p > 0} - set(exact)
    if missing or extra:
        raise NotYet(f"{len(missing)} possible next words are missing and {len(extra)} impossible ones have mass")
    worst = max(exact, key=lambda w: abs(distribution[w] - exact[w]))
    if abs(distribution[worst] - exact[worst]) > 1e-6:
        raise NotYet(f"P({worst!r}) = {distribution[worst]:.4f} is off: which clause forms can follow?")


@exercise("05.3b")
def check_kl(kl_divergence):
    generator = torch.Generator().manual_seed(3)
    p, q = torch.rand(30, generator=generator).softmax(-1), torch.rand(30, generator=generator).mul(3).softmax(-1)
    p_with_zeros = torch.where(torch.arange(30) % 3 == 0, 0.0, p)
    p_with_zeros = p_with_zeros / p_with_zeros.sum()
    for a, b in ((p, q), (q, p), (p_with_zeros, q)):
        yours = float(kl_divergence(a.clone(), b.clone()))
        expected = torch.special.xlogy(a, a / b).sum().item()  # 0 log 0 = 0
        if math.isnan(yours):
            raise NotYet("KL came out nan: a word with probability 0 under p contributes 0 (0 log 0 = 0)")
        if abs(yours - expected) > 1e-5:
            raise NotYet(f"KL(p || q) of a test pair is {expected:.4f}, you got {yours:.4f} (which one weights?)")


@exercise("05.4")
def check_largest_safe_top_p(largest_safe_top_p):
    def rows(fractions):
        return [
            {"temperature": 1.5, "top_p": p, "grammatical_fraction": f}
            for p, f in zip((0.5, 0.6, 0.7, 0.8, 0.9, 0.95), fractions)
        ]

    cases = [
        (rows([0.99, 0.97, 0.95, 0.91, 0.88, 0.80]), 0.8),
        (rows([0.98, 0.93, 0.89, 0.92, 0.86, 0.90]), 0.95),  # noise: not monotone, and 0.90 itself qualifies
        (rows([0.96, 0.89, 0.87, 0.85, 0.80, 0.70]), 0.5),
    ]
    for sweep, expected in cases:
        shuffled = sweep[::-1]  # the rows need not come sorted
        yours = largest_safe_top_p(shuffled)
        if yours != expected:
            fractions = [r["grammatical_fraction"] for r in sweep]
            raise NotYet(f"for grammatical fractions {fractions} at top_p 0.5..0.95 you chose {yours}")


def _tiny_model(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=10, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=1)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # peakier distributions: the beams disagree with greedy
    return model


@torch.no_grad()
def reference_beam_search(model, bos_id: int, eos_id: int, width: int, max_new_tokens: int):
    beams = [(0.0, [bos_id])]
    for _ in range(max_new_tokens):
        candidates = []
        for score, tokens in beams:
            if len(tokens) > 1 and tokens[-1] == eos_id:
                candidates.append((score, tokens))
                continue
            logprobs = torch.log_softmax(model(torch.tensor([tokens])).logits[0, -1], dim=-1)
            top = logprobs.topk(width)
            candidates += [(score + lp, tokens + [t]) for lp, t in zip(top.values.tolist(), top.indices.tolist())]
        beams = sorted(candidates, key=lambda c: c[0], reverse=True)[:width]
        if all(t[-1] == eos_id for _, t in beams):
            break
    return beams


@torch.no_grad()
def _log_prob(model, tokens) -> float:
    logprobs = torch.log_softmax(model(torch.tensor([tokens])).logits[0, :-1], dim=-1)
    return logprobs.gather(-1, torch.tensor(tokens[1:])[:, None]).sum().item()


@exercise("05.5")
def check_beam_search(beam_search):
    for seed in (0, 1):
        model = _tiny_model(seed)
        greedy = reference_beam_search(model, 0, 1, width=1, max_new_tokens=12)[0][1]
        score, tokens = beam_search(model, 0, 1, width=1, max_new_tokens=12)[0]
        if list(tokens) != greedy:
            raise NotYet("with width 1 the beam should be the greedy sequence (BOS included)")
        best_score, best_tokens = reference_beam_search(model, 0, 1, width=3, max_new_tokens=12)[0]
        score, tokens = beam_search(model, 0, 1, width=3, max_new_tokens=12)[0]
        if abs(score - _log_prob(model, list(tokens))) > 1e-4:
            raise NotYet("a beam's score should be the total log-probability of its tokens")
        if list(tokens) != best_tokens or abs(score - best_score) > 1e-4:
            raise NotYet("with width 3 your best beam is not the most likely of the kept sequences; best first?")


@exercise("05.6")
def check_explorer_settings(explorer):
    explorer.refresh()  # the panes as the sliders stand now
    if explorer.mode.value != "sample":
        raise NotYet("set the decoding mode to 'sample': greedy has no temperature")
    if explorer.temperature.value < 1.5:
        raise NotYet(f"the temperature is {explorer.temperature.value}; the exercise asks for 1.5 or more")
    kept = sum(processed > 0 for _, _, processed in explorer.table)
    if kept < 3:
        raise NotYet(f"only {kept} next token(s) keep any probability: that is nearly greedy, keep at least 3")
    broken = [t for t in explorer.texts if not rw.is_grammatical(t)]
    if broken:
        raise NotYet(f"{len(broken)} of the {len(explorer.texts)} samples are not grammatical (the ✗ rows)")
    if len(set(explorer.texts)) < len(explorer.texts):
        raise NotYet("some samples are identical: find settings that keep them all different")
