"""Exposure-bias measurement: the source read as a language model against the review world's exact log-probability
and grammar, the per-position averages against a tiny hand-made world computed by hand, the neural scorer and
sampler against transformers and utils.decoding."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
import torch

from utils import review_world as rw
from utils.decoding import SamplingConfig, generate, next_token_distribution
from utils.exposure_bias import (
    END,
    CausalLMScorer,
    ExposureBiasConfig,
    ReviewSourceLM,
    exposure_profile,
    position_profile,
    sample_sequences,
)
from utils.language_model import LMConfig, build_model, collate, encode_reviews, sequence_nll
from utils.tokenizer import train_bpe


@pytest.fixture(scope="module")
def tokenizer():
    """A BPE trained on 2,000 reviews: enough merges for one token per word, as the course tokenizer has."""
    return train_bpe([r["text"] for r in rw.lm_corpus(2000, seed=0)], vocab_size=1024)


@pytest.fixture(scope="module")
def source(tokenizer):
    return ReviewSourceLM(tokenizer)


@pytest.fixture(scope="module")
def reviews():
    return rw.lm_corpus(300, seed=11)


def log_prob_of(model, sequence: list[int]) -> float:
    """Sum of log p(x_{t+1} | x_<=t) over a sequence, from the model's rows."""
    (rows,) = model.next_token_probs([sequence])
    return sum(math.log(rows[t, sequence[t + 1]].item()) for t in range(len(sequence) - 1))


# ------------------------------------------------------------------------------------------------
# The source as a language model
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "grammar",
    [
        rw.GrammarConfig(),
        rw.GrammarConfig(connective_agreement_prob=0.5, closing_prob=0.7, sentence_count_probs=(0.1, 0.2, 0.3, 0.4)),
    ],
    ids=["course", "other"],
)
def test_source_chain_rule_equals_the_exact_log_probability(tokenizer, grammar):
    """Multiplied along a review, the conditional next-token probabilities give its exact probability."""
    source = ReviewSourceLM(tokenizer, grammar)
    rows = rw.lm_corpus(300, seed=5, config=grammar)
    sequences = encode_reviews([r["text"] for r in rows], tokenizer)
    for row, sequence in zip(rows, sequences):
        assert log_prob_of(source, sequence) == pytest.approx(row["log_prob"], abs=1e-9)
        assert rw.log_prob(row["text"], grammar) == pytest.approx(row["log_prob"], abs=1e-9)
    for p in source.next_token_probs(sequences[:50]):
        torch.testing.assert_close(p.sum(dim=1), torch.ones(len(p), dtype=torch.float64), rtol=0, atol=1e-12)


def test_source_next_words_by_hand(source):
    g = rw.GrammarConfig()
    p_although = g.sentence_form_probs[3]
    verb = g.clause_form_probs[3]
    first = source.next_word_probs([])
    assert first == pytest.approx(
        {"although": p_although, "i": (1 - p_although) * verb, "the": (1 - p_although) * (1 - verb)}
    )
    # After "the acting was great, but the plot was": a degree word with P(degree) / P(was or degree), otherwise
    # a negative adjective with 0.9 (the connective), a positive one with 0.1, each split by the lexicon weights.
    after = source.next_word_probs("the acting was great , but the plot was".split())
    p_degree = g.clause_form_probs[2] / (g.clause_form_probs[0] + g.clause_form_probs[2])
    negative_weight = sum(w for _, w, _ in rw.ADJECTIVES[-1])
    assert after["very"] == pytest.approx(p_degree * 2.0 / 6.0)  # DEGREES weights 2, 1.5, 1.5, 1
    assert after["boring"] == pytest.approx((1 - p_degree) * 0.9 * 2.5 / negative_weight)
    assert sum(after.values()) == pytest.approx(1.0)
    # A full review may end, or go on with another sentence or its verdict.
    end = source.next_word_probs("the acting was great .".split())
    more = sum(g.sentence_count_probs[1:]) / 1.0
    assert end[END] == pytest.approx((1 - more) * (1 - g.closing_prob))
    assert end["overall"] == pytest.approx((1 - more) * g.closing_prob * g.closing_film_prob)
    assert source.next_word_probs("the the".split()) == {}


def test_source_support_is_the_grammar(tokenizer, source, reviews):
    """A sequence is one the source can write (every token, EOS included) exactly when the grammar accepts its text."""
    rng = random.Random(3)
    texts = [r["text"] for r in reviews[:150]]
    texts += [rw.break_completion("", text, rng, kinds=(kind,)).strip() for text in texts for kind in ("cut", "pad")]
    texts += [rw.break_completion("", text, rng).strip() for text in texts[:150]]
    sequences = encode_reviews(texts, tokenizer)
    accepted = [
        bool(all(p[t, s[t + 1]] > 0 for t in range(len(s) - 1)))
        for s, p in zip(sequences, source.next_token_probs(sequences))
    ]
    grammatical = [rw.is_grammatical(text) for text in texts]
    assert accepted == grammatical
    assert sum(grammatical) >= 150 and sum(not g for g in grammatical) >= 300  # both kinds were really tested


def test_source_gives_zero_rows_once_the_prefix_is_impossible(tokenizer, source):
    good = tokenizer("the acting was great.")["input_ids"] + [tokenizer.eos_token_id]
    not_canonical = tokenizer("the acting was")["input_ids"] + tokenizer(" g", add_special_tokens=False)["input_ids"]
    second_review = good + tokenizer("the", add_special_tokens=False)["input_ids"]
    p_good, p_split, p_after_end = source.next_token_probs([good, not_canonical, second_review])
    assert (p_good.sum(dim=1) > 0).all()
    assert p_split[-1, not_canonical[-1]] == 0  # " g" is not how the source spells the start of "good"
    assert p_after_end[-1].sum() == 0  # nothing follows a review's EOS


def test_source_needs_one_token_per_word():
    small = train_bpe([r["text"] for r in rw.lm_corpus(200, seed=0)], vocab_size=270)
    with pytest.raises(ValueError, match="one token per word"):
        ReviewSourceLM(small)


def test_source_samples_are_its_reviews(tokenizer):
    grammar = rw.GrammarConfig(connective_agreement_prob=0.5)
    sampled = ReviewSourceLM(tokenizer, grammar).sample(20, seed=4)
    generator = rw.ReviewGenerator(grammar, 4)
    assert sampled == encode_reviews([generator.sample() for _ in range(20)], tokenizer)


# ------------------------------------------------------------------------------------------------
# Per-position averages, by hand
# ------------------------------------------------------------------------------------------------
class MarkovModel:
    """A hand-made model on tokens {0: BOS/EOS, 1: a, 2: b, 3: x}: the next-token row depends on the last token;
    a row of zeros after a prefix that contains a token listed in ``dead_after``, or after a second EOS."""

    def __init__(self, rows: dict[int, list[float]], dead_after: set[int]):
        self.rows, self.dead_after = rows, dead_after

    def next_token_probs(self, sequences):
        out = []
        for sequence in sequences:
            rows = torch.zeros(len(sequence) - 1, 4, dtype=torch.float64)
            for t in range(len(sequence) - 1):
                prefix = sequence[: t + 1]
                if any(token in self.dead_after for token in prefix[1:]):
                    break
                rows[t] = torch.tensor(self.rows[prefix[-1]], dtype=torch.float64)
            out.append(rows)
        return out


# Source: "a", then "a" or the end with 1/2 each; never "b" or "x".
HAND_SOURCE = MarkovModel({0: [0, 1, 0, 0], 1: [0.5, 0.5, 0, 0]}, dead_after={2, 3})
# Model: 0.2 of its mass on forbidden tokens everywhere, 0.1 of it on "b".
HAND_MODEL = MarkovModel({0: [0, 0.8, 0.1, 0.1], 1: [0.4, 0.4, 0.2, 0], 2: [0.5, 0.5, 0, 0], 3: [1, 0, 0, 0]}, set())
KL_START = math.log(1 / 0.8)  # KL((0, 1, 0, 0) || (0, .8, .1, .1))
KL_AFTER_A = 2 * 0.5 * math.log(0.5 / 0.4)  # KL((.5, .5, 0, 0) || (.4, .4, .2, 0))


def test_position_profile_of_real_texts_by_hand():
    texts = [[0, 1, 0], [0, 1, 1, 0]]  # "a", "a a"
    profile = position_profile(HAND_SOURCE, HAND_MODEL, texts, positions=4, batch_size=1)
    assert profile.live.tolist() == [2, 2, 1, 0]
    torch.testing.assert_close(profile.kl[:3], torch.tensor([KL_START, KL_AFTER_A, KL_AFTER_A], dtype=torch.float64))
    torch.testing.assert_close(profile.slip[:3], torch.full((3,), 0.2, dtype=torch.float64))
    assert math.isnan(profile.kl[3]) and math.isnan(profile.slip[3])
    assert profile.broken.tolist() == [0, 0, 0, 0]
    assert profile.kl_per_sequence == pytest.approx((2 * KL_START + 3 * KL_AFTER_A) / 2)
    assert profile.window_mean("kl", 1, 4) == pytest.approx((2 * KL_START + 3 * KL_AFTER_A) / 5)  # 5 prefixes
    assert profile.window_mean("kl", 2, 3) == pytest.approx(KL_AFTER_A)
    assert profile.window_mean("slip", 1, 2) == pytest.approx(0.2)


def test_position_profile_of_own_samples_by_hand():
    samples = [[0, 1, 2, 0], [0, 3, 1, 0], [0, 1, 0]]  # slips "b" at token 2 and "x" at token 1
    profile = position_profile(HAND_SOURCE, HAND_MODEL, samples, positions=4, batch_size=2)
    assert profile.live.tolist() == [3, 2, 0, 0]  # a prefix with a slip in it is no longer averaged
    torch.testing.assert_close(profile.kl[:2], torch.tensor([KL_START, KL_AFTER_A], dtype=torch.float64))
    torch.testing.assert_close(profile.slip[:2], torch.full((2,), 0.2, dtype=torch.float64))
    torch.testing.assert_close(profile.broken, torch.tensor([1 / 3, 2 / 3, 2 / 3, 2 / 3], dtype=torch.float64))
    assert profile.kl_per_sequence == pytest.approx((3 * KL_START + 2 * KL_AFTER_A) / 3)


def test_broken_share_expected_and_forecast_by_hand():
    """Own prefixes that start with "b" slip three times as often as real ones (which start with "a"): exposure
    bias, which the forecast from teacher forcing's rates misses and the expectation from own prefixes finds."""
    source = MarkovModel({0: [0, 0.5, 0.5, 0], 1: [0.5, 0.25, 0.25, 0], 2: [0.5, 0.25, 0.25, 0]}, dead_after={3})
    model = MarkovModel(
        {0: [0, 0.45, 0.45, 0.1], 1: [0.5, 0.2, 0.2, 0.1], 2: [0.4, 0.15, 0.15, 0.3], 3: [1, 0, 0, 0]}, set()
    )
    texts, samples = [[0, 1, 0], [0, 1, 1, 0]], [[0, 2, 0], [0, 2, 2, 0], [0, 3, 0]]
    config = ExposureBiasConfig(n_sequences=3, positions=4)
    profile = exposure_profile(source, model, texts, samples, config)
    torch.testing.assert_close(profile.teacher_forced.slip[:3], torch.full((3,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(profile.free_running.slip[:3], torch.tensor([0.1, 0.3, 0.3], dtype=torch.float64))
    assert profile.free_running.live.tolist() == [3, 2, 1, 0]
    # Breaks by token t: sum over s <= t of (live own prefixes at s) / 3 * slip rate at s.
    torch.testing.assert_close(profile.expected_broken, torch.tensor([0.1, 0.3, 0.4, 0.4], dtype=torch.float64))
    forecast = torch.tensor([0.1, 0.1 + 0.2 / 3, 0.1 + 0.3 / 3, 0.1 + 0.3 / 3], dtype=torch.float64)
    torch.testing.assert_close(profile.forecast_broken, forecast)
    torch.testing.assert_close(profile.free_running.broken, torch.full((4,), 1 / 3, dtype=torch.float64))


def test_a_zero_where_the_source_writes_is_an_infinite_kl():
    blind = MarkovModel({0: [0, 1, 0, 0], 1: [1, 0, 0, 0]}, set())  # never writes a second "a"
    profile = position_profile(HAND_SOURCE, blind, [[0, 1, 0]], positions=2)
    assert profile.kl[0] == 0 and profile.kl[1] == math.inf


def test_position_profile_needs_sequences():
    with pytest.raises(ValueError, match="at least one"):
        position_profile(HAND_SOURCE, HAND_MODEL, [], positions=2)


# ------------------------------------------------------------------------------------------------
# References where the answer is known
# ------------------------------------------------------------------------------------------------
def test_the_source_scored_as_a_model_shows_no_gap(source, tokenizer, reviews):
    config = ExposureBiasConfig(n_sequences=150, positions=30)
    true = encode_reviews([r["text"] for r in reviews], tokenizer)
    profile = exposure_profile(source, source, true, source.sample(150, seed=9), config)
    for side in (profile.teacher_forced, profile.free_running):
        assert side.kl_per_sequence == pytest.approx(0.0, abs=1e-12)
        lived = side.live > 0
        assert lived[:20].all()
        assert side.kl[lived].abs().max() < 1e-12 and side.slip[lived].abs().max() < 1e-12
        assert (side.broken == 0).all()


def connective_kl_by_hand(text: str, per_sentence: float) -> float:
    """The summed per-position KL between the source and a copy that flips a coin for the second clause's polarity.

    The polarity shows at the second clause's adjective or verb; in a "was" clause it shows partly one token
    earlier: after "was" comes a degree word (same for both: no polarity yet) or directly the adjective, so that
    row carries (1 - P(degree)) of the KL, and after a degree word the adjective's row carries all of it again.
    """
    g = rw.GrammarConfig()
    degree_share = g.clause_form_probs[2] / (g.clause_form_probs[0] + g.clause_form_probs[2])
    degrees = {word for word, *_ in rw.DEGREES}
    total = 0.0
    for sentence in " ".join(rw.split_words(text)).split(" ."):
        words = sentence.split()
        if not words or words[0] == "overall" or words[:2] == ["i", "would"]:
            continue  # no sentence, or the verdict
        if "and" in words or "but" in words:
            second = words[words.index("and" if "and" in words else "but") + 1 :]
        elif words[0] == "although":
            second = words[words.index(",") + 1 :]
        else:
            continue  # one clause: the connective rule does not apply
        if second[0] == "i" or second[2] == "felt":
            total += 1
        else:
            total += (1 - degree_share) + (second[3] in degrees)
    return total * per_sentence


def test_a_source_that_ignores_the_connective_pays_its_kl_where_the_polarity_shows(source, tokenizer, reviews):
    """A coin flip for the second clause's polarity costs KL(Bern(0.9) || Bern(0.5)) per two-clause sentence in
    expectation, and nothing anywhere else: review by review as computed by hand, on the source's reviews and on
    the coin-flipper's own samples alike (an imperfect model without exposure bias)."""
    agree = rw.GrammarConfig().connective_agreement_prob
    coin = ReviewSourceLM(tokenizer, rw.GrammarConfig(connective_agreement_prob=0.5))
    per_sentence = agree * math.log(agree / 0.5) + (1 - agree) * math.log((1 - agree) / 0.5)
    for sequences in (encode_reviews([r["text"] for r in reviews[:100]], tokenizer), coin.sample(100, seed=2)):
        profile = position_profile(source, coin, sequences, positions=70)
        assert profile.slip[profile.live > 0].max() < 1e-12  # every token it writes is one the source writes
        by_hand = [connective_kl_by_hand(tokenizer.decode(s[1:-1]), per_sentence) for s in sequences]
        assert profile.kl_per_sequence == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-9)
        for sequence, expected in zip(sequences, by_hand):
            assert position_profile(source, coin, [sequence], 70).kl_per_sequence == pytest.approx(expected, abs=1e-9)
    # In expectation, KL(Bern(0.9) || Bern(0.5)) per two-clause sentence: 0.55 of E[sentences] = 2.15.
    expected_total = (1 - rw.GrammarConfig().sentence_form_probs[0]) * 2.15 * per_sentence
    many = position_profile(source, coin, coin.sample(1500, seed=8), positions=70)
    assert many.kl_per_sequence == pytest.approx(expected_total, rel=0.05)


# ------------------------------------------------------------------------------------------------
# A neural model: scored and sampled
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    """A tiny untrained GPT-2 (1 block of width 16): the arithmetic does not need a trained one."""
    return build_model(LMConfig(n_layer=1, n_head=2, n_embd=16), tokenizer, seed=0).eval()


def test_scorer_rows_are_the_models_next_token_distributions(tiny_model, tokenizer, reviews):
    sequences = encode_reviews([r["text"] for r in reviews[:6]], tokenizer)
    rows = CausalLMScorer(tiny_model, tokenizer.pad_token_id).next_token_probs(sequences)
    nll = sequence_nll(tiny_model, collate(sequences, tokenizer.pad_token_id))  # (B,) reference, padded batch
    for sequence, p, reference in zip(sequences, rows, nll):
        assert p.shape == (len(sequence) - 1, len(tokenizer))
        picked = p[torch.arange(len(sequence) - 1), torch.tensor(sequence[1:])]
        assert -picked.log().sum().item() == pytest.approx(reference.item(), rel=1e-5)
    hot = CausalLMScorer(tiny_model, tokenizer.pad_token_id, temperature=1.7).next_token_probs(sequences[:1])[0]
    prefix = torch.tensor(sequences[0][:5])
    expected = next_token_distribution(tiny_model, prefix, temperature=1.7).double()  # row 4 predicts token 5
    torch.testing.assert_close(hot[4], expected, rtol=1e-5, atol=1e-7)


def test_sample_sequences_stop_at_their_first_eos(tiny_model, tokenizer):
    config = ExposureBiasConfig(n_sequences=200, max_new_tokens=20, temperature=1.3, seed=5)
    samples = sample_sequences(tiny_model, tokenizer, config)
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    sampling = SamplingConfig(max_new_tokens=20, temperature=1.3, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    reference = generate(
        tiny_model, torch.full((200, 1), bos), config=sampling, generator=torch.Generator().manual_seed(5)
    ).tolist()
    assert len(samples) == 200 and samples == sample_sequences(tiny_model, tokenizer, config)
    ended = 0
    for sample, row in zip(samples, reference):
        assert sample[0] == bos and sample == row[: len(sample)]
        assert eos not in sample[1:-1] and 2 <= len(sample) <= 21
        ended += sample[-1] == eos
        if sample[-1] != eos:
            assert len(sample) == 21  # only a sample that never ended runs the whole budget
    assert 0 < ended < 200  # an untrained model over about 500 tokens: a few end within 20 tokens, most do not
    assert sample_sequences(tiny_model, tokenizer, replace(config, seed=6)) != samples


def test_config_is_validated():
    for bad in ({"n_sequences": 0}, {"positions": -1}, {"temperature": 0.0}, {"seed": -2}, {"batch_size": 1.5}):
        with pytest.raises(ValueError, match="ExposureBiasConfig"):
            ExposureBiasConfig(**bad)
