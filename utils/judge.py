"""LLM-as-a-judge, in miniature: pairwise judges, judging in both orders, and how to measure a judge's biases.

Most RLHF papers report a win rate judged by a strong LLM (AlpacaEval, MT-Bench): the judge reads a prompt and
two answers, *in some order*, and says which is better. Two biases of such judges are well documented:

* **position bias**: the verdict depends on which answer is shown first (Zheng et al., 2023; Wang et al.,
  "Large Language Models are not Fair Evaluators", 2023). Measured by asking twice, with the answers swapped:
  the share of pairs whose winner changes is the **flip rate**; the share of verdicts that pick whatever was
  shown first is the **first-position rate** (0.5 for a judge without position bias).
* **length bias**: the judge prefers the longer answer for its length. Measured against a gold judge: how often
  does the judge pick the longer answer when gold prefers the shorter one (ideal: never), or is tied (ideal:
  half the time)?

In the review world the gold judge is :func:`utils.review_world.gold_reward`, so both biases can be measured
exactly. A judge here is a function ``judge(firsts, seconds) -> P(first is better)`` over lists of texts
(prompt + answer), one probability per pair. Two kinds:

* :func:`pointwise_judge` scores each answer on its own (a reward model) and compares the scores. It cannot
  have a position bias: swapping the answers swaps the scores.
* :class:`BagOfWordsJudge` reads both answers in the order shown (logistic regression on the word counts of the
  first and of the second answer), like an LLM judge reads one context. Nothing forces it to treat the two
  positions alike, so it can learn a position bias from its training pairs.

:func:`order_averaged` is the standard fix for position bias (judge both orders, average): consistent by
construction. It does nothing for length bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from utils import review_world as rw

Judge = Callable[[Sequence[str], Sequence[str]], np.ndarray]
"""judge(firsts, seconds) -> P(first is better), one probability per pair."""

TIE_TOLERANCE = 1e-12  # a probability this close to 1/2 is a tie
GOLD_TIE_TOLERANCE = 1e-9  # gold rewards this close are a tie (sums of floats in another order differ by ~1e-16)


def verdicts(p_first: np.ndarray) -> np.ndarray:
    """+1 where the judge prefers the answer shown first, -1 the second, 0 for a tie (p = 1/2)."""
    p_first = np.asarray(p_first, dtype=float)
    return np.where(np.abs(p_first - 0.5) <= TIE_TOLERANCE, 0, np.sign(p_first - 0.5)).astype(int)


def judge_both_orders(judge: Judge, texts_a: Sequence[str], texts_b: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(p_ab, p_ba): P(a is better) with a shown first, and P(b is better) with b shown first."""
    if len(texts_a) != len(texts_b):
        raise ValueError(f"texts_a and texts_b must pair up, got {len(texts_a)} and {len(texts_b)} texts")
    return np.asarray(judge(texts_a, texts_b), dtype=float), np.asarray(judge(texts_b, texts_a), dtype=float)


def preference_for_a(p_ab: np.ndarray, p_ba: np.ndarray | None = None) -> np.ndarray:
    """The judge's verdict for answer a: +1 (a wins), -1 (b wins), 0 (tie); from one order (a first), or, given
    ``p_ba`` too, from the order-averaged probability."""
    return verdicts(p_ab if p_ba is None else order_averaged(p_ab, p_ba))


def flip_rate(p_ab: np.ndarray, p_ba: np.ndarray) -> float:
    """Share of pairs whose verdict changes when the two answers swap places (a tie counts as a verdict).

    With a shown first the verdict for a is sign(p_ab - 1/2); with b shown first it is -sign(p_ba - 1/2).
    """
    return float(np.mean(verdicts(p_ab) != -verdicts(p_ba)))


def first_position_rate(p_ab: np.ndarray, p_ba: np.ndarray) -> float:
    """Share of the non-tied verdicts, over both orders, that pick the answer shown first (no bias: 0.5)."""
    both = np.concatenate([verdicts(p_ab), verdicts(p_ba)])
    decided = both[both != 0]
    if decided.size == 0:
        raise ValueError("every verdict is a tie: no position to prefer")
    return float(np.mean(decided == 1))


def order_averaged(p_ab: np.ndarray, p_ba: np.ndarray) -> np.ndarray:
    """P(a is better) averaged over both orders: (p_ab + (1 - p_ba)) / 2. Swapping a and b gives exactly
    1 minus it, so its flip rate is 0 whatever the judge."""
    return (np.asarray(p_ab, dtype=float) + 1.0 - np.asarray(p_ba, dtype=float)) / 2.0


def order_averaged_judge(judge: Judge) -> Judge:
    """A judge that asks ``judge`` in both orders and averages: position-consistent by construction."""

    def averaged(firsts: Sequence[str], seconds: Sequence[str]) -> np.ndarray:
        return order_averaged(*judge_both_orders(judge, firsts, seconds))

    return averaged


def pointwise_judge(score: Callable[[Sequence[str]], Sequence[float]]) -> Judge:
    """A judge from a scorer of single texts (a reward model): P(first better) = sigmoid(score1 - score2)."""

    def judge(firsts: Sequence[str], seconds: Sequence[str]) -> np.ndarray:
        gap = np.asarray(score(firsts), dtype=float) - np.asarray(score(seconds), dtype=float)
        return 1.0 / (1.0 + np.exp(-gap))

    return judge


def gold_verdicts(gold_a: np.ndarray, gold_b: np.ndarray) -> np.ndarray:
    """+1 where gold prefers a, -1 where it prefers b, 0 where the two gold rewards tie (within 1e-9)."""
    gap = np.asarray(gold_a, dtype=float) - np.asarray(gold_b, dtype=float)
    return np.where(np.abs(gap) <= GOLD_TIE_TOLERANCE, 0, np.sign(gap)).astype(int)


def agreement_with_gold(verdict_a: np.ndarray, gold_a: np.ndarray, gold_b: np.ndarray) -> float:
    """Share of the pairs gold does not tie on where the judge picks gold's winner (a judge's tie: half)."""
    verdict_a, gold_verdict = np.asarray(verdict_a), gold_verdicts(gold_a, gold_b)
    strict = gold_verdict != 0
    if not strict.any():
        raise ValueError("gold ties on every pair: nothing to agree with")
    score = np.where(verdict_a == 0, 0.5, (verdict_a == gold_verdict).astype(float))
    return float(score[strict].mean())


def length_bias(
    verdict_a: np.ndarray, gold_a: np.ndarray, gold_b: np.ndarray, words_a: np.ndarray, words_b: np.ndarray
) -> dict[str, float]:
    """How often the judge picks the longer answer where its length should not win it, among pairs of different
    lengths (a judge's tie counts half):

    * ``longer_when_gold_prefers_shorter``: gold prefers the shorter answer (ideal judge: 0);
    * ``shorter_when_gold_prefers_longer``: the same mistake the other way round. A judge that errs at random
      makes both equally often; a length-biased one makes the first more often than the second;
    * ``longer_when_gold_ties``: gold ties, e.g. two answers of the same sentiment (unbiased judge: 0.5);
    * ``n_gold_prefers_shorter``, ``n_gold_prefers_longer``, ``n_gold_ties``: how many pairs each share is over.
    """
    verdict_a, words_a, words_b = np.asarray(verdict_a), np.asarray(words_a), np.asarray(words_b)
    length_gap = np.sign(words_a - words_b)  # +1 where a is the longer
    gold = gold_verdicts(gold_a, gold_b)
    picks_longer = np.where(verdict_a == 0, 0.5, (verdict_a == length_gap).astype(float))
    differ = length_gap != 0
    prefers_shorter = differ & (gold == -length_gap)
    prefers_longer = differ & (gold == length_gap)
    ties = differ & (gold == 0)

    def share(mask: np.ndarray) -> float:
        return float(picks_longer[mask].mean()) if mask.any() else float("nan")

    return {
        "longer_when_gold_prefers_shorter": share(prefers_shorter),
        "shorter_when_gold_prefers_longer": 1.0 - share(prefers_longer),
        "longer_when_gold_ties": share(ties),
        "n_gold_prefers_shorter": int(prefers_shorter.sum()),
        "n_gold_prefers_longer": int(prefers_longer.sum()),
        "n_gold_ties": int(ties.sum()),
    }


def bias_report(judge: Judge, texts_a: Sequence[str], texts_b: Sequence[str]) -> dict[str, float]:
    """A judge measured against the gold reward on pairs (texts_a[i], texts_b[i]) of whole texts.

    Keys: ``agreement`` (with gold, a shown first), ``flip_rate``, ``first_position_rate``, and those of
    :func:`length_bias` (verdicts with a shown first).
    """
    p_ab, p_ba = judge_both_orders(judge, texts_a, texts_b)
    gold_a = np.array([rw.gold_reward(t) for t in texts_a])
    gold_b = np.array([rw.gold_reward(t) for t in texts_b])
    words_a = np.array([rw.word_count(t) for t in texts_a])
    words_b = np.array([rw.word_count(t) for t in texts_b])
    verdict_a = verdicts(p_ab)
    return {
        "agreement": agreement_with_gold(verdict_a, gold_a, gold_b),
        "flip_rate": flip_rate(p_ab, p_ba),
        "first_position_rate": first_position_rate(p_ab, p_ba),
        **length_bias(verdict_a, gold_a, gold_b, words_a, words_b),
    }


def pairs_within_groups(num_groups: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (i, j) of every pair i < j inside each group of ``group_size`` consecutive items (e.g. the
    samples of one prompt): num_groups * group_size * (group_size - 1) / 2 pairs."""
    first, second = np.triu_indices(group_size, k=1)
    offsets = (np.arange(num_groups) * group_size)[:, None]
    return (offsets + first).ravel(), (offsets + second).ravel()


def training_pairs(
    rows: Sequence[dict], chosen_first_share: float = 0.5, seed: int = 0
) -> tuple[list[str], list[str], np.ndarray]:
    """Preference rows ``{"prompt", "chosen", "rejected"}`` as ordered pairs for a pairwise judge.

    ``round(chosen_first_share * len(rows))`` rows, picked at random, show the chosen answer first, the rest
    show it second. Returns (firsts, seconds, first_is_chosen) with whole texts (prompt + answer). A share of
    0.5 is a properly shuffled dataset; 1.0 is a dataset kept in its (chosen, rejected) column order.
    """
    if not 0.0 <= chosen_first_share <= 1.0:
        raise ValueError(f"chosen_first_share must be in [0, 1], got {chosen_first_share}")
    rng = np.random.default_rng(seed)
    first_is_chosen = np.zeros(len(rows), dtype=bool)
    first_is_chosen[rng.permutation(len(rows))[: round(chosen_first_share * len(rows))]] = True
    chosen = [r["prompt"] + r["chosen"] for r in rows]
    rejected = [r["prompt"] + r["rejected"] for r in rows]
    firsts = [c if f else r for c, r, f in zip(chosen, rejected, first_is_chosen)]
    seconds = [r if f else c for c, r, f in zip(chosen, rejected, first_is_chosen)]
    return firsts, seconds, first_is_chosen.astype(float)


class BagOfWordsJudge:
    """A learned pairwise judge that reads both answers in order: P(first better) = sigmoid(w1 . counts(first)
    + w2 . counts(second) + b), logistic regression with an L2 penalty on the weights (not on b).

    A fair judge would have w2 = -w1 and b = 0; nothing in the model forces it, so whatever its training pairs
    teach about positions, it learns. Fitting is convex and takes a second (L-BFGS, float64, full batch).
    """

    def __init__(self, vocabulary: Sequence[str]):
        self.vocabulary = sorted(set(vocabulary))
        self.index = {word: i for i, word in enumerate(self.vocabulary)}
        self.weights: np.ndarray | None = None  # (2 V + 1,): first's words, second's words, bias

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> BagOfWordsJudge:
        """A judge whose vocabulary is every word and punctuation mark of ``texts``."""
        return cls({word for text in texts for word in rw.split_words(text)})

    def counts(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), V) word counts; words outside the vocabulary are ignored."""
        out = np.zeros((len(texts), len(self.vocabulary)))
        for row, text in enumerate(texts):
            for word in rw.split_words(text):
                if word in self.index:
                    out[row, self.index[word]] += 1
        return out

    def features(self, firsts: Sequence[str], seconds: Sequence[str]) -> np.ndarray:
        """(pairs, 2 V + 1): the counts of the first answer, of the second, and a constant 1 (the bias)."""
        return np.hstack([self.counts(firsts), self.counts(seconds), np.ones((len(firsts), 1))])

    def fit(
        self, firsts: Sequence[str], seconds: Sequence[str], first_better: np.ndarray, l2: float = 1e-3
    ) -> BagOfWordsJudge:
        """Minimise mean log loss + l2/2 * |w|^2 (bias not penalised) over the labelled ordered pairs."""
        x = torch.tensor(self.features(firsts, seconds), dtype=torch.float64)
        y = torch.tensor(np.asarray(first_better, dtype=float), dtype=torch.float64)
        penalised = torch.ones(x.shape[1], dtype=torch.float64)
        penalised[-1] = 0.0
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([w], lr=1.0, max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = self.loss(w, x, y, l2, penalised)
            loss.backward()
            return loss

        optimiser.step(closure)
        self.weights = w.detach().numpy().copy()
        return self

    @staticmethod
    def loss(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, l2: float, penalised: torch.Tensor) -> torch.Tensor:
        logits = x @ w
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 0.5 * l2 * (penalised * w**2).sum()

    @property
    def position_bias(self) -> float:
        """The fitted bias b, in logits: how much more the judge likes whatever it reads first, all else equal."""
        if self.weights is None:
            raise RuntimeError("fit the judge first")
        return float(self.weights[-1])

    def __call__(self, firsts: Sequence[str], seconds: Sequence[str]) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("fit the judge first")
        return 1.0 / (1.0 + np.exp(-(self.features(firsts, seconds) @ self.weights)))
