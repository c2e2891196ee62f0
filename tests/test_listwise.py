"""Listwise preferences (utils/listwise.py): the Plackett-Luce loss against hand computations, Bradley-Terry and
autograd; the annotators' Plackett-Luce rankings against their pairwise model; the pair schemes; the metrics
against scipy; the linear fits against planted weights. Sizes are tiny (a few hundred lists at most)."""

import itertools
import math
import random

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from utils import listwise as lw
from utils import review_world as rw
from utils.preference_data import ranking_pair_positions, ranking_to_pairwise, validate_preference_rows
from utils.reward_model import bradley_terry_loss


# ---------------------------------------------------------------------------------------------------------
# The Plackett-Luce loss
# ---------------------------------------------------------------------------------------------------------
def test_plackett_luce_loss_k3_by_hand():
    scores = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.float64)  # best first
    # Choose the winner from all three, then the second from the last two; the last choice is forced.
    first = math.log(math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)) - 2.0
    second = math.log(math.exp(0.5) + math.exp(-1.0)) - 0.5
    assert lw.plackett_luce_loss(scores).item() == pytest.approx(first + second, abs=1e-12)
    # Equal scores: all 3! orders equally likely, so the NLL of any one is log 6.
    assert lw.plackett_luce_loss(torch.zeros(1, 3)).item() == pytest.approx(math.log(6), abs=1e-6)


def test_plackett_luce_equals_bradley_terry_at_k2():
    scores = torch.randn(1_000, 2, generator=torch.Generator().manual_seed(0)) * 5  # (B, 2) best first
    bt = bradley_terry_loss(scores[:, 0], scores[:, 1], reduction="none")
    assert (lw.plackett_luce_loss(scores, reduction="none") - bt).abs().max() < 1e-6
    for pairs in ("all", "adjacent", "best_vs_rest"):  # a ranking of two holds one pair, whatever the scheme
        assert (lw.pairwise_ranking_loss(scores, pairs, reduction="none") - bt).abs().max() < 1e-6


def test_plackett_luce_loss_is_minus_the_log_probability_of_the_ranking():
    rng = random.Random(1)
    utilities = [[rng.gauss(0, 2) for _ in range(5)] for _ in range(20)]
    rankings = [rng.sample(range(5), 5) for _ in range(20)]
    ordered = lw.best_first(torch.tensor(utilities, dtype=torch.float64), torch.tensor(rankings))
    expected = torch.tensor([-lw.plackett_luce_log_prob(u, r) for u, r in zip(utilities, rankings)])
    assert torch.allclose(lw.plackett_luce_loss(ordered, reduction="none"), expected.double(), atol=1e-10)


def test_plackett_luce_probabilities_of_all_orders_sum_to_one():
    utilities = [1.3, -0.2, 0.4, 2.0]
    total = sum(math.exp(lw.plackett_luce_log_prob(utilities, order)) for order in itertools.permutations(range(4)))
    assert total == pytest.approx(1.0, abs=1e-12)


def test_plackett_luce_gradient_matches_autograd():
    scores = (torch.randn(50, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3).requires_grad_()
    lw.plackett_luce_loss(scores, reduction="none").sum().backward()
    assert torch.allclose(lw.plackett_luce_gradient(scores.detach()), scores.grad, atol=1e-12)
    # K = 2 by hand: d/ds_1 of -log sigmoid(s_1 - s_2) is -(1 - sigmoid(s_1 - s_2)), and the opposite for s_2.
    pair = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    push = 1 - 1 / (1 + math.exp(-1.5))
    assert torch.allclose(lw.plackett_luce_gradient(pair), torch.tensor([[-push, push]], dtype=torch.float64))


def test_pairwise_ranking_loss_k3_by_hand():
    s = torch.tensor([[1.0, 0.2, -0.4]], dtype=torch.float64)

    def bt(a, b):
        return -math.log(1 / (1 + math.exp(-(a - b))))

    all_pairs = (bt(1.0, 0.2) + bt(1.0, -0.4) + bt(0.2, -0.4)) / 3
    assert lw.pairwise_ranking_loss(s, "all").item() == pytest.approx(all_pairs, abs=1e-12)
    assert lw.pairwise_ranking_loss(s, "adjacent").item() == pytest.approx((bt(1.0, 0.2) + bt(0.2, -0.4)) / 2)
    assert lw.pairwise_ranking_loss(s, "best_vs_rest").item() == pytest.approx((bt(1.0, 0.2) + bt(1.0, -0.4)) / 2)
    assert lw.ranking_loss(s, "bt_adjacent").item() == lw.pairwise_ranking_loss(s, "adjacent").item()
    assert lw.ranking_loss(s, "plackett_luce").item() == lw.plackett_luce_loss(s).item()
    with pytest.raises(ValueError, match="loss must be one of"):
        lw.ranking_loss(s, "bt_random")
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        lw.plackett_luce_loss(torch.zeros(3))


def test_best_first_reorders_each_row():
    items = torch.arange(24.0).view(2, 4, 3)  # (B, K, V)
    rankings = torch.tensor([[2, 0, 3, 1], [1, 3, 0, 2]])
    out = lw.best_first(items, rankings)
    for b in range(2):
        for position in range(4):
            assert torch.equal(out[b, position], items[b, rankings[b, position]])
    assert torch.equal(lw.best_first(items[..., 0], rankings)[1], items[1, [1, 3, 0, 2], 0])


# ---------------------------------------------------------------------------------------------------------
# The annotators' rankings
# ---------------------------------------------------------------------------------------------------------
def test_sampled_rankings_follow_plackett_luce():
    utilities, draws = [1.0, 0.0, -0.5], 20_000
    rng = random.Random(3)
    counts = {}
    for _ in range(draws):
        order = tuple(lw.sample_plackett_luce(utilities, rng))
        counts[order] = counts.get(order, 0) + 1
    for order in itertools.permutations(range(3)):
        p = math.exp(lw.plackett_luce_log_prob(utilities, order))
        # 4.5 binomial standard errors: a correct sampler fails about once in 150,000 seeds per order
        assert abs(counts.get(order, 0) / draws - p) < 4.5 * math.sqrt(p * (1 - p) / draws), order
    # "Sort by utility" (no noise) or a uniform shuffle would be far off: the most likely order has p = 0.40.
    assert counts[(0, 1, 2)] / draws == pytest.approx(
        math.exp(lw.plackett_luce_log_prob(utilities, (0, 1, 2))), abs=0.02
    )


def test_every_pair_of_a_sampled_ranking_is_a_bradley_terry_choice():
    # The Gumbel property: in a Plackett-Luce ranking, i comes above j with probability sigmoid(u_i - u_j),
    # whatever the other items. (It fails for, e.g., a ranking by u + Gaussian noise.)
    utilities, draws = [2.0, 1.2, 0.0, -0.3], 20_000
    rng = random.Random(4)
    above = np.zeros((4, 4))
    for _ in range(draws):
        position = {item: p for p, item in enumerate(lw.sample_plackett_luce(utilities, rng))}
        for i, j in itertools.permutations(range(4), 2):
            above[i, j] += position[i] < position[j]
    for i, j in itertools.combinations(range(4), 2):
        p = 1 / (1 + math.exp(-(utilities[i] - utilities[j])))
        assert abs(above[i, j] / draws - p) < 4.5 * math.sqrt(p * (1 - p) / draws), (i, j)


def test_annotator_utility_differences_are_the_pairwise_logits():
    annotator = rw.AnnotatorConfig()
    for row in rw.preference_pairs(30, seed=5):
        u_chosen = lw.annotator_utility(row["prompt"], row["chosen"], annotator)
        u_rejected = lw.annotator_utility(row["prompt"], row["rejected"], annotator)
        p = rw.preference_probability(row["prompt"], row["chosen"], row["rejected"], annotator)
        assert 1 / (1 + math.exp(-(u_chosen - u_rejected))) == pytest.approx(p, abs=1e-12)


def test_ranking_rows_format():
    rows = lw.ranking_rows(40, k=4, seed=8)
    assert len(rows) == 40 and rows == lw.ranking_rows(40, k=4, seed=8)  # deterministic
    for row in rows:
        assert sorted(row) == ["completions", "prompt", "ranking"]
        assert len(set(row["completions"])) == 4 and sorted(row["ranking"]) == [0, 1, 2, 3]
        assert all(rw.is_grammatical(row["prompt"] + c) for c in row["completions"])
    # More lists from the same seed begin with the same lists (the draws are made in order).
    assert lw.draw_lists(60, 4, seed=8)[:40] == [{"prompt": r["prompt"], "completions": r["completions"]} for r in rows]
    pairs = [p for row in rows for p in ranking_to_pairwise(lw.ranked_completions(row))]
    assert len(pairs) == 40 * 6 and validate_preference_rows(pairs) == []
    first = lw.ranked_completions(rows[0])["completions"][0]
    assert first == rows[0]["completions"][rows[0]["ranking"][0]]


def test_rank_lists_redraws_only_the_coin_flips():
    lists = lw.draw_lists(200, 4, seed=9)
    a = lw.rank_lists(lists, rw.AnnotatorConfig(seed=1))
    b = lw.rank_lists(lists, rw.AnnotatorConfig(seed=2))
    assert [r["completions"] for r in a] == [r["completions"] for r in b] == [r["completions"] for r in lists]
    assert a == lw.rank_lists(lists, rw.AnnotatorConfig(seed=1))
    assert 0 < sum(x["ranking"] != y["ranking"] for x, y in zip(a, b)) < 200


def test_ranking_pair_positions():
    assert ranking_pair_positions(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert ranking_pair_positions(4, "adjacent") == [(0, 1), (1, 2), (2, 3)]
    assert ranking_pair_positions(4, "best_vs_rest") == [(0, 1), (0, 2), (0, 3)]
    row = {"prompt": "Q", "completions": list("abcd"), "id": 7}
    adjacent = ranking_to_pairwise(row, pairs="adjacent")
    assert [(p["chosen"], p["rejected"]) for p in adjacent] == [("a", "b"), ("b", "c"), ("c", "d")]
    assert all(p["prompt"] == "Q" and p["id"] == 7 for p in adjacent)
    assert ranking_to_pairwise(row) == ranking_to_pairwise(row, pairs="all")  # the default is unchanged
    with pytest.raises(ValueError, match="pairs must be one of"):
        ranking_pair_positions(4, "random")
    with pytest.raises(ValueError, match="k >= 2"):
        ranking_pair_positions(1)


# ---------------------------------------------------------------------------------------------------------
# Features, fits, metrics
# ---------------------------------------------------------------------------------------------------------
def test_word_counts():
    counts = lw.WordCounts(["the plot was good.", "the plot was dull."])
    x = counts(["the plot was good. the plot was great."])  # "great", "was great" unseen: ignored
    vocabulary = counts.vocabulary
    assert x[0, vocabulary["the"]] == 2 and x[0, vocabulary["plot was"]] == 2 and x[0, vocabulary["good ."]] == 1
    # seen words: the, plot, was (2 each), good (1), "." (2); seen pairs: "the plot", "plot was" (2 each),
    # "was good", "good ." (1 each); ". the", "was great", "great ." and "great" are unseen
    assert x[0, vocabulary["dull"]] == 0 and x.sum() == 9 + 6
    assert len(lw.WordCounts(["the plot was good."], bigrams=False)) == 5


def test_fit_recovers_planted_weights_and_adjacent_pairs_shrink_them():
    # Synthetic lists: 2 features per item, utilities features @ (1.5, -0.7), Plackett-Luce rankings.
    generator = torch.Generator().manual_seed(6)
    features = torch.randn(4_000, 4, 2, generator=generator, dtype=torch.float64)  # (B, K, 2)
    truth = torch.tensor([1.5, -0.7], dtype=torch.float64)
    rng = random.Random(6)
    rankings = torch.tensor([lw.sample_plackett_luce((f @ truth).tolist(), rng) for f in features])
    fits = {loss: lw.fit_linear_reward(features, rankings, loss) for loss in lw.LOSSES}
    for loss in ("plackett_luce", "bt_all", "bt_best_vs_rest"):  # consistent: within 0.1 at this size
        assert (fits[loss] - truth).abs().max() < 0.1, (loss, fits[loss])
    # Adjacent pairs are chosen by the outcome: a pair that ended up adjacent is closer to a coin flip than
    # sigmoid(u_i - u_j), so Bradley-Terry on them estimates smaller weights (here about 0.8 of the truth).
    assert fits["bt_adjacent"].norm() < 0.9 * truth.norm()
    # At the optimum the gradient vanishes (the fit converged): below 1e-5, from about 0.5 at w = 0.
    w = fits["plackett_luce"].clone().requires_grad_()
    lw.plackett_luce_loss(lw.best_first(features, rankings) @ w).backward()
    assert w.grad.abs().max() < 1e-5


def test_ridge_shrinks_the_fit():
    features = torch.randn(300, 4, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rankings = torch.stack([torch.randperm(4, generator=torch.Generator().manual_seed(i)) for i in range(300)])
    plain = lw.fit_linear_reward(features, rankings, "plackett_luce")
    shrunk = lw.fit_linear_reward(features, rankings, "plackett_luce", ridge=1.0)
    assert shrunk.norm() < 0.5 * plain.norm()


def test_kendall_tau_matches_scipy():
    rng = np.random.default_rng(8)
    x = rng.integers(0, 3, (200, 5)).astype(float)  # small integers: many ties
    y = rng.integers(0, 3, (200, 5)).astype(float)
    ours = lw.kendall_tau(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    for row in range(200):
        reference = kendalltau(x[row], y[row]).statistic
        assert (np.isnan(ours[row]) and np.isnan(reference)) or ours[row] == pytest.approx(reference, abs=1e-12)
    assert np.isnan(ours).any()  # constant rows occur and are NaN, as in scipy


def test_pairwise_accuracy_against_its_ceiling():
    utilities = torch.randn(100, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 2
    bayes = lw.pairwise_bayes_accuracy(utilities)
    assert lw.pairwise_expected_accuracy(utilities, utilities) == pytest.approx(bayes, abs=1e-12)
    assert lw.pairwise_expected_accuracy(-utilities, utilities) == pytest.approx(1 - bayes, abs=1e-12)
    assert lw.pairwise_expected_accuracy(torch.zeros_like(utilities), utilities) == pytest.approx(0.5)
    # One list by hand: u = (1, 0, 0), scores order items 0 > 1 > 2. Pairs (0,1), (0,2): sigmoid(1) each;
    # (1,2): the annotator is indifferent, 1/2.
    one = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    s1 = 1 / (1 + math.exp(-1))
    by_hand = (2 * s1 + 0.5) / 3
    assert lw.pairwise_expected_accuracy(torch.tensor([[3.0, 2.0, 1.0]]).double(), one) == pytest.approx(by_hand)
    assert lw.pairwise_bayes_accuracy(one) == pytest.approx(by_hand)


def test_evaluate_scores_by_hand():
    heldout = lw.HeldOut(
        lists=[],  # not read by evaluate_scores
        utilities=torch.tensor([[4.0, 0.0, -4.0], [0.0, 1.0, 2.0]], dtype=torch.float64),
        gold=torch.tensor([[0.9, 0.1, -0.8], [0.5, 0.5, 0.5]], dtype=torch.float64),
    )
    metrics = lw.evaluate_scores(torch.tensor([[0.0, 2.0, 1.0], [3.0, 2.0, 1.0]], dtype=torch.float64), heldout)
    assert metrics["kendall_tau_gold"] == pytest.approx(-1 / 3)  # row 1's gold is constant: left out
    assert metrics["best_of_k_gold"] == pytest.approx((0.1 + 0.5) / 2)
    assert metrics["oracle_best_of_k_gold"] == pytest.approx((0.9 + 0.5) / 2)
    assert metrics["mean_gold"] == pytest.approx(1.7 / 6)
    assert metrics["expected_accuracy"] < metrics["bayes_accuracy"]


def test_config_validation():
    assert lw.ListwiseConfig().k == 4
    with pytest.raises(ValueError, match="ListwiseConfig.k must be"):
        lw.ListwiseConfig(k=1)
    with pytest.raises(ValueError, match="ListwiseConfig.validation_share"):
        lw.ListwiseConfig(validation_share=1.0)
    with pytest.raises(ValueError, match="ListwiseConfig.ridge_grid"):
        lw.ListwiseConfig(ridge_grid=(-1.0,))


def test_parameter_recovery_and_comparison_on_a_tiny_config():
    annotator = rw.AnnotatorConfig()
    lists = lw.draw_lists(150, 4, seed=10)
    estimates = lw.parameter_recovery(lists, annotator, redraws=2, losses=("plackett_luce", "bt_adjacent"))
    assert estimates["plackett_luce"].shape == (2, 2)
    # 150 rankings: 1/T = 4 within 1.5 and the length bias 0.15 within 0.1 for the likelihood
    assert np.abs(estimates["plackett_luce"].mean(0) - [4.0, 0.15]).max() < 1.5
    assert abs(estimates["plackett_luce"][:, 1].mean() - 0.15) < 0.1

    tiny = lw.ListwiseConfig(train_lists=80, heldout_lists=40, replicates=2, ridge_grid=(1e-3, 1e-1), max_iter=50)
    train_sets = [lw.training_rankings(tiny, r, annotator) for r in range(tiny.replicates)]
    assert train_sets[0] != train_sets[1] and len(train_sets[0]) == 80
    records = lw.run_comparison(train_sets, lw.heldout_lists(tiny, annotator), tiny, ("plackett_luce", "bt_all"))
    assert [(r["replicate"], r["loss"]) for r in records] == [
        (0, "plackett_luce"),
        (0, "bt_all"),
        (1, "plackett_luce"),
        (1, "bt_all"),
    ]
    for record in records:
        assert record["ridge"] in tiny.ridge_grid
        assert 0.5 < record["expected_accuracy"] <= record["bayes_accuracy"]  # 80 rankings already beat a coin
        assert record["mean_gold"] < record["best_of_k_gold"] <= record["oracle_best_of_k_gold"]


def test_pair_outcomes_orient_pairs_by_the_order_shown():
    annotator = rw.AnnotatorConfig()
    rows = [{"prompt": "the plot was", "completions": [" great.", " dull.", " good."], "ranking": [1, 0, 2]}]
    utilities = lw.list_utilities(rows, annotator)
    u = [lw.annotator_utility("the plot was", c, annotator) for c in rows[0]["completions"]]
    assert utilities[0].tolist() == u
    p, first_above = lw.pair_outcomes(rows, utilities, "all")
    # pairs by position (0,1), (0,2), (1,2) = items {1,0}, {1,2}, {0,2}; oriented (0,1), (1,2), (0,2)
    sigmoid = [1 / (1 + math.exp(-(u[i] - u[j]))) for i, j in ((0, 1), (1, 2), (0, 2))]
    assert np.allclose(p, sigmoid) and first_above.tolist() == [False, True, True]
    p, first_above = lw.pair_outcomes(rows, utilities, "adjacent")
    assert np.allclose(p, [sigmoid[0], sigmoid[2]]) and first_above.tolist() == [False, True]


def test_a_function_can_be_the_loss():
    features = torch.randn(200, 3, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    rankings = torch.stack([torch.randperm(3, generator=torch.Generator().manual_seed(i)) for i in range(200)])

    def winner_only(scores, reduction):  # the softmax cross-entropy of the winner: the first factor of PL
        loss = torch.logsumexp(scores, 1) - scores[:, 0]
        return loss.mean() if reduction == "mean" else loss

    ours = lw.fit_linear_reward(features, rankings, winner_only, ridge=0.01)
    ordered = lw.best_first(features, rankings)
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=500, tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        objective = (
            torch.nn.functional.cross_entropy(ordered @ w, torch.zeros(200, dtype=torch.long)) + 0.01 * (w**2).sum()
        )
        objective.backward()
        return objective

    optimizer.step(closure)
    assert torch.allclose(ours, w.detach(), atol=1e-5)  # both converged: |gradient| < 1e-5 (it starts near 0.3)
