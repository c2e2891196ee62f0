"""Reading a policy's broken reviews: what form each one takes, and what the reward model pays for it.

The review grammar (:mod:`utils.review_world`) says *whether* a text is a review, and
:func:`utils.review_world.rejection_reason` says where its parser gave up ("expected '.' at word 12, found
'was'"). To see which slips a policy makes, and which of them it learned because the reward model pays for
them, those reasons are grouped here into a few **forms**, in the order :data:`BROKEN_FORMS` lists them:

* ``stops mid-sentence``: the text ends before the parser could finish; most often an answer cut off at the
  response budget (PPO's rollouts and evaluations stop after ``response_length`` tokens);
* ``too many sentences``: a well-formed review with more body sentences than the grammar allows (four), the
  form of ``review_world``'s "pad" breakage and of a policy that chases the reward model's taste for length;
* ``text after the verdict``: a review that goes on after its closing verdict ("... i would recommend it. the
  plot was ...");
* ``a misplaced verdict``: a closing phrase where a clause should be, or a garbled one ("the plot was good, but
  i would recommend it.", "i did recommend.", "i would rather brilliant film.");
* ``a word out of place``: any other slip inside a sentence (a dropped, repeated or swapped word: "the cast was
  very and the ...");
* ``not canonical text``: characters or spacing outside the grammar's canonical form (``;``, capitals, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from utils import review_world as rw

BROKEN_FORMS = (
    "stops mid-sentence",
    "too many sentences",
    "text after the verdict",
    "a misplaced verdict",
    "a word out of place",
    "not canonical text",
)
"""The forms :func:`broken_form` tells apart, in the order tables list them."""

# Words that only a closing verdict uses ("overall, a ADJ film." / "i would (not) recommend it."): a parse that
# fails in a sentence holding one of them failed on a verdict, not on a body clause.
VERDICT_WORDS = frozenset({"overall", "film", "recommend"})

_POSITION = re.compile(r"at word (\d+)")
_SENTENCE_COUNT = re.compile(r"sentences before its verdict, found (\d+)")


def broken_form(text: str) -> str | None:
    """The form (one of :data:`BROKEN_FORMS`) of the grammar's objection to ``text``; None if it is a review.

    ``text`` is the whole review, prompt and response, as the grammar judges it.
    """
    reason = rw.rejection_reason(text)
    if reason is None:
        return None
    words = rw.split_words(text)
    if not words or reason.startswith("not in canonical form"):
        return "not canonical text"
    count = _SENTENCE_COUNT.search(reason)
    if count:
        if int(count.group(1)) > len(rw.GrammarConfig().sentence_count_probs):
            return "too many sentences"
        return "a misplaced verdict"  # too few is none: the text opens with its verdict (no prompt does)
    if reason.startswith("text continues after the closing verdict"):
        return "text after the verdict"
    position = _POSITION.search(reason)
    if position is None:
        raise ValueError(f"broken_form: no position in the grammar's reason {reason!r} for {text!r}")
    at = int(position.group(1))
    sentence_start = max((i + 1 for i in range(min(at, len(words))) if words[i] == "."), default=0)
    sentence_end = next((i for i in range(at, len(words)) if words[i] == "."), len(words))
    if sentence_end == len(words):  # the sentence the parser gave up in has no full stop: the text ends in it
        return "stops mid-sentence"
    if VERDICT_WORDS & set(words[sentence_start:sentence_end]):
        return "a misplaced verdict"
    return "a word out of place"


def broken_form_table(samples: Sequence[Mapping]) -> list[dict]:
    """One row per broken form found among ``samples`` (dicts with ``prompt``, ``response``, ``proxy_reward``, as
    :func:`utils.evaluation.evaluate_policy` returns them), in :data:`BROKEN_FORMS` order.

    Each row: ``form``; ``count``, how many samples take it; ``share``, that count over all samples;
    ``proxy_reward``, the reward model's mean score of those samples. Grammatical samples have no row.
    """
    if not samples:
        raise ValueError("broken_form_table needs at least one sample")
    scores: dict[str, list[float]] = {}
    for sample in samples:
        form = broken_form(sample["prompt"] + sample["response"])
        if form is not None:
            scores.setdefault(form, []).append(float(sample["proxy_reward"]))
    return [
        {
            "form": form,
            "count": len(scores[form]),
            "share": len(scores[form]) / len(samples),
            "proxy_reward": sum(scores[form]) / len(scores[form]),
        }
        for form in BROKEN_FORMS
        if form in scores
    ]
