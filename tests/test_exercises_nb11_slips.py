"""Notebook 11's exercise 7 (the reward model's price of each slip): a right answer passes, plausible wrong ones
do not."""

import numpy as np

from utils.broken_reviews import broken_form
from utils.exercises import check
from utils.exercises.nb11 import _slip_samples


def right(samples):
    intact = np.mean([s["proxy_reward"] for s in samples if broken_form(s["prompt"] + s["response"]) is None])
    scores = {}
    for s in samples:
        form = broken_form(s["prompt"] + s["response"])
        if form is not None:
            scores.setdefault(form, []).append(s["proxy_reward"])
    return {form: (len(v) / len(samples), np.mean(v) - intact) for form, v in scores.items()}


def test_the_samples_hold_several_forms_and_reviews():
    samples = _slip_samples()
    forms = {broken_form(s["prompt"] + s["response"]) for s in samples}
    assert None in forms and len(forms - {None}) >= 3


def test_11_7_slip_prices():
    def share_of_broken(samples):  # the share among the broken answers only
        prices = right(samples)
        broken = sum(share for share, _ in prices.values())
        return {form: (share / broken, price) for form, (share, price) in prices.items()}

    def price_against_everyone(samples):  # compared with the mean of all answers, broken ones included
        mean = np.mean([s["proxy_reward"] for s in samples])
        intact = np.mean([s["proxy_reward"] for s in samples if s["grammatical"]])
        return {form: (share, price + intact - mean) for form, (share, price) in right(samples).items()}

    assert check("11.7", right)
    assert not check("11.7", share_of_broken)
    assert not check("11.7", price_against_everyone)
    assert not check("11.7", lambda samples: {"stops mid-sentence": (0.1, 0.0)})
