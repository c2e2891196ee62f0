"""Listwise preferences: rankings of K completions, the Plackett-Luce loss, and Bradley-Terry on their pairs.

InstructGPT's labellers did not compare two answers: they ranked K = 4 to 9 of them. A ranking can be used in
two ways.

* **Directly, as a ranking.** The Plackett-Luce model (Luce 1959, Plackett 1975) builds a ranking by choosing
  the best item with a softmax over the items' scores, then the best of the rest, and so on:

      P(pi | s) = prod_{i=1}^{K-1} exp(s_{pi(i)}) / sum_{j >= i} exp(s_{pi(j)}),

  so the negative log-likelihood of a ranking, with the scores written best first (s_1 for the winner), is

      L_PL = sum_{i=1}^{K-1} [ logsumexp(s_i, ..., s_K) - s_i ].

  For K = 2 this is logsumexp(s_1, s_2) - s_1 = -log sigmoid(s_1 - s_2): the Bradley-Terry loss.
* **As pairs.** Every ranking of K items implies K(K-1)/2 preference pairs; InstructGPT trained a
  Bradley-Terry reward model on all of them, the pairs of one ranking in one batch element, their losses
  averaged (so that a ranking weighs as much as any other, whatever its K). Fewer pairs also imply the whole
  order: the K - 1 adjacent ones, or the K - 1 of the best against each of the others (which is all a "pick
  the best of K" interface records).

The simulated annotators rank by **Plackett-Luce sampling from their utilities** u(x) = gold(x) / T + beta *
words(x), the same utilities whose differences are the logits of their pairwise choices. Sampling a
Plackett-Luce ranking is the same as sorting u_i + Gumbel noise (Yellott 1977), and the difference of two
independent Gumbel variables is logistic, so in every sampled ranking each pair (i, j) comes out in the order i
above j with probability exactly sigmoid(u_i - u_j): the pairwise labels hidden in a ranking have the same
distribution as the pairs the annotators label one at a time (``rw.preference_probability``). The two kinds of
data are then comparable, the Bayes-optimal pairwise accuracy is the same formula, and Plackett-Luce is the
annotators' true model of a ranking, so its loss is the exact likelihood while Bradley-Terry on all pairs is a
*composite* likelihood (it treats the K(K-1)/2 correlated pairs of a ranking as independent).

Which pairs are kept matters: all pairs and best-vs-rest pairs are unbiased samples of the annotator's pairwise
choices (best-vs-rest by Luce's choice axiom: given that i or j wins the list, it is i with probability
sigmoid(u_i - u_j)), but a pair is adjacent only if the two items *ended up* next to each other, which favours
pairs that came out close to a coin flip: Bradley-Terry on adjacent pairs learns rewards that are too close
together (:func:`pair_outcomes` shows it, ``tests/test_listwise.py`` measures it).

Two tiny reward models, both linear, r(x) = w . phi(x), fitted to convergence by float64 L-BFGS (each loss is
convex in w, so a fit is the optimum and two losses differ only in what they optimise):

* :func:`parameter_recovery`: phi = (gold, words), which represents the annotator exactly (w = (1/T, beta)): is
  a loss aimed at the truth, and how much label noise does it leave in the estimate?
* :func:`compare_losses`: phi = counts of the words and word pairs of the text (a few hundred weights), with a
  ridge penalty chosen per loss on validation rankings: a reward model that must learn what is good from the
  words. Measured on held-out lists against the Bayes-optimal pairwise accuracy and the gold reward.

A fit takes a second or less on one core, so a comparison can be repeated on several independent training sets and
the differences between losses judged against that seed noise; the transformer reward model of notebook 08
would cost minutes per fit.

Layout: a ranking row is ``{"prompt": str, "completions": [K str, in the order shown], "ranking": [K indices
into completions, best first]}``. Score tensors given to the losses are (B, K) **best first** (column 0 is
the item ranked first); :func:`best_first` reorders a (B, K, ...) tensor of items in shown order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from utils import review_world as rw
from utils.config_checks import check_bool, check_int, check_number, check_numbers
from utils.preference_data import RANKING_PAIRS, ranking_pair_positions
from utils.reward_model import expected_accuracy

LOSSES = ("plackett_luce", *(f"bt_{pairs}" for pairs in RANKING_PAIRS))
"""The ways to learn from a ranking: the Plackett-Luce likelihood, or Bradley-Terry on all, adjacent or
best-vs-rest pairs."""


@dataclass(frozen=True)
class ListwiseConfig:
    """Rankings from the simulated annotators and the tiny reward model fitted to them (notebook 07).
    Validated on construction (ValueError on bad values)."""

    k: int = 4
    """completions per prompt that the annotator ranks (InstructGPT: 4 to 9)"""
    train_lists: int = 500
    """rankings to learn from (a fifth of them held out as validation rankings to choose the ridge penalty)"""
    heldout_lists: int = 1_000
    """fresh lists on which the fitted reward models are measured (unranked: the metrics use the annotator's
    utilities, not one draw of its coin flips)"""
    validation_share: float = 0.2
    """share of the training rankings held out to choose the ridge penalty (the chosen penalty is then refitted
    on all of them)"""
    ridge_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    """ridge penalties tried, per ranking: loss + ridge * |w|^2; each loss gets the one whose fit predicts the
    pairs of the validation rankings best (losses differ in scale, so one penalty for all would favour some)"""
    bigrams: bool = True
    """features: counts of words and of neighbouring word pairs ("not recommend", "but the"); False: words
    only"""
    replicates: int = 6
    """independent training sets (fresh prompts, completions and coin flips each): their spread is the seed
    noise against which the losses' differences are judged"""
    max_iter: int = 200
    """L-BFGS iterations per fit (converged well before on these sizes)"""
    seed: int = 0
    """run seed: the training sets and the held-out lists draw their prompts, completions and coin flips from
    seeds derived from it (``training_rankings``, ``heldout_lists``)"""

    def __post_init__(self) -> None:
        check_int(self, "k", ge=2)
        for name in ("train_lists", "heldout_lists", "replicates", "max_iter"):
            check_int(self, name, ge=1)
        check_int(self, "seed", ge=0)
        check_number(self, "validation_share", gt=0, lt=1)
        check_numbers(self, "ridge_grid", ge=0)
        check_bool(self, "bigrams")


# --------------------------------------------------------------------------------------------------------
# The annotators' rankings
# --------------------------------------------------------------------------------------------------------
def annotator_utility(prompt: str, completion: str, annotator: rw.AnnotatorConfig) -> float:
    """u = gold(prompt + completion) / T + beta * words(completion): the annotator's pairwise logit is u_a - u_b."""
    return float(utilities_from_features(annotator_features([(prompt, completion)]), annotator)[0])


def utilities_from_features(features: torch.Tensor, annotator: rw.AnnotatorConfig) -> torch.Tensor:
    """The annotator's utilities (...) from :func:`annotator_features` (..., 2): gold / T + beta * words."""
    return features[..., 0] / annotator.temperature + annotator.length_bias_per_word * features[..., 1]


def list_utilities(lists: Sequence[dict], annotator: rw.AnnotatorConfig) -> torch.Tensor:
    """(B, K) float64: the annotator's utility of every completion of ``lists``, in shown order."""
    return utilities_from_features(list_features(lists, annotator_features), annotator)


def sample_plackett_luce(utilities: Sequence[float], rng: random.Random) -> list[int]:
    """A ranking (indices, best first) drawn from Plackett-Luce: the best by softmax(u), then the best of the rest."""
    remaining = list(range(len(utilities)))
    ranking = []
    while remaining:
        top = max(utilities[i] for i in remaining)  # shift before exp: utilities reach 1 / T = 4 and beyond
        weights = [math.exp(utilities[i] - top) for i in remaining]
        ranking.append(remaining.pop(rng.choices(range(len(remaining)), weights=weights)[0]))
    return ranking


def plackett_luce_log_prob(utilities: Sequence[float], ranking: Sequence[int]) -> float:
    """log P(ranking | utilities) under Plackett-Luce (``ranking``: indices, best first). Plain Python."""
    log_prob = 0.0
    for position, item in enumerate(ranking):
        rest = [utilities[i] for i in ranking[position:]]
        top = max(rest)
        log_prob += utilities[item] - top - math.log(sum(math.exp(u - top) for u in rest))
    return log_prob


def draw_lists(n: int, k: int, seed: int, config: rw.GrammarConfig | None = None) -> list[dict]:
    """``n`` lists ``{"prompt", "completions"}``: an RL prompt and ``k`` distinct generator continuations of it.

    The generator's reviews are grouped by their opening (the RL prompt, ``rw.opening``); each group of ``k``
    reviews with the same opening becomes a list, so its continuations are ``k`` independent samples of
    p(review | opening), as ``rw.sample_completions`` draws them, and the prompts follow the openings'
    frequencies, as ``rw.rl_prompts`` draws them. (Rejection sampling for a given list of prompts would wait for
    its rarest prompt; grouping costs about k reviews per list.) A group that drew the same continuation twice is
    dropped (a ranking needs distinct items): a few in a thousand for k = 4. Lists come in the order their last
    review was drawn, so more lists from the same seed begin with the same lists.
    """
    generator = rw.ReviewGenerator(config, seed)
    pending: dict[str, list[str]] = {}
    lists: list[dict] = []
    while len(lists) < n:
        text = generator.sample()
        prompt = rw.opening(text)
        if prompt is None:
            continue
        group = pending.setdefault(prompt, [])
        group.append(text[len(prompt) :])
        if len(group) == k:
            if len(set(group)) == k:
                lists.append({"prompt": prompt, "completions": list(group)})
            group.clear()
    return lists


def rank_lists(
    lists: Sequence[dict], annotator: rw.AnnotatorConfig, utilities: torch.Tensor | None = None
) -> list[dict]:
    """Each list with the annotator's ``ranking``: indices into its completions, best first, drawn from
    Plackett-Luce on the annotator's utilities with the coin flips of ``annotator.seed``. Pass ``utilities``
    (B, K) from :func:`list_utilities` to rank the same lists again without recomputing them."""
    utilities = list_utilities(lists, annotator) if utilities is None else utilities
    rng = random.Random(annotator.seed)
    return [
        {"prompt": row["prompt"], "completions": list(row["completions"]), "ranking": sample_plackett_luce(u, rng)}
        for row, u in zip(lists, utilities.tolist())
    ]


def ranking_rows(
    n: int, k: int, seed: int, annotator: rw.AnnotatorConfig | None = None, config: rw.GrammarConfig | None = None
) -> list[dict]:
    """``n`` rankings ``{"prompt", "completions", "ranking"}``: :func:`draw_lists` ranked by :func:`rank_lists`
    (the annotator's coin flips default to seed + 2, as in ``rw.preference_pairs``)."""
    return rank_lists(draw_lists(n, k, seed, config), annotator or rw.AnnotatorConfig(seed=seed + 2))


def ranked_completions(row: dict) -> dict:
    """A ranking row as ``ranking_to_pairwise`` reads it: ``{"prompt", "completions"}``, completions best first."""
    return {"prompt": row["prompt"], "completions": [row["completions"][i] for i in row["ranking"]]}


def best_first(items: torch.Tensor, rankings: torch.Tensor) -> torch.Tensor:
    """``items`` (B, K, ...) in shown order, reordered best first by ``rankings`` (B, K) of indices."""
    index = rankings.view(*rankings.shape, *([1] * (items.dim() - 2))).expand_as(items)
    return items.gather(1, index)  # (B, K, ...)


# --------------------------------------------------------------------------------------------------------
# The losses (scores best first)
# --------------------------------------------------------------------------------------------------------
def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.size(1) < 2:
        raise ValueError(
            f"scores must be a (B, K) tensor with K >= 2, best first; got {getattr(scores, 'shape', scores)}"
        )


def plackett_luce_loss(scores: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of rankings under Plackett-Luce; ``scores`` (B, K) best first.

    Per ranking: sum over positions i < K of logsumexp(s_i, ..., s_K) - s_i (the last position is a choice
    from one item, log 1 = 0). The logsumexp of every suffix at once is a cumulative logsumexp of the
    reversed scores. ``reduction="none"``: (B,), one value per ranking; "mean": their mean.
    """
    _check_scores(scores)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    suffix_logsumexp = torch.logcumsumexp(scores.flip(1), dim=1).flip(1)  # (B, K): logsumexp(s_i, ..., s_K)
    loss = (suffix_logsumexp - scores)[:, :-1].sum(dim=1)  # (B,)
    return loss.mean() if reduction == "mean" else loss


def plackett_luce_gradient(scores: torch.Tensor) -> torch.Tensor:
    """d L_PL / d scores, (B, K), for the summed (per-ranking) loss, written out by hand.

    Item at position j is in the choice set of every stage i <= j; at each such stage i < K its share of the
    softmax, exp(s_j) / sum_{l >= i} exp(s_l), pushes it down, and at its own stage (j < K) it gains -1:

        dL / ds_j = sum_{i <= min(j, K-1)} softmax_i(s)_j - [j < K].

    The winner gets -(1 - p_1(winner)) < 0 (pushed up), the last item the sum of its shares (pushed down).
    """
    _check_scores(scores)
    k = scores.size(1)
    positions = torch.arange(k)
    in_stage = positions[None, :] >= positions[:, None]  # (K stages, K items): item j still in the set at stage i
    logits = scores[:, None, :].masked_fill(~in_stage, -math.inf)  # (B, K, K)
    shares = torch.softmax(logits, dim=-1)[:, :-1]  # (B, K-1, K): stage K (one item) decides nothing
    chosen = torch.eye(k, dtype=scores.dtype)[:-1]  # (K-1, K): stage i chooses position i
    return (shares - chosen).sum(dim=1)  # (B, K)


def pairwise_ranking_loss(scores: torch.Tensor, pairs: str = "all", reduction: str = "mean") -> torch.Tensor:
    """Bradley-Terry on the ``pairs`` of each ranking (see ``ranking_pair_positions``); ``scores`` (B, K) best first.

    Per ranking the pair losses are averaged (InstructGPT's 1 / C(K, 2) for "all"), so every ranking weighs
    the same; ``reduction="none"``: (B,), "mean": the mean over rankings.
    """
    _check_scores(scores)
    better, worse = map(list, zip(*ranking_pair_positions(scores.size(1), pairs)))
    # bradley_terry_loss's -logsigmoid(x), written as the same function softplus(-x): in torch 2.13 on the CPU
    # logsigmoid's backward is ~50 times slower, which dominates these tiny fits (equal values: the tests)
    loss = F.softplus(scores[:, worse] - scores[:, better]).mean(dim=1)  # (B,)
    return loss.mean() if reduction == "mean" else loss


def ranking_loss(scores: torch.Tensor, loss: str | Callable, reduction: str = "mean") -> torch.Tensor:
    """One of :data:`LOSSES` on ``scores`` (B, K) best first; or your own: a function of (scores, reduction)."""
    if callable(loss):
        return loss(scores, reduction)
    if loss == "plackett_luce":
        return plackett_luce_loss(scores, reduction)
    if loss.startswith("bt_") and loss[3:] in RANKING_PAIRS:
        return pairwise_ranking_loss(scores, loss[3:], reduction)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


# --------------------------------------------------------------------------------------------------------
# Two tiny reward models, both linear: r(x) = w . phi(x)
# --------------------------------------------------------------------------------------------------------
def ngrams(text: str, bigrams: bool = True) -> list[str]:
    """The words of ``text`` (punctuation included, as the grammar's terminals) and, with ``bigrams``, each
    neighbouring pair "w1 w2"."""
    words = rw.split_words(text)
    return words + ([f"{a} {b}" for a, b in zip(words, words[1:])] if bigrams else [])


class WordCounts:
    """phi(x) = the counts of the words (and word pairs) of x that occur in the texts it was built from."""

    def __init__(self, texts: Sequence[str], bigrams: bool = True):
        self.bigrams = bigrams
        self.vocabulary = {g: i for i, g in enumerate(sorted({g for t in texts for g in ngrams(t, bigrams)}))}

    def __len__(self) -> int:
        return len(self.vocabulary)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), V) float64 counts; n-grams not in the vocabulary are ignored."""
        rows, columns = [], []
        for row, text in enumerate(texts):
            for gram in ngrams(text, self.bigrams):
                if gram in self.vocabulary:
                    rows.append(row)
                    columns.append(self.vocabulary[gram])
        counts = np.zeros((len(texts), len(self.vocabulary)))
        np.add.at(counts, (rows, columns), 1.0)
        return torch.from_numpy(counts)


def annotator_features(texts: Sequence[tuple[str, str]]) -> torch.Tensor:
    """phi = (gold(prompt + completion), words(completion)) for each (prompt, completion), (N, 2) float64.

    The annotator's utility is exactly w . phi with w = (1 / T, beta), so a reward model on these two
    features can represent it: the two-parameter reward model of section 8, fitted here to rankings.
    """
    return torch.tensor([[rw.gold_reward(p + c), rw.word_count(c)] for p, c in texts], dtype=torch.float64)


def list_features(rows: Sequence[dict], featurize: WordCounts | Callable) -> torch.Tensor:
    """(B, K, V) features of each row's completions, in shown order: ``featurize`` is a :class:`WordCounts`
    (it reads prompt + completion) or :func:`annotator_features` (it reads the pair)."""
    k = len(rows[0]["completions"])
    if featurize is annotator_features:
        features = annotator_features([(row["prompt"], c) for row in rows for c in row["completions"]])
    else:
        features = featurize([row["prompt"] + c for row in rows for c in row["completions"]])
    return features.view(len(rows), k, -1)


def fit_linear_reward(
    features: torch.Tensor, rankings: torch.Tensor, loss: str | Callable, ridge: float = 0.0, max_iter: int = 200
) -> torch.Tensor:
    """Weights w (V,) minimising the mean over rankings of ``loss`` on the scores features @ w, + ridge * |w|^2.

    ``features`` (B, K, V) in shown order, ``rankings`` (B, K) indices best first. Float64 L-BFGS from w = 0:
    every loss here is convex in the scores, which are linear in w, so the fit is the optimum (unique with a
    ridge), and two losses differ only by what they optimise, not by how training went.
    """
    ordered = best_first(features, rankings)  # (B, K, V)
    w = torch.zeros(features.size(-1), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w], max_iter=max_iter, tolerance_grad=1e-8, tolerance_change=1e-11, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        objective = ranking_loss(ordered @ w, loss) + ridge * (w**2).sum()
        objective.backward()
        return objective

    optimizer.step(closure)
    return w.detach()


def rankings_tensor(rows: Sequence[dict]) -> torch.Tensor:
    """The rows' rankings, (B, K) indices best first."""
    return torch.tensor([row["ranking"] for row in rows], dtype=torch.long)


# --------------------------------------------------------------------------------------------------------
# Metrics on held-out lists
# --------------------------------------------------------------------------------------------------------
def _all_pairs(k: int) -> tuple[list[int], list[int]]:
    first, second = map(list, zip(*ranking_pair_positions(k, "all")))
    return first, second


def pairwise_expected_accuracy(scores: torch.Tensor, utilities: torch.Tensor) -> float:
    """Over every pair of every list, the probability that the annotator orders it as ``scores`` do.

    ``scores`` and the annotator's ``utilities`` (B, K) in the same order. On a pair the annotator puts i above
    j with probability sigmoid(u_i - u_j); a tie in the scores is a coin flip (``expected_accuracy``).
    """
    i, j = _all_pairs(scores.size(1))
    model_probs = torch.sigmoid(scores[:, i] - scores[:, j]).flatten().numpy()
    true_probs = torch.sigmoid(utilities[:, i] - utilities[:, j]).flatten().numpy()
    return expected_accuracy(model_probs, true_probs)


def pairwise_bayes_accuracy(utilities: torch.Tensor) -> float:
    """The Bayes-optimal value of :func:`pairwise_expected_accuracy`: the mean of max(p, 1 - p) over the pairs."""
    i, j = _all_pairs(utilities.size(1))
    p = torch.sigmoid(utilities[:, i] - utilities[:, j])
    return float(torch.maximum(p, 1 - p).mean())


def kendall_tau(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b between the rows of ``x`` and ``y`` (B, K): (B,), NaN where a row is constant.

    tau-b = (concordant - discordant) / sqrt(untied_x * untied_y) over the K(K-1)/2 pairs of a row, untied_x
    counting the pairs that x does not tie (scipy.stats.kendalltau's default). For rows without ties it is
    1 - 2 * (the share of pairs the two order differently).
    """
    i, j = _all_pairs(x.size(1))
    sign_x, sign_y = torch.sign(x[:, i] - x[:, j]), torch.sign(y[:, i] - y[:, j])  # (B, K(K-1)/2)
    untied_x, untied_y = (sign_x != 0).sum(1).double(), (sign_y != 0).sum(1).double()
    return (sign_x * sign_y).sum(1).double() / torch.sqrt(untied_x * untied_y)  # 0 / 0 = NaN for a constant row


@dataclass(frozen=True)
class HeldOut:
    """Held-out lists and, as tensors in their shown order, what every fitted reward model is measured against."""

    lists: list[dict]  # {"prompt", "completions"}: no ranking is needed, the metrics use the annotator's utilities
    utilities: torch.Tensor  # (B, K) the annotator's u = gold / T + beta * words
    gold: torch.Tensor  # (B, K) the gold reward


def heldout_set(lists: Sequence[dict], annotator: rw.AnnotatorConfig) -> HeldOut:
    """``lists`` with the annotator's utilities and the gold reward of every completion."""
    features = list_features(lists, annotator_features)  # (B, K, 2): gold, words
    return HeldOut(lists=list(lists), utilities=utilities_from_features(features, annotator), gold=features[..., 0])


def evaluate_scores(scores: torch.Tensor, heldout: HeldOut) -> dict[str, float]:
    """Metrics of a reward model's ``scores`` (B, K) on held-out lists, in the lists' shown order.

    ``expected_accuracy``: over all pairs, the probability that the annotator agrees with the order of the
    scores, against its ceiling ``bayes_accuracy``. ``kendall_tau_gold``: Kendall's tau between scores and
    gold within each list (the mean over lists whose gold is not constant): how well the model orders by the
    truth, length bias excluded. ``best_of_k_gold``: the mean gold reward of each list's top-scored completion
    (best-of-K selection by the reward model), between ``mean_gold`` (a random pick) and
    ``oracle_best_of_k_gold``.
    """
    tau = kendall_tau(scores, heldout.gold)
    picked = heldout.gold.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)  # (B,)
    return {
        "expected_accuracy": pairwise_expected_accuracy(scores, heldout.utilities),
        "bayes_accuracy": pairwise_bayes_accuracy(heldout.utilities),
        "kendall_tau_gold": float(tau[~tau.isnan()].mean()),
        "best_of_k_gold": float(picked.mean()),
        "oracle_best_of_k_gold": float(heldout.gold.max(1).values.mean()),
        "mean_gold": float(heldout.gold.mean()),
    }


# --------------------------------------------------------------------------------------------------------
# The comparisons
# --------------------------------------------------------------------------------------------------------
def seeded(annotator: rw.AnnotatorConfig, seed: int) -> rw.AnnotatorConfig:
    """The same annotator (temperature, length bias) with the coin flips of ``seed``."""
    return rw.AnnotatorConfig(annotator.temperature, annotator.length_bias_per_word, seed=seed)


def parameter_recovery(
    lists: Sequence[dict],
    annotator: rw.AnnotatorConfig,
    redraws: int,
    seed: int = 0,
    losses: Sequence[str] = LOSSES,
) -> dict[str, np.ndarray]:
    """Fit the two-parameter reward model w . (gold, words) with each loss to ``redraws`` rankings of the same
    ``lists`` (the annotator's coin flips redrawn: seeds seed, seed + 1, ...); loss -> (redraws, 2) estimates.

    The truth is w = (1 / T, beta). A consistent loss centres its estimates on it; the spread over redraws is
    the label noise each loss leaves in the estimate (no ridge: nothing but the loss differs).
    """
    features = list_features(lists, annotator_features)  # (B, K, 2)
    utilities = utilities_from_features(features, annotator)  # (B, K)
    estimates: dict[str, list] = {loss: [] for loss in losses}
    for redraw in range(redraws):
        rankings = rankings_tensor(rank_lists(lists, seeded(annotator, seed + redraw), utilities))
        for loss in losses:
            estimates[loss].append(fit_linear_reward(features, rankings, loss).numpy())
    return {loss: np.array(values) for loss, values in estimates.items()}


def validation_pair_loss(w: torch.Tensor, features: torch.Tensor, rankings: torch.Tensor) -> float:
    """Mean Bradley-Terry loss of the scores on every pair of the (sampled) validation rankings.

    Every pair of a Plackett-Luce ranking is a Bradley-Terry choice of the annotator, so this is the
    log-loss of the scores as pairwise predictions, whichever loss trained them: smooth, where the share of
    pairs ordered right (on a hundred rankings) moves in steps of a pair and chose penalties 10 times off.
    """
    return float(pairwise_ranking_loss(best_first(features, rankings) @ w, "all"))


def fit_with_validation(
    features: torch.Tensor, rankings: torch.Tensor, loss: str, config: ListwiseConfig
) -> tuple[torch.Tensor, float]:
    """The fit of ``loss`` with the ridge penalty (from ``config.ridge_grid``) that predicts the validation
    rankings' pairs best (:func:`validation_pair_loss`); returns (w, that penalty). The last
    ``validation_share`` of the rankings validate; the chosen penalty is then refitted on all of them."""
    n_fit = len(rankings) - max(1, round(config.validation_share * len(rankings)))
    losses = [
        validation_pair_loss(
            fit_linear_reward(features[:n_fit], rankings[:n_fit], loss, ridge, config.max_iter),
            features[n_fit:],
            rankings[n_fit:],
        )
        for ridge in config.ridge_grid
    ]
    ridge = config.ridge_grid[int(np.argmin(losses))]
    return fit_linear_reward(features, rankings, loss, ridge, config.max_iter), ridge


def compare_losses(
    train: Sequence[dict], heldout: HeldOut, config: ListwiseConfig, losses: Sequence[str] = LOSSES
) -> list[dict]:
    """Fit the word-count reward model with each of ``losses`` to the same training rankings ``train``; one
    record per loss: the loss, its ridge penalty and :func:`evaluate_scores` on the held-out lists.

    The vocabulary is built from the training texts only (a held-out word never seen in training scores 0).
    """
    counts = WordCounts([row["prompt"] + c for row in train for c in row["completions"]], config.bigrams)
    features, rankings = list_features(train, counts), rankings_tensor(train)
    heldout_features = list_features(heldout.lists, counts)  # (B, K, V)
    records = []
    for loss in losses:
        w, ridge = fit_with_validation(features, rankings, loss, config)
        records.append({"loss": loss, "ridge": ridge, **evaluate_scores(heldout_features @ w, heldout)})
    return records


def _data_seed(config: ListwiseConfig, replicate: int | None) -> int:
    """The review-world seed of training set ``replicate`` (None: the held-out lists); each draw uses its seed
    and the next, so seeds 10 apart never share one, and every ``config.seed`` has its own."""
    base = 1_000 * (config.seed + 1)
    return base + 500 if replicate is None else base + 10 * replicate


def training_rankings(config: ListwiseConfig, replicate: int, annotator: rw.AnnotatorConfig) -> list[dict]:
    """Training set ``replicate`` of ``config``: ``config.train_lists`` fresh lists, ranked by ``annotator`` with
    coin flips of their own."""
    seed = _data_seed(config, replicate)
    return rank_lists(draw_lists(config.train_lists, config.k, seed), seeded(annotator, seed + 2))


def heldout_lists(config: ListwiseConfig, annotator: rw.AnnotatorConfig) -> HeldOut:
    """``config.heldout_lists`` fresh lists (prompts and completions unseen in every training set)."""
    return heldout_set(draw_lists(config.heldout_lists, config.k, _data_seed(config, None)), annotator)


def run_comparison(
    train_sets: Sequence[Sequence[dict]], heldout: HeldOut, config: ListwiseConfig, losses: Sequence[str] = LOSSES
) -> list[dict]:
    """:func:`compare_losses` on each training set (e.g. ``training_rankings(config, r, annotator)`` for r in
    ``range(config.replicates)``), all measured on the same held-out lists; each record gains ``replicate``."""
    return [
        {"replicate": replicate, **record}
        for replicate, train in enumerate(train_sets)
        for record in compare_losses(train, heldout, config, losses)
    ]


def pair_outcomes(rows: Sequence[dict], utilities: torch.Tensor, pairs: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """For the pairs of each ranking that ``pairs`` selects: (p, first_above), both (n_pairs,).

    ``utilities`` (B, K): the annotator's, in shown order (:func:`list_utilities`). Each pair {i, j} is oriented
    by the order shown (i < j), not by the outcome: p = sigmoid(u_i - u_j) is the annotator's probability of
    preferring i in a pair of its own, and ``first_above`` whether the ranking put i above j. Where the
    selection of pairs does not depend on how they came out, ``first_above`` is true with probability p:
    binned, the points lie on the diagonal.
    """
    ranked = rankings_tensor(rows)  # (B, K) best first
    better, worse = map(list, zip(*ranking_pair_positions(ranked.size(1), pairs)))
    first = torch.minimum(ranked[:, better], ranked[:, worse])  # (B, n) the item shown first
    second = torch.maximum(ranked[:, better], ranked[:, worse])
    p = torch.sigmoid(utilities.gather(1, first) - utilities.gather(1, second))
    return p.flatten().numpy(), (first == ranked[:, better]).flatten().numpy()
