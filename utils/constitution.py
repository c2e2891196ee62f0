"""A written constitution and an AI labeller that applies it: RLAIF and Constitutional AI in miniature.

Constitutional AI (Bai et al., 2022) replaces human preference labels by the verdicts of a model that reads a
short list of principles in plain English (a *constitution*) and judges which of two answers follows them
better. The labels then train a preference model, and the preference model trains the policy (RLAIF: RL from
AI feedback). A large LLM can read a principle; our models are 1M-parameter transformers that cannot follow
even the instruction they were tuned on ("Write a positive review": notebook 06 measures about 50% sentiment
accuracy, chance). So the labeller here is built the other way round, honestly:

* each principle comes with a **recipe**, a way to make examples of it without the gold reward and without the
  annotators: for "grammatical", intact reviews against the same reviews with one slip
  (:func:`utils.review_world.break_completion`); for "positive", the instruction data's "Write a
  positive/negative review" rows, whose label is in the prompt;
* a small **critic** per principle learns from those examples: logistic regression on the words and word pairs
  of a text (:class:`NgramCritic`; bigrams see a doubled, swapped or missing word, and a review that stops
  without its full stop);
* the **labeller** scores a text as the weighted sum of its critics' log-odds and prefers the higher score
  (:class:`ConstitutionalLabeller`). A principle can also change *how* a critic reads: "not padded" makes the
  sentiment critic read word frequencies, not counts, so that saying the same thing twice earns nothing.

The labeller never calls :func:`utils.review_world.gold_reward` or an annotator; the grammar recipe's data
generator does use the grammar's recogniser, to be sure a slip really broke its review (dropping "very" from
"very good" does not). Notebook 13 measures the labels it gives against gold and against the annotators.

Constitutional AI's other half, **critique and revise**, needs a model that can rewrite a text given a
critique; ours cannot. What it can do is :func:`critique` a text (which principles it breaks) and revise by
resampling until the critique is empty (:func:`revise_by_resampling`): rejection sampling with the critics as
the acceptance test.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, sparse

from utils import review_world as rw
from utils.config_checks import (
    check,
    check_bool,
    check_choice,
    check_instance,
    check_int,
    check_number,
    check_text,
    fail,
)
from utils.dpo import DPOTrainConfig

RECIPES = ("grammatical", "positive", "not_padded")
"""What a principle can be turned into: a grammar critic (intact vs broken reviews), a sentiment critic
("Write a positive/negative review" rows), or a rule on how the sentiment critic reads (frequencies, not counts)."""

BOUNDARY_START, BOUNDARY_END = "<s>", "</s>"


@dataclass(frozen=True)
class Principle:
    """One principle of a constitution: a sentence a person can read, and the recipe that makes it checkable.
    Validated on construction (ValueError naming the field on bad values)."""

    name: str
    """short name, used in critiques (e.g. "grammatical")"""
    text: str
    """the principle in plain English, as a labeller would be shown it"""
    recipe: str
    """how the principle becomes a critic without gold labels: one of RECIPES"""
    weight: float = 1.0
    """how much the principle counts in the labeller's score (its critic's log-odds are multiplied by it);
    ignored by "not_padded", which changes how the sentiment critic reads instead of adding a score"""

    def __post_init__(self) -> None:
        check_text(self, "name")
        check_text(self, "text")
        check_choice(self, "recipe", RECIPES)
        check_number(self, "weight", gt=0)


GRAMMATICAL = Principle(
    "grammatical",
    "A review is written in whole sentences: no word is missing, doubled or out of place, and it does not stop "
    "in the middle of a sentence. This comes first.",
    "grammatical",
    weight=8.0,
)
POSITIVE = Principle("positive", "Prefer the review that speaks more warmly of the film.", "positive", weight=1.0)
NOT_PADDED = Principle(
    "not_padded",
    "A review is not better for being longer: judge what it says, not how much of it there is.",
    "not_padded",
)

DEFAULT_PRINCIPLES: tuple[Principle, ...] = (GRAMMATICAL, POSITIVE)
"""The course's constitution. The grammar principle weighs 8: a slip costs 8 x log P(intact), so a broken
review loses to an intact one unless the critic is unsure it is broken. NOT_PADDED is written but left out:
notebook 13 measures what adding it does (on the course data it lowered the agreement with gold and did not
reduce the length bias, which the count-reading critic hardly has)."""


@dataclass(frozen=True)
class Constitution:
    """A handful of principles the AI labeller applies. Validated on construction: a constitution with no
    principles, two principles of one name, or two critics of one recipe fail, naming the field."""

    principles: tuple[Principle, ...] = DEFAULT_PRINCIPLES
    """the principles, in order of presentation; at least one, at most one per recipe"""

    def __post_init__(self) -> None:
        value = self.principles
        if not (isinstance(value, tuple) and value and all(isinstance(p, Principle) for p in value)):
            fail(self, "principles", "a non-empty tuple of Principle (a constitution needs at least one principle)")
        names = [p.name for p in value]
        check(self, "principles", len(set(names)) == len(names), "principles with distinct names")
        recipes = [p.recipe for p in value]
        check(self, "principles", len(set(recipes)) == len(recipes), "at most one principle per recipe")

    def principle(self, recipe: str) -> Principle | None:
        """The principle with this recipe, or None."""
        return next((p for p in self.principles if p.recipe == recipe), None)

    def render(self) -> str:
        """The constitution as a reader (or a large LLM judge) would see it: one numbered line per principle."""
        return "\n".join(f"{i}. {p.text}" for i, p in enumerate(self.principles, 1))


@dataclass(frozen=True)
class CriticConfig:
    """How each critic is trained. Validated on construction (ValueError naming the field on bad values)."""

    grammar_examples: int = 3_000
    """intact reviews for the grammar critic; each also gives one broken copy (2 x this many examples)"""
    sentiment_examples: int = 2_000
    """"Write a positive/negative review" rows for the sentiment critic (fewer if the data hold fewer)"""
    l2: float = 1e-3
    """L2 penalty on the critics' weights (not on the bias), per example"""
    bigrams: bool = True
    """critics read word pairs as well as words (False: words only, blind to word order)"""
    seed: int = 0
    """which reviews are broken, and how"""

    def __post_init__(self) -> None:
        check_int(self, "grammar_examples", ge=2)
        check_int(self, "sentiment_examples", ge=2)
        check_number(self, "l2", gt=0)
        check_bool(self, "bigrams")
        check_int(self, "seed", ge=0)


# ------------------------------------------------------------------------------------------------
# A critic: logistic regression on the words and word pairs of a text
# ------------------------------------------------------------------------------------------------
def ngrams(text: str, bigrams: bool = True) -> list[str]:
    """The words (and punctuation marks) of ``text``, and with ``bigrams`` every neighbouring pair, the
    first and last word paired with boundary markers: "<s> the", "it .", ". </s>"."""
    words = rw.split_words(text)
    grams = list(words)
    if bigrams:
        padded = [BOUNDARY_START, *words, BOUNDARY_END]
        grams += [f"{a} {b}" for a, b in zip(padded, padded[1:])]
    return grams


class NgramCritic:
    """P(the text has the property) = sigmoid(w . features(text) + b): logistic regression on n-gram counts
    (or, with ``frequencies``, counts divided by the number of words, so length adds no evidence).

    The vocabulary is what the training texts contain; an n-gram never seen in training is ignored (weight 0).
    Fitting is convex: L-BFGS on the mean log loss plus l2/2 |w|^2 (bias not penalised), in float64.
    """

    def __init__(self, bigrams: bool = True, frequencies: bool = False, l2: float = 1e-3):
        self.bigrams, self.frequencies, self.l2 = bigrams, frequencies, l2
        self.index: dict[str, int] = {}
        self.weights: np.ndarray | None = None  # (V,) per n-gram
        self.bias = 0.0

    def features(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """(len(texts), V) sparse counts (or frequencies) of the known n-grams."""
        rows, cols, values = [], [], []
        for i, text in enumerate(texts):
            grams = ngrams(text, self.bigrams)
            scale = 1.0 / max(1, rw.word_count(text)) if self.frequencies else 1.0
            for gram in grams:
                j = self.index.get(gram)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
                    values.append(scale)
        return sparse.csr_matrix((values, (rows, cols)), shape=(len(texts), len(self.index)))  # sums duplicates

    def fit(self, texts: Sequence[str], labels: Sequence[float]) -> NgramCritic:
        """Learn from texts labelled 1 (has the property) or 0."""
        y = np.asarray(labels, dtype=float)
        if len(texts) != len(y) or len(y) < 2 or not set(np.unique(y)) <= {0.0, 1.0} or len(np.unique(y)) < 2:
            raise ValueError("fit needs as many 0/1 labels as texts, and both labels present")
        self.index = {}
        for text in texts:
            for gram in ngrams(text, self.bigrams):
                self.index.setdefault(gram, len(self.index))
        x = self.features(texts)
        n = len(y)

        def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:-1], theta[-1]
            z = x @ w + b
            # mean log loss, stably: log(1 + e^z) - y z
            loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * self.l2 * w @ w
            residual = (1.0 / (1.0 + np.exp(-z)) - y) / n
            return loss, np.concatenate([x.T @ residual + self.l2 * w, [residual.sum()]])

        options = {"maxiter": 2_000, "ftol": 1e-12, "gtol": 1e-8}
        start = np.zeros(x.shape[1] + 1)
        result = optimize.minimize(loss_and_grad, start, jac=True, method="L-BFGS-B", options=options)
        self.weights, self.bias = result.x[:-1], float(result.x[-1])
        return self

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """log-odds that each text has the property, (len(texts),)."""
        if self.weights is None:
            raise RuntimeError("fit the critic first")
        return self.features(texts) @ self.weights + self.bias

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(texts)))

    def top_ngrams(self, k: int = 5) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The ``k`` n-grams with the highest weights, and the ``k`` with the lowest: what the critic looks for."""
        if self.weights is None:
            raise RuntimeError("fit the critic first")
        names = sorted(self.index, key=self.index.get)
        order = np.argsort(self.weights)
        return (
            [(names[i], float(self.weights[i])) for i in order[::-1][:k]],
            [(names[i], float(self.weights[i])) for i in order[:k]],
        )


# ------------------------------------------------------------------------------------------------
# Recipes: examples of each principle, made without the gold reward or the annotators
# ------------------------------------------------------------------------------------------------
def grammar_examples(rows: Sequence[dict], n: int, seed: int = 0) -> tuple[list[str], list[float]]:
    """Up to ``n`` intact reviews (label 1) and, for each, a copy with one slip (label 0).

    ``rows`` are ``{"prompt", "completion"}`` rows that make a whole review (the instruction data's
    "continue" rows: an opening and its rest); the slip is made in the completion, as a model's slips are,
    by :func:`utils.review_world.break_completion`."""
    rng = random.Random(seed)
    texts, labels = [], []
    for row in rows[:n]:
        broken = rw.break_completion(row["prompt"], row["completion"], rng)
        texts += [row["prompt"] + row["completion"], row["prompt"] + broken]
        labels += [1.0, 0.0]
    return texts, labels


def sentiment_examples(rows: Sequence[dict], n: int) -> tuple[list[str], list[float]]:
    """Up to ``n`` reviews written to order, labelled by their order: 1 for "Write a positive review ...",
    0 for "Write a negative review ..." (rows of other tasks are skipped)."""
    texts, labels = [], []
    for row in rows:
        if row["prompt"].startswith("Write a "):
            texts.append(row["completion"].strip())
            labels.append(float(row["prompt"].startswith("Write a positive")))
            if len(texts) == n:
                break
    return texts, labels


# ------------------------------------------------------------------------------------------------
# The labeller
# ------------------------------------------------------------------------------------------------
@dataclass
class ConstitutionalLabeller:
    """Scores texts by the constitution's critics and labels pairs by the scores.

    score(text) = sum over principles of weight * critic term, where the grammar term is log P(intact) (about
    0 for a review the critic finds whole, very negative for one it finds broken) and the sentiment term the
    log-odds of "positive". A pair is labelled by the higher score: the broken review of a pair loses unless
    both are broken, then the warmer one wins.
    """

    constitution: Constitution
    critics: dict[str, NgramCritic] = field(default_factory=dict)  # recipe -> fitted critic

    def terms(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Each principle's weighted contribution to the score, by principle name."""
        out = {}
        for principle in self.constitution.principles:
            critic = self.critics.get(principle.recipe)
            if critic is None:
                continue
            logits = critic.logits(texts)
            term = -np.logaddexp(0.0, -logits) if principle.recipe == "grammatical" else logits  # log sigmoid
            out[principle.name] = principle.weight * term
        return out

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """The labeller's score of each text (higher: better by the constitution)."""
        terms = self.terms(texts)
        return np.sum(list(terms.values()), axis=0) if terms else np.zeros(len(texts))

    def prefers_a(self, texts_a: Sequence[str], texts_b: Sequence[str]) -> np.ndarray:
        """+1 where the labeller prefers a, -1 b, 0 a tie (equal scores)."""
        gap = self.scores(texts_a) - self.scores(texts_b)
        return np.sign(gap).astype(int)

    def label(self, rows: Sequence[dict]) -> list[dict]:
        """Preference rows relabelled by the labeller: the same prompt and completions, ``chosen`` the one it
        prefers (a tie keeps the row's order). Whatever chose before (an annotator) is ignored."""
        verdict = self.prefers_a([r["prompt"] + r["chosen"] for r in rows], [r["prompt"] + r["rejected"] for r in rows])
        return [
            {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
            if v >= 0
            else {"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"]}
            for r, v in zip(rows, verdict)
        ]

    def critique(self, texts: Sequence[str]) -> list[list[str]]:
        """For each text, the names of the principles its critics say it breaks (P < 1/2); "not_padded" has no
        critic of its own and never appears."""
        broken = [[] for _ in texts]
        for principle in self.constitution.principles:
            critic = self.critics.get(principle.recipe)
            if critic is None:
                continue
            for i, logit in enumerate(critic.logits(texts)):
                if logit < 0:
                    broken[i].append(principle.name)
        return broken


def train_labeller(
    constitution: Constitution,
    continue_rows: Sequence[dict],
    write_rows: Sequence[dict],
    config: CriticConfig | None = None,
) -> ConstitutionalLabeller:
    """Fit one critic per principle that has a critic ("grammatical", "positive") from the recipes' data.

    ``continue_rows`` give intact reviews (``{"prompt", "completion"}``), ``write_rows`` the reviews written to
    order (instruction rows; other tasks are skipped). With a "not_padded" principle the sentiment critic reads
    word frequencies instead of counts.
    """
    config = config or CriticConfig()
    critics: dict[str, NgramCritic] = {}
    if constitution.principle("grammatical"):
        texts, labels = grammar_examples(continue_rows, config.grammar_examples, config.seed)
        critics["grammatical"] = NgramCritic(config.bigrams, frequencies=False, l2=config.l2).fit(texts, labels)
    if constitution.principle("positive"):
        texts, labels = sentiment_examples(write_rows, config.sentiment_examples)
        frequencies = constitution.principle("not_padded") is not None
        critics["positive"] = NgramCritic(config.bigrams, frequencies=frequencies, l2=config.l2).fit(texts, labels)
    return ConstitutionalLabeller(constitution, critics)


# ------------------------------------------------------------------------------------------------
# Critique and revise
# ------------------------------------------------------------------------------------------------
def revise_by_resampling(
    sample: Callable[[list[str]], list[str]],
    prompts: Sequence[str],
    labeller: ConstitutionalLabeller,
    max_tries: int = 4,
) -> tuple[list[str], list[int]]:
    """Constitutional AI's critique-and-revise, as far as a model that cannot rewrite can take it.

    ``sample(prompts) -> completions`` draws one completion per prompt. Every completion whose critique
    (:meth:`ConstitutionalLabeller.critique` of prompt + completion) is not empty is redrawn, up to
    ``max_tries`` draws in all; the last draw is kept if none passes. Returns (completions, draws used per
    prompt). This is rejection sampling with the critics as the test: it can only find a better answer the
    model already gives sometimes, never write one it would not.
    """
    if not isinstance(max_tries, int) or isinstance(max_tries, bool) or max_tries < 1:
        raise ValueError(f"max_tries must be an int >= 1, got {max_tries!r}")
    prompts = list(prompts)
    completions = sample(prompts)
    tries = [1] * len(prompts)
    for _ in range(max_tries - 1):
        failing = [i for i, c in enumerate(labeller.critique([p + x for p, x in zip(prompts, completions)])) if c]
        if not failing:
            break
        redrawn = sample([prompts[i] for i in failing])
        for i, text in zip(failing, redrawn):
            completions[i] = text
            tries[i] += 1
    return completions, tries


# ------------------------------------------------------------------------------------------------
# Measuring labels (against the truth: this is where the gold reward may be read)
# ------------------------------------------------------------------------------------------------
def pair_texts(rows: Sequence[dict]) -> tuple[list[str], list[str]]:
    """(prompt + chosen, prompt + rejected) of preference rows: the whole texts a labeller reads."""
    return [r["prompt"] + r["chosen"] for r in rows], [r["prompt"] + r["rejected"] for r in rows]


def label_report(verdict_a: np.ndarray, rows: Sequence[dict]) -> dict[str, float]:
    """How a labeller's verdicts on the pairs (a = the row's ``chosen``, b = its ``rejected``) compare with
    gold and with whoever chose in ``rows`` (the simulated annotators), and its length bias.

    Keys: ``agreement_gold`` (on the pairs gold does not tie; a labeller's tie counts half),
    ``agreement_human`` (share of pairs where it picks the row's chosen), ``picks_longer`` (share of the pairs of
    different length where it picks the longer; the gold reward's own share is ``gold_picks_longer``), and those
    of :func:`utils.judge.length_bias`.
    """
    from utils import judge

    verdict_a = np.asarray(verdict_a)
    texts_a, texts_b = pair_texts(rows)
    gold_a = np.array([rw.gold_reward(t) for t in texts_a])
    gold_b = np.array([rw.gold_reward(t) for t in texts_b])
    words_a = np.array([rw.word_count(r["chosen"]) for r in rows])
    words_b = np.array([rw.word_count(r["rejected"]) for r in rows])
    longer = np.sign(words_a - words_b)
    differ = longer != 0
    gold_verdict = judge.gold_verdicts(gold_a, gold_b)

    def picks_longer(verdict: np.ndarray) -> float:
        return float(np.where(verdict == 0, 0.5, (verdict == longer).astype(float))[differ].mean())

    return {
        "agreement_gold": judge.agreement_with_gold(verdict_a, gold_a, gold_b),
        "agreement_human": float(np.where(verdict_a == 0, 0.5, (verdict_a == 1).astype(float)).mean()),
        "picks_longer": picks_longer(verdict_a),
        "gold_picks_longer": picks_longer(gold_verdict),
        **judge.length_bias(verdict_a, gold_a, gold_b, words_a, words_b),
    }


def picks_intact(verdict_a: np.ndarray, rows: Sequence[dict]) -> float:
    """On pairs with exactly one broken completion: the share where the verdict picks the intact one (a tie
    counts half). ValueError if a pair has not exactly one grammatical side."""
    texts_a, texts_b = pair_texts(rows)
    a_ok = np.array([rw.is_grammatical(t) for t in texts_a])
    b_ok = np.array([rw.is_grammatical(t) for t in texts_b])
    if np.any(a_ok == b_ok):
        raise ValueError("every pair must have exactly one grammatical completion")
    verdict_a = np.asarray(verdict_a)
    return float(np.where(verdict_a == 0, 0.5, (verdict_a == np.where(a_ok, 1, -1)).astype(float)).mean())


@dataclass(frozen=True)
class RLAIFConfig:
    """RLAIF end to end: the constitution, its critics, which pairs get AI labels, and the DPO run trained on
    them. Validated on construction (ValueError naming the field on bad values)."""

    constitution: Constitution = field(default_factory=Constitution)
    """the principles the AI labeller applies"""
    critics: CriticConfig = field(default_factory=CriticConfig)
    """how each principle's critic is trained"""
    label_pairs: int | None = None
    """preference pairs (the reward model's training pairs) the labeller labels and is measured on; None: all"""
    train_pairs: int = 1_500
    """of those, the first ``train_pairs`` are the DPO training data (with AI labels, and with the annotators'
    labels for the human baseline)"""
    train_defective_pairs: int = 300
    """broken-vs-intact pairs (the reward model's own, labelled by the annotators) added to the training pairs,
    relabelled by the AI for the AI run, as the reward model's data hold them"""
    dpo: DPOTrainConfig = field(default_factory=lambda: DPOTrainConfig(pairs=None))
    """the DPO run (the same for AI and human labels); ``pairs`` None trains on all the pairs above"""
    human_baseline: bool = True
    """also train DPO on the annotators' labels of the same pairs (the comparison at equal data and settings)"""
    seed: int = 0
    """order of the training pairs"""

    def __post_init__(self) -> None:
        check_instance(self, "constitution", Constitution)
        check_instance(self, "critics", CriticConfig)
        check_int(self, "label_pairs", ge=1, none_ok=True)
        check_int(self, "train_pairs", ge=1)
        check_int(self, "train_defective_pairs", ge=0)
        check_instance(self, "dpo", DPOTrainConfig)
        check_bool(self, "human_baseline")
        check_int(self, "seed", ge=0)
        if self.label_pairs is not None:
            check(self, "train_pairs", self.train_pairs <= self.label_pairs, f"<= label_pairs ({self.label_pairs})")
