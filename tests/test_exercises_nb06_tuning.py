"""Notebook 06's exercises on the request and on prompt tuning (06.6, 06.7): a right answer passes, plausible
wrong ones fail with their hint, and an unfilled stub is "not done yet"."""

from exercise_cases import exercise_tests

from utils import instruction_following as inf
from utils import sft


def aspect_gap(model, tokenizer, rows):
    write = [r for r in rows if r["task"] == "write"]
    names = inf.ASPECT_NAMES
    other = []
    for row in write:
        aspect = row["prompt"].split(" about the ")[1].split(".")[0]
        following = names[(names.index(aspect) + 1) % len(names)]
        other.append({**row, "prompt": row["prompt"].replace(f"the {aspect}.", f"the {following}.")})
    return sft.completion_nll(model, tokenizer, other) - sft.completion_nll(model, tokenizer, write)


def sentiment_gap(model, tokenizer, rows):
    return inf.request_sensitivity(model, tokenizer, rows)["sentiment"]


def reversed_gap(model, tokenizer, rows):
    return -aspect_gap(model, tokenizer, rows)


test_right_answer_passes, test_wrong_answer_fails_with_a_hint, test_stub_is_not_done = exercise_tests(
    right={"06.6": aspect_gap, "06.7": 1024},
    wrong=[
        ("06.6", sentiment_gap, "other *sentiment*"),
        ("06.6", reversed_gap, "sign is reversed"),
        ("06.7", 256, "not repeated in every block"),
        ("06.7", 1000, "train 128000 parameters"),
    ],
)
