"""Exposure bias: how a teacher-forced language model fares on its own prefixes, measured against the truth.

A causal LM is trained with *teacher forcing*: every prediction conditions on a prefix of a real text. When it
generates, it conditions on its own samples instead, prefixes it may never have seen in training, and a slip
early on changes every later context (Bengio et al., 2015; Ranzato et al., 2015). In the review world the
source is known, so the model's next-token distribution q can be compared with the true one p at *any*
prefix, exactly:

* ``kl`` at position t: :math:`\\mathrm{KL}(p(\\cdot \\mid x_{<t}) \\,\\|\\, q(\\cdot \\mid x_{<t}))`, how far the
  model's prediction is from the truth. Summed over a real review's positions its mean is the KL per review that
  notebook 04 measures (the chain rule), so teacher forcing's curve is exactly what training minimises.
* ``slip`` at position t: :math:`q(\\{v : p(v \\mid x_{<t}) = 0\\} \\mid x_{<t})`, the model's probability of a
  token that takes the text out of the grammar (or out of its canonical tokenisation), for good.

Each is averaged per position over two sets of prefixes: the source's own reviews (*teacher forcing*: the
prefixes training shows) and the model's free samples (*free running*: the prefixes generation produces). The
difference between the two curves is exposure bias. The source scored as a model has none (q = p: both curves
are 0), nor has a copy of the source that flips a coin where the source follows a rule (imperfect, but its own
prefixes are as good as real ones for what follows).

Errors compound even without exposure bias: a slip probability of a per mille per token leaves the grammar in a
few per cent of 40-token texts. :attr:`ExposureProfile.forecast_broken` is that compounding alone (the free
samples slipping at teacher forcing's rates), :attr:`ExposureProfile.expected_broken` what the model really does
on its own prefixes; the gap between them is what exposure bias adds.

The source is read as a token-level language model by :class:`ReviewSourceLM`: the grammar of
:mod:`utils.review_world` as a left-to-right process over words (a stack of pending symbols, expanded on
demand), whose conditional next-word probabilities multiply to exactly :func:`utils.review_world.log_prob`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from utils import review_world as rw
from utils.config_checks import check_int, check_number
from utils.decoding import SamplingConfig, generate
from utils.language_model import collate, encode_reviews


@dataclass(frozen=True)
class ExposureBiasConfig:
    """How many prefixes are scored, and how the model's own prefixes are sampled. Validated on construction."""

    n_sequences: int = 500
    """reviews of the source (teacher forcing) and free samples of the model (free running) scored, each"""
    positions: int = 40
    """per-position curves cover token positions 1..positions; few reviews run longer (the longest grammatical
    review has 67 tokens with its EOS, the mean about 22)"""
    max_new_tokens: int = 72
    """token budget of a free sample: enough for the longest grammatical review to end"""
    temperature: float = 1.0
    """sampling temperature of the free samples; the model is scored with the same temperature, so q is the
    distribution the samples were really drawn from"""
    seed: int = 0
    """seed of the free samples"""
    batch_size: int = 100
    """sequences per forward pass"""

    def __post_init__(self) -> None:
        for name in ("n_sequences", "positions", "max_new_tokens", "batch_size"):
            check_int(self, name, ge=1)
        check_number(self, "temperature", gt=0)
        check_int(self, "seed", ge=0)


class NextTokenModel(Protocol):
    """Anything that gives next-token distributions at every position of token sequences."""

    def next_token_probs(self, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """For each sequence ``[BOS] x_1 ... x_n``, an (n, V) float64 tensor whose row t is the distribution of
        ``x_{t+1}`` given ``[BOS] x_1 ... x_t``. A source gives an all-zero row after a prefix it cannot produce."""
        ...


# ------------------------------------------------------------------------------------------------
# The source as a left-to-right language model
# ------------------------------------------------------------------------------------------------
END = "<end>"
"""The word that closes every review: the token-level model's EOS."""

Symbol = str | tuple  # a word, or a nonterminal such as ("clause", +1)
Stack = tuple  # symbols still to produce, the next one first


def _shares(table: Sequence[tuple]) -> dict[str, float]:
    """Phrase -> probability from a (phrase, weight, ...) lexicon table of :mod:`utils.review_world`."""
    total = sum(row[1] for row in table)
    return {row[0]: row[1] / total for row in table}


class ReviewSourceLM:
    """The review world's generator read as a token-level language model: p(next token | tokens so far), exactly.

    The grammar is rewritten as a left-to-right process whose every choice is made at the latest word it can
    be (after j sentences, another sentence with probability P(k > j | k >= j); after a first clause, "." or
    "and" or ", but"; ...), so the state after a prefix is a short list of stacks of pending symbols with
    their posterior weights (only a few choices stay hidden: a clause's polarity until its adjective or verb,
    "i" opening a clause or the verdict). A token is one word of the canonical text (the course tokenizer has one
    token per word; the constructor checks it), so the model gives probability 0 to every non-canonical
    tokenisation, as the source never writes one.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, grammar: rw.GrammarConfig | None = None):
        self.tokenizer = tokenizer
        self.grammar = grammar or rw.GrammarConfig()
        self.vocab_size = len(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self._tops_cache: dict[Stack, list[tuple[float, str, Stack]]] = {}
        self._start: dict[Stack, float] = {(("sentence",), ("body", 1), END): 1.0}
        words = self._terminals() - {END}
        first_words = set(self._step(self._start)) - {END}
        self._token_of = {  # (word, is it the review's first word) -> its one token id
            **{(w, True): self._single_token(w) for w in first_words},
            **{(w, False): self._single_token(w if w in ",." else " " + w) for w in words},
            (END, True): self.eos_id,
            (END, False): self.eos_id,
        }
        self._word_of = {(token, first): word for (word, first), token in self._token_of.items()}

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"ReviewSourceLM needs one token per word; the tokenizer splits {text!r} into {ids}")
        return ids[0]

    # The grammar, one rule per nonterminal: a list of (probability, symbols it is replaced by).
    def _expand(self, symbol: tuple) -> list[tuple[float, tuple]]:
        g, kind = self.grammar, symbol[0]
        simple, p_and, p_but, p_although = g.sentence_form_probs
        p_was, p_felt, p_degree, p_verb = g.clause_form_probs
        if kind == "body":  # j sentences written: another one, or the (optional) verdict
            j, counts = symbol[1], g.sentence_count_probs
            more = sum(counts[j:]) / sum(counts[j - 1 :])
            rules = [(more, (("sentence",), ("body", j + 1))), (1 - more, (("verdict",),))]
        elif kind == "verdict":
            rules = [(g.closing_prob, (("closing",),)), (1 - g.closing_prob, ())]
        elif kind == "sentence":
            rules = []
            for pol in (1, -1):  # "although" opens the sentence; otherwise its form shows after the first clause
                rules += [
                    (p_although / 2, ("although", ("clause", pol), ",", ("second", -pol), ".")),
                    ((1 - p_although) / 2, (("clause", pol), ("continuation", pol))),
                ]
        elif kind == "continuation":  # after a first clause of polarity pol
            pol, rest = symbol[1], simple + p_and + p_but
            rules = [
                (simple / rest, (".",)),
                (p_and / rest, ("and", ("second", pol), ".")),
                (p_but / rest, (",", "but", ("second", -pol), ".")),
            ]
        elif kind == "second":  # a second clause, whose polarity the connective suggests
            agree, suggested = g.connective_agreement_prob, symbol[1]
            rules = [(agree, (("clause", suggested),)), (1 - agree, (("clause", -suggested),))]
        elif kind == "clause":
            pol = symbol[1]
            rules = [
                (p_was + p_felt + p_degree, ("the", ("aspect",), ("predicate", pol))),
                (p_verb, ("i", ("verb", pol), "the", ("aspect",))),
            ]
        elif kind == "predicate":  # after "the ASPECT"
            pol, rest = symbol[1], p_was + p_felt + p_degree
            rules = [(p_felt / rest, ("felt", ("adj", pol))), ((p_was + p_degree) / rest, ("was", ("was_rest", pol)))]
        elif kind == "was_rest":
            pol, rest = symbol[1], p_was + p_degree
            rules = [(p_degree / rest, (("degree",), ("adj", pol))), (p_was / rest, (("adj", pol),))]
        elif kind == "closing":
            film = g.closing_film_prob
            rules = [(film / 2, ("overall", ",", "a", ("adj", pol), "film", ".")) for pol in (1, -1)] + [
                ((1 - film) / 2, ("i", "would", "recommend", "it", ".")),
                ((1 - film) / 2, ("i", "would", "not", "recommend", "it", ".")),
            ]
        else:  # a lexicon entry ("aspect",), ("degree",), ("adj", pol), ("verb", pol): every phrase, word by word
            tables = {"aspect": rw.ASPECTS, "degree": rw.DEGREES}
            table = tables[kind] if kind in tables else {"adj": rw.ADJECTIVES, "verb": rw.VERBS}[kind][symbol[1]]
            rules = [(p, tuple(phrase.split())) for phrase, p in _shares(table).items()]
        return [(p, body) for p, body in rules if p > 0]  # a zero-probability branch is no part of the support

    def _tops(self, stack: Stack) -> list[tuple[float, str, Stack]]:
        """Every way ``stack`` can produce its next word: (probability, word, stack after the word)."""
        if stack not in self._tops_cache:
            if not stack:  # after the end nothing follows
                tops = []
            elif isinstance(stack[0], str):
                tops = [(1.0, stack[0], stack[1:])]
            else:
                tops = [
                    (p * q, word, after)
                    for p, body in self._expand(stack[0])
                    for q, word, after in self._tops(body + stack[1:])
                ]
            self._tops_cache[stack] = tops
        return self._tops_cache[stack]

    def _step(self, state: dict[Stack, float]) -> dict[str, list[tuple[float, Stack]]]:
        """Next word -> the weighted stacks that produce it, from a state (stack -> posterior weight)."""
        branches: dict[str, list[tuple[float, Stack]]] = defaultdict(list)
        for stack, weight in state.items():
            for p, word, after in self._tops(stack):
                branches[word].append((weight * p, after))
        return branches

    def _terminals(self) -> set[str]:
        """Every word the grammar can write, END included."""
        seen, todo, words = set(), [("sentence",), ("body", 1)], {END}
        while todo:
            symbol = todo.pop()
            if symbol in seen:
                continue
            seen.add(symbol)
            for _, body in self._expand(symbol):
                words.update(s for s in body if isinstance(s, str))
                todo.extend(s for s in body if isinstance(s, tuple))
        return words

    def next_word_probs(self, words: Sequence[str]) -> dict[str, float]:
        """p(next word | ``words``), the review's end as :data:`END`; empty if no review starts with ``words``."""
        state = self._start
        for word in words:
            state = _normalised(self._step(state).get(word, []))
        return {word: sum(w for w, _ in branch) for word, branch in self._step(state).items()}

    def next_token_probs(self, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """See :class:`NextTokenModel`: exact p(x_{t+1} | [BOS] x_1..x_t), a zero row once the prefix has left
        the source's support (a word outside the grammar, a second review after EOS, a non-canonical token)."""
        out = []
        for sequence in sequences:
            rows = torch.zeros(len(sequence) - 1, self.vocab_size, dtype=torch.float64)  # (n, V)
            state = self._start
            for t in range(len(sequence) - 1):
                if not state:
                    break
                branches = self._step(state)
                for word, branch in branches.items():
                    rows[t, self._token_of[word, t == 0]] = sum(w for w, _ in branch)
                word = self._word_of.get((sequence[t + 1], t == 0))
                state = _normalised(branches.get(word, []))
            out.append(rows)
        return out

    def sample(self, n: int, seed: int) -> list[list[int]]:
        """``n`` reviews from this grammar, as ``[BOS] tokens [EOS]``."""
        generator = rw.ReviewGenerator(self.grammar, seed)
        return encode_reviews([generator.sample() for _ in range(n)], self.tokenizer)


def _normalised(branch: list[tuple[float, Stack]]) -> dict[Stack, float]:
    """The state after a word: its stacks, weights summed per stack and rescaled to sum to 1 (empty if none)."""
    state: dict[Stack, float] = defaultdict(float)
    for weight, stack in branch:
        state[stack] += weight
    total = sum(state.values())
    return {stack: weight / total for stack, weight in state.items()} if total > 0 else {}


# ------------------------------------------------------------------------------------------------
# A neural language model, scored and sampled
# ------------------------------------------------------------------------------------------------
class CausalLMScorer:
    """A causal LM (anything returning ``.logits``) as a :class:`NextTokenModel`, at a sampling temperature."""

    def __init__(self, model: nn.Module, pad_id: int, temperature: float = 1.0):
        self.model, self.pad_id, self.temperature = model, pad_id, temperature

    @torch.no_grad()
    def next_token_probs(self, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        self.model.eval()
        batch = collate(sequences, self.pad_id)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        probs = torch.softmax(logits.double() / self.temperature, dim=-1)  # (B, T, V)
        return [probs[i, : len(sequence) - 1] for i, sequence in enumerate(sequences)]


@torch.no_grad()
def sample_sequences(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: ExposureBiasConfig
) -> list[list[int]]:
    """``config.n_sequences`` free samples from BOS, each ``[BOS] tokens`` up to and including its first EOS (or
    ``config.max_new_tokens`` tokens if it never ends). Same seed, same samples."""
    eos = tokenizer.eos_token_id
    # A finished row is fed EOS again (cut off below): fed the pad token, transformers would warn about padding
    # without an attention mask.
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, eos_token_id=eos, pad_token_id=eos
    )
    model.eval()
    bos = torch.full((config.n_sequences, 1), tokenizer.bos_token_id, dtype=torch.long)  # (N, 1)
    rows = generate(model, bos, config=sampling, generator=torch.Generator().manual_seed(config.seed)).tolist()
    return [row[: row.index(eos, 1) + 1] if eos in row[1:] else row for row in rows]


# ------------------------------------------------------------------------------------------------
# The measurement
# ------------------------------------------------------------------------------------------------
@dataclass
class PositionProfile:
    """Per-position means over one set of prefixes; entry t - 1 is about predicting token t (BOS is token 0)."""

    kl: torch.Tensor
    """(P,) mean KL(p || q) in nats over the live prefixes of length t (nan where there is none)"""
    slip: torch.Tensor
    """(P,) mean probability q gives to tokens p forbids, over the same prefixes (nan where there is none)"""
    live: torch.Tensor
    """(P,) how many prefixes were averaged: sequences with a t-th token whose first t - 1 tokens the source can
    write"""
    broken: torch.Tensor
    """(P,) share of all the sequences whose first t tokens the source cannot write (it never can again)"""
    kl_per_sequence: float
    """mean over the sequences of their summed KL over every live position (not only the first P): for the
    source's own reviews, an estimate of KL(p || q) per review"""
    n_sequences: int
    """sequences scored"""

    def window_mean(self, name: str, first: int, last: int) -> float:
        """The mean of ``kl`` or ``slip`` over every live prefix of length ``first``..``last`` (token positions,
        1-based, both included): per-position means weighted by how many prefixes each holds."""
        values, live = getattr(self, name)[first - 1 : last], self.live[first - 1 : last]
        return float((values.nan_to_num(0.0) * live).sum() / live.sum())


@dataclass
class ExposureProfile:
    """The same model measured on the source's prefixes and on its own."""

    teacher_forced: PositionProfile
    """on the source's reviews: the prefixes training conditions on"""
    free_running: PositionProfile
    """on the model's own samples: the prefixes generation conditions on"""

    def _breaks(self, slip: torch.Tensor) -> torch.Tensor:
        """(P,) share of the free samples expected to have left the grammar by token t if each of their live
        prefixes of length s <= t slipped with probability ``slip[s - 1]``."""
        own = self.free_running
        per_position = torch.where(own.live > 0, own.live / own.n_sequences * slip, 0.0)  # (P,)
        return torch.cumsum(per_position, dim=0)

    @property
    def expected_broken(self) -> torch.Tensor:
        """(P,) the exact expectation of ``free_running.broken``: the model's slip probabilities on its own
        prefixes, added up over the prefixes still live."""
        return self._breaks(self.free_running.slip)

    @property
    def forecast_broken(self) -> torch.Tensor:
        """(P,) the same if the model slipped on its own prefixes only as often as on the source's (teacher
        forcing's rate at each position): what compounding alone, without exposure bias, would give. nan from a
        position the source's reviews never reach."""
        return self._breaks(self.teacher_forced.slip)


def position_profile(
    source: NextTokenModel,
    model: NextTokenModel,
    sequences: Sequence[Sequence[int]],
    positions: int,
    batch_size: int = 100,
) -> PositionProfile:
    """Score ``model`` against ``source`` at every prefix of ``sequences`` and average per position."""
    if not sequences:
        raise ValueError("position_profile needs at least one sequence, got none")
    kl_sum, slip_sum, live, first_broken = (torch.zeros(positions, dtype=torch.float64) for _ in range(4))
    kl_total = 0.0
    for start in range(0, len(sequences), batch_size):
        chunk, source_rows = [], []
        batch = sequences[start : start + batch_size]
        for sequence, p in zip(batch, source.next_token_probs(batch)):
            targets = torch.tensor(sequence[1:], dtype=torch.long)  # (n,)
            written = p.gather(1, targets[:, None]).squeeze(1) > 0  # (n,) the source could write this token here
            if not written.all():
                t = int((~written).nonzero()[0])  # the first token it could not: the text is out for good
                if t < positions:
                    first_broken[t] += 1
                sequence, p = sequence[: t + 2], p[: t + 1]  # so nothing after the slip needs scoring
            chunk.append(sequence)
            source_rows.append(p)
        for p, q in zip(source_rows, model.next_token_probs(chunk)):
            allowed = p > 0  # (n, V)
            alive = allowed.any(dim=1)  # (n,) the source can continue the prefix
            kl = (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(dim=1)  # (n,) 0 on a dead prefix
            slip = (q * ~allowed).sum(dim=1)  # (n,)
            kl_total += kl[alive].sum().item()
            n = min(len(alive), positions)
            live[:n] += alive[:n]
            kl_sum[:n] += torch.where(alive[:n], kl[:n], 0.0)
            slip_sum[:n] += torch.where(alive[:n], slip[:n], 0.0)
    count = live.clamp(min=1)
    nan = torch.tensor(math.nan, dtype=torch.float64)
    return PositionProfile(
        kl=torch.where(live > 0, kl_sum / count, nan),
        slip=torch.where(live > 0, slip_sum / count, nan),
        live=live,
        broken=torch.cumsum(first_broken, dim=0) / len(sequences),
        kl_per_sequence=kl_total / len(sequences),
        n_sequences=len(sequences),
    )


def exposure_profile(
    source: NextTokenModel,
    model: NextTokenModel,
    true_sequences: Sequence[Sequence[int]],
    own_sequences: Sequence[Sequence[int]],
    config: ExposureBiasConfig,
) -> ExposureProfile:
    """``model`` against ``source`` on the source's sequences (teacher forcing) and on ``model``'s own samples
    (free running), the first ``config.n_sequences`` of each."""
    n, positions, batch_size = config.n_sequences, config.positions, config.batch_size
    return ExposureProfile(
        teacher_forced=position_profile(source, model, true_sequences[:n], positions, batch_size),
        free_running=position_profile(source, model, own_sequences[:n], positions, batch_size),
    )


def measure_language_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    source: ReviewSourceLM,
    true_sequences: Sequence[Sequence[int]],
    config: ExposureBiasConfig,
) -> ExposureProfile:
    """A neural LM's exposure profile: its free samples drawn here (``config``), scored at the same temperature."""
    scorer = CausalLMScorer(model, tokenizer.pad_token_id, config.temperature)
    return exposure_profile(source, scorer, true_sequences, sample_sequences(model, tokenizer, config), config)
