"""The review world: a small, fully known language of movie reviews.

Everything in the course is trained on text this module generates, so nothing has to be downloaded
and every quantity that is usually unknowable is known exactly:

* each review's probability under the generator, hence the *source entropy*, the floor that no
  language model can beat;
* each review's sentiment, hence a *gold reward* against which a learned reward model (the *proxy*)
  and a PPO policy can be judged honestly;
* the preference process of the (simulated) human annotators, hence the *Bayes-optimal accuracy*
  that no reward model can exceed.

The language is a probabilistic grammar::

    review    := sentence{1..4} [closing]
    sentence  := clause(p) "."                         (simple)
               | clause(p) "and" clause(q) "."         (usually q = p)
               | clause(p) ", but" clause(q) "."       (usually q = -p; the second clause wins)
               | "although" clause(p) "," clause(q) "."  (usually q = -p)
    clause(p) := "the" ASPECT "was" ADJ(p) | "the" ASPECT "felt" ADJ(p)
               | "the" ASPECT "was" DEGREE ADJ(p) | "i" VERB(p) "the" ASPECT
    closing   := "overall, a" ADJ(q) "film." | "i would recommend it." | "i would not recommend it."

The connective sets the *likely* polarity of the second clause ("and" agrees, "but" and "although"
contrast) with probability ``GrammarConfig.connective_agreement_prob``; the other polarity stays possible,
so a model that has not yet learned the agreement writes unlikely reviews, not broken ones.

Every word list is disjoint from the others, so each string has exactly one derivation: its
probability is the product of the choices that produced it, and the recogniser (a small
recursive-descent parser) recovers those choices. ``tests/test_review_world.py`` checks that the
probability the sampler records equals the one the parser computes, review by review.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from utils.config_checks import check, check_int, check_number, check_numbers

# --------------------------------------------------------------------------------------------
# The lexicon: (word or phrase, sampling weight, sentiment value in [-1, 1])
# --------------------------------------------------------------------------------------------
ASPECTS: tuple[tuple[str, float], ...] = (
    ("acting", 3.0),
    ("plot", 3.0),
    ("music", 2.0),
    ("ending", 2.0),
    ("dialogue", 1.5),
    ("pacing", 1.5),
    ("cast", 1.5),
    ("script", 1.5),
    ("soundtrack", 1.0),
    ("cinematography", 1.0),
    ("direction", 1.0),
    ("humour", 1.0),
)
ADJECTIVES: dict[int, tuple[tuple[str, float, float], ...]] = {
    +1: (
        ("superb", 1.0, 1.0),
        ("brilliant", 1.5, 0.9),
        ("wonderful", 1.5, 0.9),
        ("excellent", 1.5, 0.85),
        ("great", 3.0, 0.8),
        ("moving", 1.0, 0.7),
        ("charming", 1.0, 0.6),
        ("good", 3.0, 0.5),
        ("solid", 1.5, 0.4),
        ("decent", 1.0, 0.3),
    ),
    -1: (
        ("awful", 1.5, -1.0),
        ("terrible", 1.5, -0.95),
        ("dreadful", 1.0, -0.9),
        ("boring", 2.5, -0.8),
        ("dull", 2.0, -0.7),
        ("clumsy", 1.0, -0.6),
        ("weak", 2.0, -0.5),
        ("bland", 1.5, -0.4),
        ("forgettable", 1.0, -0.35),
        ("mediocre", 1.5, -0.3),
    ),
}
VERBS: dict[int, tuple[tuple[str, float, float], ...]] = {
    +1: (("loved", 3.0, 1.0), ("adored", 1.0, 1.0), ("enjoyed", 3.0, 0.7), ("admired", 1.0, 0.6), ("liked", 2.0, 0.5)),
    -1: (
        ("hated", 2.0, -1.0),
        ("loathed", 1.0, -1.0),
        ("could not stand", 1.0, -0.9),
        ("disliked", 2.0, -0.6),
        ("did not like", 1.5, -0.5),
    ),
}
# A degree word scales the adjective's sentiment (clipped to [-1, 1]).
DEGREES: tuple[tuple[str, float, float], ...] = (
    ("very", 2.0, 1.25),
    ("really", 1.5, 1.25),
    ("quite", 1.5, 0.8),
    ("rather", 1.0, 0.7),
)

# How much each clause of a two-clause sentence counts: a contrast lets the second clause win.
CLAUSE_WEIGHTS = {"simple": (1.0,), "and": (0.5, 0.5), "but": (0.3, 0.7), "although": (0.3, 0.7)}
CLOSING_WEIGHT = 2.0  # a closing verdict counts as much as two body sentences
RECOMMEND_VALUE = 0.8  # sentiment of "i would (not) recommend it."

# The gold reward of text the grammar rejects: below every grammatical review (all are >= -1).
UNGRAMMATICAL_REWARD = -2.0


@dataclass(frozen=True)
class GrammarConfig:
    """Probabilities of the grammar's structural choices (the lexicon's weights live above).
    Validated on construction (ValueError on bad values)."""

    sentence_count_probs: tuple[float, ...] = (0.30, 0.35, 0.25, 0.10)
    """P(number of body sentences = k) for k = 1..4; more sentences mean longer reviews"""
    closing_prob: float = 0.4
    """P(a closing verdict follows the body)"""
    sentence_form_probs: tuple[float, float, float, float] = (0.45, 0.20, 0.20, 0.15)
    """P(sentence form), in this order: simple, "and", ", but", "although" (two clauses joined)"""
    clause_form_probs: tuple[float, float, float, float] = (0.40, 0.15, 0.15, 0.30)
    """P(clause form), in this order: "the A was ADJ", "the A felt ADJ", "the A was DEGREE ADJ", "i VERB the A" """
    closing_film_prob: float = 0.6
    """P(the closing is "overall, a ADJ film.") against "i would (not) recommend it." """
    connective_agreement_prob: float = 0.9
    """P(the second clause of a two-clause sentence has the polarity its connective suggests: the same for
    "and", the opposite for "but" and "although")"""

    def __post_init__(self) -> None:
        for name, length in (("sentence_count_probs", None), ("sentence_form_probs", 4), ("clause_form_probs", 4)):
            check_numbers(self, name, length=length, ge=0, le=1)
            check(self, name, abs(sum(getattr(self, name)) - 1.0) <= 1e-9, "probabilities that sum to 1")
        for name in ("closing_prob", "closing_film_prob", "connective_agreement_prob"):
            check_number(self, name, ge=0, le=1)


SENTENCE_FORMS = ("simple", "and", "but", "although")
CLAUSE_FORMS = ("was", "felt", "degree", "verb")


def _normalise(table: Sequence[tuple]) -> dict[str, tuple[float, float]]:
    """Word -> (log probability, sentiment value) from a (word, weight[, value]) table."""
    total = sum(row[1] for row in table)
    return {row[0]: (math.log(row[1] / total), row[2] if len(row) > 2 else 0.0) for row in table}


_ASPECT = _normalise(ASPECTS)
_ADJ = {p: _normalise(t) for p, t in ADJECTIVES.items()}
_VERB = {p: _normalise(t) for p, t in VERBS.items()}
_DEGREE = _normalise(DEGREES)
_LOG_HALF = math.log(0.5)


# --------------------------------------------------------------------------------------------
# Parsed structure
# --------------------------------------------------------------------------------------------
@dataclass
class Clause:
    """One sentiment-bearing clause: which aspect, which polarity, how strongly."""

    aspect: str
    polarity: int  # +1 or -1
    value: float  # sentiment in [-1, 1]


@dataclass
class ParsedReview:
    """The unique derivation of a grammatical review."""

    text: str
    sentences: list[list[Clause]]  # body sentences, each one or two clauses
    forms: list[str]  # sentence form of each body sentence
    closing_value: float | None  # sentiment of the closing verdict, if any
    log_prob: float  # exact log-probability under the generator, in nats

    @property
    def clauses(self) -> list[Clause]:
        return [c for s in self.sentences for c in s]

    @property
    def sentiment(self) -> float:
        """Weighted mean of sentence sentiments, in [-1, 1]; > 0 means a positive review."""
        values = [sum(w * c.value for w, c in zip(CLAUSE_WEIGHTS[f], s)) for f, s in zip(self.forms, self.sentences)]
        weights = [1.0] * len(values)
        if self.closing_value is not None:
            values.append(self.closing_value)
            weights.append(CLOSING_WEIGHT)
        return sum(w * v for w, v in zip(weights, values)) / sum(weights)

    def summary(self) -> str:
        """Reference summary: each aspect's polarity in order of first mention, then the verdict."""
        seen: dict[str, str] = {}
        for clause in self.clauses:
            seen.setdefault(clause.aspect, "positive" if clause.polarity > 0 else "negative")
        parts = ", ".join(f"{aspect} {label}" for aspect, label in seen.items())
        overall = "positive" if self.sentiment > 0 else "negative"
        return f"{parts}; overall {overall}."


# --------------------------------------------------------------------------------------------
# Surface form: words <-> text
# --------------------------------------------------------------------------------------------
_WORD_RE = re.compile(r"[a-z]+|[,.]")


def render(words: Iterable[str]) -> str:
    """Join words into canonical text: single spaces, punctuation attached to the word before."""
    return " ".join(words).replace(" ,", ",").replace(" .", ".")


def split_words(text: str) -> list[str]:
    """Words and punctuation marks, in order: the grammar's terminals."""
    return _WORD_RE.findall(text)


def word_count(text: str) -> int:
    """Number of words, punctuation not counted (the length the annotators are biased toward)."""
    return sum(w not in ",." for w in split_words(text))


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
class ReviewGenerator:
    """Samples reviews and records the exact log-probability of every choice it makes."""

    def __init__(self, config: GrammarConfig | None = None, seed: int = 0):
        self.config = config or GrammarConfig()
        self.rng = random.Random(seed)
        self._log_sentence_count = [math.log(p) if p > 0 else -math.inf for p in self.config.sentence_count_probs]

    def _pick(self, table: dict[str, tuple[float, float]]) -> tuple[str, float, float]:
        words = list(table)
        word = self.rng.choices(words, weights=[math.exp(table[w][0]) for w in words])[0]
        return word, table[word][0], table[word][1]

    def _pick_index(self, probs: Sequence[float]) -> tuple[int, float]:
        i = self.rng.choices(range(len(probs)), weights=probs)[0]
        return i, math.log(probs[i])

    def _clause(self, polarity: int) -> tuple[list[str], float]:
        form, lp = self._pick_index(self.config.clause_form_probs)
        aspect, lp_a, _ = self._pick(_ASPECT)
        lp += lp_a
        if CLAUSE_FORMS[form] == "verb":
            verb, lp_v, _ = self._pick(_VERB[polarity])
            return ["i", *verb.split(), "the", aspect], lp + lp_v
        adj, lp_adj, _ = self._pick(_ADJ[polarity])
        if CLAUSE_FORMS[form] == "degree":
            degree, lp_d, _ = self._pick(_DEGREE)
            return ["the", aspect, "was", degree, adj], lp + lp_d + lp_adj
        return ["the", aspect, CLAUSE_FORMS[form], adj], lp + lp_adj

    def _sentence(self) -> tuple[list[str], float]:
        form, lp = self._pick_index(self.config.sentence_form_probs)
        polarity = self.rng.choice((1, -1))
        lp += _LOG_HALF
        first, lp1 = self._clause(polarity)
        name = SENTENCE_FORMS[form]
        if name == "simple":
            return [*first, "."], lp + lp1
        suggested = polarity if name == "and" else -polarity
        agree = self.config.connective_agreement_prob
        if self.rng.random() < agree:
            second_polarity, lp_agree = suggested, math.log(agree)
        else:
            second_polarity, lp_agree = -suggested, math.log(1.0 - agree)
        second, lp2 = self._clause(second_polarity)
        lp += lp1 + lp_agree + lp2
        if name == "and":
            return [*first, "and", *second, "."], lp
        if name == "but":
            return [*first, ",", "but", *second, "."], lp
        return ["although", *first, ",", *second, "."], lp

    def _closing(self) -> tuple[list[str], float]:
        polarity = self.rng.choice((1, -1))
        lp = _LOG_HALF
        if self.rng.random() < self.config.closing_film_prob:
            adj, lp_adj, _ = self._pick(_ADJ[polarity])
            return ["overall", ",", "a", adj, "film", "."], lp + math.log(self.config.closing_film_prob) + lp_adj
        lp += math.log(1.0 - self.config.closing_film_prob)
        verdict = ["would", "recommend"] if polarity > 0 else ["would", "not", "recommend"]
        return ["i", *verdict, "it", "."], lp

    def sample_with_log_prob(self) -> tuple[str, float]:
        """One review and its exact log-probability (nats) under this generator."""
        count, lp = self._pick_index(self.config.sentence_count_probs)
        words: list[str] = []
        for _ in range(count + 1):
            sentence, lp_s = self._sentence()
            words += sentence
            lp += lp_s
        if self.rng.random() < self.config.closing_prob:
            closing, lp_c = self._closing()
            words += closing
            lp += math.log(self.config.closing_prob) + lp_c
        else:
            lp += math.log(1.0 - self.config.closing_prob)
        return render(words), lp

    def sample(self) -> str:
        return self.sample_with_log_prob()[0]


# --------------------------------------------------------------------------------------------
# Recognising (parsing)
# --------------------------------------------------------------------------------------------
class _Reject(Exception):
    """Raised inside the parser when the text leaves the grammar."""


class _Parser:
    def __init__(self, words: list[str], config: GrammarConfig):
        self.words, self.pos, self.config = words, 0, config

    def peek(self, offset: int = 0) -> str | None:
        i = self.pos + offset
        return self.words[i] if i < len(self.words) else None

    def expect(self, *words: str) -> None:
        for word in words:
            if self.peek() != word:
                raise _Reject(f"expected {word!r} at word {self.pos}, found {self.peek()!r}")
            self.pos += 1

    def lookup_phrase(self, table: dict[str, tuple[float, float]]) -> tuple[str, float, float]:
        for phrase, (lp, value) in table.items():
            parts = phrase.split()
            if self.words[self.pos : self.pos + len(parts)] == parts:
                self.pos += len(parts)
                return phrase, lp, value
        raise _Reject(f"unexpected word {self.peek()!r} at word {self.pos}")

    def clause(self, polarity: int | None) -> tuple[Clause, float]:
        """Parse one clause; polarity None means either (and it is then chosen with prob 1/2)."""
        probs = self.config.clause_form_probs
        polarities = (polarity,) if polarity is not None else (1, -1)
        if self.peek() == "i":
            self.pos += 1
            for p in polarities:
                start = self.pos
                try:
                    _, lp_v, value = self.lookup_phrase(_VERB[p])
                    break
                except _Reject:
                    self.pos = start
            else:
                raise _Reject(f"expected a verb of polarity {polarity} at word {self.pos}")
            self.expect("the")
            aspect, lp_a, _ = self.lookup_phrase(_ASPECT)
            return Clause(aspect, p, value), math.log(probs[3]) + lp_a + lp_v
        self.expect("the")
        aspect, lp_a, _ = self.lookup_phrase(_ASPECT)
        if self.peek() == "felt":
            self.pos += 1
            lp, scale = math.log(probs[1]), 1.0
        else:
            self.expect("was")
            if self.peek() in _DEGREE:
                degree_lp, scale = _DEGREE[self.peek()]
                self.pos += 1
                lp = math.log(probs[2]) + degree_lp
            else:
                lp, scale = math.log(probs[0]), 1.0
        for p in polarities:
            if self.peek() in _ADJ[p]:
                lp_adj, value = _ADJ[p][self.peek()]
                self.pos += 1
                value = max(-1.0, min(1.0, value * scale))
                return Clause(aspect, p, value), lp + lp_a + lp_adj
        raise _Reject(f"expected an adjective of polarity {polarity} at word {self.pos}, found {self.peek()!r}")

    def agreement_log_prob(self, suggested: int, actual: int) -> float:
        agree = self.config.connective_agreement_prob
        return math.log(agree if actual == suggested else 1.0 - agree)

    def sentence(self) -> tuple[list[Clause], str, float]:
        probs = dict(zip(SENTENCE_FORMS, self.config.sentence_form_probs))
        if self.peek() == "although":
            self.pos += 1
            first, lp1 = self.clause(None)
            self.expect(",")
            second, lp2 = self.clause(None)
            self.expect(".")
            lp2 += self.agreement_log_prob(-first.polarity, second.polarity)
            return [first, second], "although", math.log(probs["although"]) + _LOG_HALF + lp1 + lp2
        first, lp1 = self.clause(None)
        if self.peek() == ".":
            self.pos += 1
            return [first], "simple", math.log(probs["simple"]) + _LOG_HALF + lp1
        if self.peek() == "and":
            self.pos += 1
            form, suggested = "and", first.polarity
        else:
            self.expect(",", "but")
            form, suggested = "but", -first.polarity
        second, lp2 = self.clause(None)
        lp2 += self.agreement_log_prob(suggested, second.polarity)
        self.expect(".")
        return [first, second], form, math.log(probs[form]) + _LOG_HALF + lp1 + lp2

    def closing(self) -> tuple[float, float]:
        film_prob = self.config.closing_film_prob
        if self.peek() == "overall":
            self.expect("overall", ",", "a")
            for p in (1, -1):
                if self.peek() in _ADJ[p]:
                    lp_adj, value = _ADJ[p][self.peek()]
                    self.pos += 1
                    self.expect("film", ".")
                    return value, _LOG_HALF + math.log(film_prob) + lp_adj
            raise _Reject(f"expected an adjective at word {self.pos}, found {self.peek()!r}")
        self.expect("i", "would")
        negated = self.peek() == "not"
        self.pos += negated
        self.expect("recommend", "it", ".")
        value = -RECOMMEND_VALUE if negated else RECOMMEND_VALUE
        return value, _LOG_HALF + math.log(1.0 - film_prob)

    def is_closing_next(self) -> bool:
        return self.peek() == "overall" or (self.peek() == "i" and self.peek(1) == "would")

    def review(self, text: str) -> ParsedReview:
        sentences, forms, lp = [], [], 0.0
        while self.peek() is not None and not self.is_closing_next():
            clauses, form, lp_s = self.sentence()
            sentences.append(clauses)
            forms.append(form)
            lp += lp_s
        counts = self.config.sentence_count_probs
        if not 1 <= len(sentences) <= len(counts) or counts[len(sentences) - 1] == 0:
            raise _Reject(f"a review has 1 to {len(counts)} sentences before its verdict, found {len(sentences)}")
        lp += math.log(counts[len(sentences) - 1])
        closing_value = None
        if self.peek() is not None:
            closing_value, lp_c = self.closing()
            lp += math.log(self.config.closing_prob) + lp_c
        else:
            lp += math.log(1.0 - self.config.closing_prob)
        if self.peek() is not None:
            raise _Reject(f"text continues after the closing verdict at word {self.pos}")
        return ParsedReview(text, sentences, forms, closing_value, lp)


def parse(text: str, config: GrammarConfig | None = None) -> ParsedReview | None:
    """The unique derivation of ``text``, or None if the grammar does not accept it.

    Only the canonical surface form is accepted (lower case, single spaces, punctuation attached),
    so a string and its derivation correspond one to one.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse expects a str, got {type(text).__name__}")
    words = split_words(text)
    if not words or render(words) != text:
        return None
    try:
        return _Parser(words, config or GrammarConfig()).review(text)
    except _Reject:
        return None


def rejection_reason(text: str, config: GrammarConfig | None = None) -> str | None:
    """Why the grammar rejects ``text`` (None if it accepts it): handy for reading model samples."""
    words = split_words(text)
    if not words:
        return "empty text"
    if render(words) != text:
        return "not in canonical form (lower case, single spaces, punctuation attached)"
    try:
        _Parser(words, config or GrammarConfig()).review(text)
    except _Reject as err:
        return str(err)
    return None


def is_grammatical(text: str) -> bool:
    return parse(text) is not None


def log_prob(text: str, config: GrammarConfig | None = None) -> float:
    """Exact log-probability of ``text`` under the generator (-inf if it is not a review)."""
    parsed = parse(text, config)
    return parsed.log_prob if parsed is not None else -math.inf


def gold_reward(text: str) -> float:
    """The true reward: the review's sentiment in [-1, 1], or a clear penalty if it is not a review."""
    parsed = parse(text.strip())
    return parsed.sentiment if parsed is not None else UNGRAMMATICAL_REWARD


def is_positive(text: str) -> bool:
    """A grammatical review whose sentiment is above zero."""
    parsed = parse(text.strip())
    return parsed is not None and parsed.sentiment > 0


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
def lm_corpus(n: int, seed: int, config: GrammarConfig | None = None) -> list[dict]:
    """``n`` reviews as rows ``{"text", "log_prob"}`` (TRL's language-modelling format plus the truth)."""
    generator = ReviewGenerator(config, seed)
    rows = []
    for _ in range(n):
        text, lp = generator.sample_with_log_prob()
        rows.append({"text": text, "log_prob": lp})
    return rows


def source_entropy(rows: Sequence[dict]) -> tuple[float, float]:
    """Monte-Carlo estimate of the source entropy in nats per review, and its standard error."""
    nll = [-r["log_prob"] for r in rows]
    mean = sum(nll) / len(nll)
    var = sum((x - mean) ** 2 for x in nll) / max(1, len(nll) - 1)
    return mean, math.sqrt(var / len(nll))


def opening(text: str) -> str | None:
    """The words of a review before its first sentiment-bearing word (an RL prompt), if >= 2 words."""
    words = split_words(text)
    sentiment_words = {w for table in (*_ADJ.values(), *_VERB.values()) for phrase in table for w in phrase.split()[:1]}
    for i, word in enumerate(words):
        if word in sentiment_words:
            return render(words[:i]) if i >= 2 else None
    return None


def rl_prompts(n: int, seed: int, config: GrammarConfig | None = None) -> list[dict]:
    """``n`` review openings as rows ``{"prompt"}``: the policy must finish the review."""
    generator = ReviewGenerator(config, seed)
    rows = []
    while len(rows) < n:
        prompt = opening(generator.sample())
        if prompt is not None:
            rows.append({"prompt": prompt})
    return rows


def sample_completions(
    prompts: Sequence[str], k: int, seed: int, pool_size: int = 200_000, config: GrammarConfig | None = None
) -> list[list[str]]:
    """``k`` continuations from the generator for each prompt (exact conditional samples).

    Sampling from p(review | review starts with prompt) by drawing a pool of reviews and keeping
    those that begin with the prompt: rejection sampling, exact and simple.
    """
    generator = ReviewGenerator(config, seed)
    wanted = {p: [] for p in prompts}
    needed = {p: k * prompts.count(p) for p in wanted}
    for _ in range(pool_size):
        text = generator.sample()
        prompt = opening(text)
        if prompt in wanted and len(wanted[prompt]) < needed[prompt]:
            wanted[prompt].append(text[len(prompt) :])
            if all(len(v) >= needed[p] for p, v in wanted.items()):
                break
    missing = [p for p, v in wanted.items() if len(v) < needed[p]]
    if missing:
        raise ValueError(f"pool_size={pool_size} too small: no {k} continuations for prompts {missing[:3]}")
    cursor = {p: 0 for p in wanted}
    out = []
    for p in prompts:
        out.append(wanted[p][cursor[p] : cursor[p] + k])
        cursor[p] += k
    return out


INSTRUCTION_TASKS = ("summarise", "write", "continue")


def instruction_pairs(n: int, seed: int, config: GrammarConfig | None = None) -> list[dict]:
    """``n`` instruction rows ``{"prompt", "completion", "task"}`` with reference completions.

    * summarise: "Summarise the review: ...\\nSummary:" -> " acting positive, plot negative; overall ..."
    * write: "Write a positive review about the music.\\nReview:" -> a review with that sentiment
      whose first clause is about that aspect
    * continue: a review opening -> the rest of the review (plain language modelling, which keeps
      the instruction-tuned model able to finish the RL prompts)
    """
    rng = random.Random(seed)
    generator = ReviewGenerator(config, seed + 1)
    rows = []
    while len(rows) < n:
        task = rng.choice(INSTRUCTION_TASKS)
        text = generator.sample()
        parsed = parse(text, config)
        if task == "summarise":
            rows.append(
                {
                    "prompt": f"Summarise the review: {text}\nSummary:",
                    "completion": " " + parsed.summary(),
                    "task": task,
                }
            )
        elif task == "write":
            label = "positive" if parsed.sentiment > 0 else "negative"
            aspect = parsed.clauses[0].aspect
            rows.append(
                {
                    "prompt": f"Write a {label} review about the {aspect}.\nReview:",
                    "completion": " " + text,
                    "task": task,
                }
            )
        else:
            prompt = opening(text)
            if prompt is not None:
                rows.append({"prompt": prompt, "completion": text[len(prompt) :], "task": task})
    return rows


# --------------------------------------------------------------------------------------------
# Simulated annotators
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnnotatorConfig:
    """A simulated human labeller: Bradley-Terry on the gold reward, with noise and a planted bias.
    Validated on construction (ValueError on bad values)."""

    temperature: float = 0.25
    """noise temperature: P(A > B) = sigmoid((gold(A) - gold(B)) / temperature + bias). Lower = more
    consistent annotators; real human agreement on HH-style data is around 65-75%"""
    length_bias_per_word: float = 0.15
    """spurious preference for longer answers, in logits per extra word (negative: for shorter ones). A planted
    stand-in for the length correlations Singhal et al. (2023) measure in reward models and RLHF policies (not a
    claim about human labellers: HH-RLHF's chosen answer is the shorter one in 54% of pairs, notebook 07); a
    reward model learns it and PPO exploits it"""
    seed: int = 0
    """seed of this annotator's coin flips (two annotators = two seeds)"""

    def __post_init__(self) -> None:
        check_number(self, "temperature", gt=0)
        check_number(self, "length_bias_per_word")
        check_int(self, "seed", ge=0)


def preference_probability(prompt: str, a: str, b: str, config: AnnotatorConfig) -> float:
    """P(annotator prefers completion ``a`` over ``b`` for ``prompt``) under Bradley-Terry."""
    gold_a, gold_b = gold_reward(prompt + a), gold_reward(prompt + b)
    length_gap = word_count(a) - word_count(b)
    logit = (gold_a - gold_b) / config.temperature + config.length_bias_per_word * length_gap
    return 1.0 / (1.0 + math.exp(-logit))


class SimulatedAnnotator:
    """Labels pairs of completions the way a noisy, slightly length-biased human would."""

    def __init__(self, config: AnnotatorConfig | None = None):
        self.config = config or AnnotatorConfig()
        self.rng = random.Random(self.config.seed)

    def prefers_first(self, prompt: str, a: str, b: str) -> bool:
        return self.rng.random() < preference_probability(prompt, a, b, self.config)

    def label(self, prompt: str, a: str, b: str) -> dict:
        """A TRL preference row ``{"prompt", "chosen", "rejected"}``."""
        if self.prefers_first(prompt, a, b):
            return {"prompt": prompt, "chosen": a, "rejected": b}
        return {"prompt": prompt, "chosen": b, "rejected": a}


def bayes_optimal_accuracy(rows: Sequence[dict], config: AnnotatorConfig) -> float:
    """The best accuracy any reward model can reach on these labelled pairs, in expectation.

    For each pair the best guess is the completion the annotator prefers with probability
    p >= 1/2, which is right with probability max(p, 1 - p). (Averaged over the pairs: the labels
    themselves are random, so this is the expected accuracy of the Bayes-optimal scorer.)
    """
    total = 0.0
    for row in rows:
        p = preference_probability(row["prompt"], row["chosen"], row["rejected"], config)
        total += max(p, 1.0 - p)
    return total / len(rows)


def preference_pairs(
    n: int, seed: int, annotator: AnnotatorConfig | None = None, config: GrammarConfig | None = None
) -> list[dict]:
    """``n`` labelled pairs: an RL prompt, two generator continuations, the annotator's choice."""
    prompts = [r["prompt"] for r in rl_prompts(n, seed, config)]
    completions = sample_completions(prompts, 2, seed + 1, config=config)
    labeller = SimulatedAnnotator(annotator or AnnotatorConfig(seed=seed + 2))
    return [labeller.label(p, a, b) for p, (a, b) in zip(prompts, completions)]


BREAKAGES = ("cut", "drop", "repeat", "swap", "pad")
"""How :func:`break_completion` damages a review: the slips a small language model makes, and the ones PPO's
samples showed. ``cut`` stops mid-review (a sample that ran out of tokens), ``drop`` loses one to three
neighbouring words ("i liked the plot was good"), ``repeat`` says a word twice, ``swap`` exchanges two
neighbours ("the and acting"), ``pad`` repeats a sentence until the review has more sentences than the grammar
allows (the length-hungry policy's favourite)."""


def _sentences(words: list[str]) -> list[list[str]]:
    """``words`` split after every full stop (the last piece may lack one)."""
    out, current = [], []
    for word in words:
        current.append(word)
        if word == ".":
            out.append(current)
            current = []
    return out + ([current] if current else [])


def _break_once(words: list[str], kind: str, rng: random.Random) -> list[str] | None:
    """One breakage of ``kind`` at a random place, or None where it does not apply."""
    if kind == "cut" and len(words) >= 2:
        return words[: rng.randrange(1, len(words))]
    if kind == "drop" and len(words) >= 2:
        i = rng.randrange(len(words))
        return words[:i] + words[i + rng.randint(1, min(3, len(words) - 1)) :]
    if kind == "repeat":
        i = rng.randrange(len(words))
        return words[: i + 1] + words[i:]
    if kind == "swap" and len(words) >= 2:
        i = rng.randrange(len(words) - 1)
        return words[:i] + [words[i + 1], words[i]] + words[i + 2 :]
    if kind == "pad":
        sentences = _sentences(words)
        i = rng.randrange(len(sentences))
        copies = [list(sentences[i]) for _ in range(rng.randint(2, 4))]  # 2-4 extra: past the 4-sentence limit
        return [w for sentence in sentences[: i + 1] + copies + sentences[i + 1 :] for w in sentence]
    return None


def break_completion(prompt: str, completion: str, rng: random.Random, kinds: Sequence[str] = BREAKAGES) -> str:
    """``completion`` damaged by one of ``kinds`` (default: all :data:`BREAKAGES`), so that ``prompt + result``
    is ungrammatical.

    Tries the breakages in a random order at random places until the grammar rejects the result (dropping
    "very" from "very good" is still a review; repeating a word never is); ValueError for an empty completion,
    an unknown kind, or a completion no try could break.
    """
    unknown = [k for k in kinds if k not in BREAKAGES]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty selection of {BREAKAGES}, got {list(kinds)}")
    words = split_words(completion)
    if not words:
        raise ValueError(f"completion {completion!r} of prompt {prompt!r} has no words to break")
    for _ in range(50):
        broken = _break_once(words, rng.choice(kinds), rng)
        if broken is None:
            continue
        text = " " + render(broken)
        if not is_grammatical(prompt + text):
            return text
    raise ValueError(f"could not break completion {completion!r} of prompt {prompt!r} into an ungrammatical one")


def defective_pairs(
    n: int, seed: int, annotator: AnnotatorConfig | None = None, config: GrammarConfig | None = None
) -> list[dict]:
    """``n`` labelled *minimal* pairs: an RL prompt, a generator continuation, and the same continuation
    broken (see :func:`break_completion`), as in comparisons between a model's own samples, some of them slips.

    Both sides are the same review but for the slip, so the only thing that tells them apart is the grammar
    (two different reviews would differ in sentiment too, which drowns the signal: on the course a reward
    model trained on such pairs preferred the intact side of held-out ones only 61% of the time). The
    annotator labels them as any pair: the gold reward puts every ungrammatical text below every review, so
    they prefer the intact side nearly always (P >= sigmoid(1 / temperature), shifted by the length bias of a
    word or a cut). A reward model trained only on grammatical pairs never sees a broken review and cannot learn
    to punish one; PPO's samples include broken ones, so these pairs teach what the policy will produce.
    """
    prompts = [r["prompt"] for r in rl_prompts(n, seed, config)]
    completions = sample_completions(prompts, 1, seed + 1, config=config)
    rng = random.Random(seed + 3)
    labeller = SimulatedAnnotator(annotator or AnnotatorConfig(seed=seed + 2))
    return [labeller.label(p, c, break_completion(p, c, rng)) for p, (c,) in zip(prompts, completions)]


# --------------------------------------------------------------------------------------------
# Small committed samples (data/)
# --------------------------------------------------------------------------------------------
def sample_files(n: int = 20, seed: int = 2024) -> dict[str, list[dict]]:
    """The small samples shipped in ``data/``: ``n`` rows of each dataset, in TRL's formats."""
    return {
        "lm_sample.jsonl": lm_corpus(n, seed),
        "instructions_sample.jsonl": instruction_pairs(n, seed),
        "preferences_sample.jsonl": preference_pairs(n, seed),
        "rl_prompts_sample.jsonl": rl_prompts(n, seed),
    }


def write_sample_files(folder) -> None:
    """Regenerate ``data/*.jsonl`` (``python -m utils.review_world data``); deterministic."""
    from pathlib import Path

    from utils.artifacts import write_jsonl

    for name, rows in sample_files().items():
        write_jsonl(Path(folder) / name, rows)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["data"] or len(sys.argv) > 3:
        raise SystemExit("usage: python -m utils.review_world data [FOLDER]")
    write_sample_files(sys.argv[2] if len(sys.argv) == 3 else "data")
