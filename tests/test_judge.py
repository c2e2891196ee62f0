"""utils.judge: the bias measures against hand computations, and the learned pairwise judge against an
independent Newton solve of the same logistic regression."""

import numpy as np
import pytest

from utils import judge as jd
from utils import review_world as rw

# Four pairs, judged with a shown first (p_ab) and with b shown first (p_ba):
#   pair 0: a wins, then (b first, 0.2) b loses      -> a wins both times: no flip; first picked 1 of 2
#   pair 1: a wins, then (b first, 0.7) b wins       -> flip;                     first picked 2 of 2
#   pair 2: b wins, then (b first, 0.8) b wins       -> no flip;                  first picked 1 of 2
#   pair 3: tie, tie                                 -> no flip; no decided verdict
P_AB = np.array([0.9, 0.6, 0.4, 0.5])
P_BA = np.array([0.2, 0.7, 0.8, 0.5])


def test_verdicts():
    assert jd.verdicts(np.array([0.9, 0.1, 0.5, 0.5 + 1e-12])).tolist() == [1, -1, 0, 0]


def test_flip_rate_by_hand():
    assert jd.flip_rate(P_AB, P_BA) == pytest.approx(1 / 4)
    # a tie in one order and a verdict in the other is a change of verdict
    assert jd.flip_rate(np.array([0.5]), np.array([0.3])) == 1.0


def test_first_position_rate_by_hand():
    assert jd.first_position_rate(P_AB, P_BA) == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        jd.first_position_rate(np.array([0.5]), np.array([0.5]))


def test_a_judge_that_always_picks_the_first_answer():
    always_first = lambda firsts, seconds: np.full(len(firsts), 0.8)  # noqa: E731
    p_ab, p_ba = jd.judge_both_orders(always_first, ["x", "y"], ["z", "w"])
    assert jd.flip_rate(p_ab, p_ba) == 1.0 and jd.first_position_rate(p_ab, p_ba) == 1.0
    # judged in both orders and averaged it calls every pair a tie
    assert np.allclose(jd.order_averaged(p_ab, p_ba), 0.5)


def test_order_averaged_by_hand_and_consistent():
    assert np.allclose(jd.order_averaged(P_AB, P_BA), [(0.9 + 0.8) / 2, (0.6 + 0.3) / 2, (0.4 + 0.2) / 2, 0.5])
    rng = np.random.default_rng(0)
    table = {}

    def arbitrary(firsts, seconds):  # any order-dependent judge: a fixed random probability per ordered pair
        return np.array([table.setdefault((f, s), rng.random()) for f, s in zip(firsts, seconds)])

    a, b = [f"a{i}" for i in range(50)], [f"b{i}" for i in range(50)]
    averaged = jd.order_averaged_judge(arbitrary)
    p_ab, p_ba = jd.judge_both_orders(averaged, a, b)
    assert np.allclose(p_ab + p_ba, 1.0)
    assert jd.flip_rate(p_ab, p_ba) == 0.0 and jd.first_position_rate(p_ab, p_ba) == 0.5
    assert jd.flip_rate(*jd.judge_both_orders(arbitrary, a, b)) > 0.2


def test_pointwise_judge_has_no_position_bias():
    scores = {"a": 1.0, "b": -0.5, "c": 1.0}
    judge = jd.pointwise_judge(lambda texts: [scores[t] for t in texts])
    p_ab, p_ba = jd.judge_both_orders(judge, ["a", "a", "b"], ["b", "c", "c"])
    assert np.allclose(p_ab, [1 / (1 + np.exp(-1.5)), 0.5, 1 / (1 + np.exp(1.5))])
    assert np.allclose(p_ab + p_ba, 1.0) and jd.flip_rate(p_ab, p_ba) == 0.0


def test_agreement_with_gold_by_hand():
    verdict = np.array([1, -1, 0, 1, 1])
    gold_a = np.array([0.5, 0.5, 0.5, 0.2, -2.0])
    gold_b = np.array([0.1, 0.1, 0.1, 0.2, 0.3])
    # pairs 0-2 and 4 have a strict gold winner (a, a, a, b); the judge: right, wrong, tie (half), wrong
    assert jd.agreement_with_gold(verdict, gold_a, gold_b) == pytest.approx((1 + 0 + 0.5 + 0) / 4)


def test_gold_ties_within_float_noise():
    assert jd.gold_verdicts(np.array([0.3, 0.3 + 1e-15, 0.5]), np.array([0.3, 0.3, 0.1])).tolist() == [0, 0, 1]
    # a judge that ties exactly where gold ties up to float noise agrees on every strict pair
    verdict = np.array([0, 1])
    assert jd.agreement_with_gold(verdict, np.array([0.1 + 0.2, 0.5]), np.array([0.3, 0.1])) == 1.0


def test_length_bias_by_hand():
    verdict = np.array([1, 1, -1, 0, 1, -1, 1])
    gold_a = np.array([0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.3])
    gold_b = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.3])
    words_a = np.array([12, 12, 12, 12, 9, 12, 10])
    words_b = np.array([8, 8, 8, 8, 12, 8, 10])
    result = jd.length_bias(verdict, gold_a, gold_b, words_a, words_b)
    # gold prefers the shorter (b, 8 words) in pairs 0-2: the judge picks the longer a in 0 and 1 -> 2/3
    assert result["longer_when_gold_prefers_shorter"] == pytest.approx(2 / 3)
    assert result["n_gold_prefers_shorter"] == 3
    # gold prefers the longer in pair 5 (a, 12 words): the judge picks b, the shorter -> 1/1
    assert result["shorter_when_gold_prefers_longer"] == pytest.approx(1.0) and result["n_gold_prefers_longer"] == 1
    # gold ties in pairs 3 and 4 (pair 6 has equal lengths: left out): judge tie (half), picks the shorter a (0)
    assert result["longer_when_gold_ties"] == pytest.approx(0.25) and result["n_gold_ties"] == 2


def test_pairs_within_groups():
    first, second = jd.pairs_within_groups(2, 3)
    assert list(zip(first.tolist(), second.tolist())) == [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)]
    assert len(jd.pairs_within_groups(64, 16)[0]) == 64 * 16 * 15 // 2


def test_training_pairs_shows_the_chosen_first_in_the_asked_share():
    rows = [{"prompt": "p", "chosen": f" c{i}", "rejected": f" r{i}"} for i in range(40)]
    firsts, seconds, first_is_chosen = jd.training_pairs(rows, 0.75, seed=3)
    assert first_is_chosen.sum() == 30
    for f, s, label in zip(firsts, seconds, first_is_chosen):
        chosen, rejected = (f, s) if label else (s, f)
        assert chosen.startswith("p c") and rejected.startswith("p r") and chosen[3:] == rejected[3:]
    with pytest.raises(ValueError):
        jd.training_pairs(rows, 1.5)


def newton_logistic(x, y, l2, penalised, steps=50):
    """Reference: Newton's method on mean log loss + l2/2 |penalised * w|^2 (converges quadratically)."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) / len(y) + l2 * penalised * w
        hessian = (x.T * (p * (1 - p))) @ x / len(y) + l2 * np.diag(penalised)
        w -= np.linalg.solve(hessian, gradient)
    return w


@pytest.fixture(scope="module")
def labelled_rows():
    return rw.preference_pairs(600, seed=11)


def test_bag_of_words_judge_fit_matches_newton(labelled_rows):
    firsts, seconds, labels = jd.training_pairs(labelled_rows, 0.5, seed=0)
    judge = jd.BagOfWordsJudge.from_texts(firsts + seconds).fit(firsts, seconds, labels, l2=1e-2)
    x = judge.features(firsts, seconds)
    penalised = np.ones(x.shape[1])
    penalised[-1] = 0.0
    reference = newton_logistic(x, labels, 1e-2, penalised)
    assert np.abs(judge.weights - reference).max() < 1e-4
    assert np.allclose(judge(firsts, seconds), 1 / (1 + np.exp(-(x @ reference))), atol=1e-3)


def test_features_are_counts_in_order():
    judge = jd.BagOfWordsJudge(["good", "bad", "."])
    x = judge.features(["good good .", "bad"], ["bad unknown", "good ."])
    vocabulary = judge.vocabulary  # sorted: ".", "bad", "good"
    assert vocabulary == [".", "bad", "good"]
    assert x.tolist() == [[1, 0, 2, 0, 1, 0, 1], [0, 1, 0, 1, 0, 1, 1]]


def test_a_judge_trained_on_unshuffled_pairs_learns_position_bias(labelled_rows):
    def fitted(share):
        firsts, seconds, labels = jd.training_pairs(labelled_rows, share, seed=0)
        return jd.BagOfWordsJudge.from_texts(firsts + seconds).fit(firsts, seconds, labels)

    shuffled, unshuffled = fitted(0.5), fitted(0.9)
    # 90% chosen-first: the base rate alone is log(0.9 / 0.1) = 2.2 logits for the first position
    assert unshuffled.position_bias > 1.0 and abs(shuffled.position_bias) < 0.5
    a = [r["prompt"] + r["chosen"] for r in labelled_rows[:300]]
    b = [r["prompt"] + r["rejected"] for r in labelled_rows[:300]]
    biased = jd.bias_report(unshuffled, a, b)
    fair = jd.bias_report(shuffled, a, b)
    assert biased["first_position_rate"] > 0.7 and biased["flip_rate"] > fair["flip_rate"]
    # averaging both orders removes it whatever the judge learned
    consistent = jd.bias_report(jd.order_averaged_judge(unshuffled), a, b)
    assert consistent["flip_rate"] == 0.0 and consistent["first_position_rate"] == 0.5


def test_bias_report_of_the_gold_judge_itself():
    texts = [r["prompt"] + r["chosen"] for r in rw.preference_pairs(80, seed=5)]
    a, b = texts[:40], texts[40:]
    gold = jd.pointwise_judge(lambda ts: [rw.gold_reward(t) for t in ts])
    report = jd.bias_report(gold, a, b)
    assert report["agreement"] == 1.0 and report["flip_rate"] == 0.0
    assert report["n_gold_prefers_shorter"] > 0 and report["n_gold_prefers_longer"] > 0
    assert report["longer_when_gold_prefers_shorter"] == 0.0 and report["shorter_when_gold_prefers_longer"] == 0.0


def test_unfitted_judge_raises():
    with pytest.raises(RuntimeError):
        jd.BagOfWordsJudge(["a"])(["a"], ["a"])
