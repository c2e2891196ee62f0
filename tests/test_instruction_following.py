"""The request of the "write" task: parsing and counterfactual prompts, request sensitivity (0 for a model that
cannot read the request, the NLL difference by hand otherwise), and the data builder's balance and guarantees."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from utils import instruction_following as inf
from utils import review_world as rw
from utils import sft
from utils.language_model import LMConfig, build_model
from utils.tokenizer import train_bpe


@pytest.fixture(scope="module")
def pipeline_rows():
    return rw.instruction_pairs(600, seed=5)


def test_prompts_round_trip_on_the_pipeline_rows(pipeline_rows):
    write = [r for r in pipeline_rows if r["task"] == "write"]
    for row in write:
        positive, aspect = inf.write_request(row["prompt"])
        assert inf.write_prompt(positive, aspect) == row["prompt"]
        assert positive == sft.requested_sentiment(row["prompt"]) and aspect in inf.ASPECT_NAMES
    with pytest.raises(ValueError, match="not a 'write' prompt"):
        inf.write_request(next(r for r in pipeline_rows if r["task"] == "summarise")["prompt"])


def test_counterfactual_changes_only_the_request():
    row = {"prompt": inf.write_prompt(True, "humour"), "completion": " the humour was good.", "task": "write"}
    flipped, other = inf.counterfactual(row, "sentiment"), inf.counterfactual(row, "aspect")
    assert flipped["prompt"] == "Write a negative review about the humour.\nReview:"
    assert other["prompt"] == "Write a positive review about the acting.\nReview:"  # the last aspect wraps around
    assert flipped["completion"] == other["completion"] == row["completion"]
    with pytest.raises(ValueError):
        inf.counterfactual(row, "length")


def test_swap_aspects_keeps_the_review_and_its_sentiment():
    text = "the plot was good, but i hated the music. the plot felt dull."
    swapped = inf.swap_aspects(text, "plot", "music")
    assert swapped == "the music was good, but i hated the plot. the music felt dull."
    assert rw.parse(swapped).sentiment == pytest.approx(rw.parse(text).sentiment)
    assert inf.swap_aspects(text, "plot", "plot") == text


@pytest.mark.parametrize(
    "config",
    [inf.WriteDataConfig(), inf.WriteDataConfig(first_clause_agrees=True), inf.FOLLOW_REQUEST],
    ids=["pipeline", "agrees", "follow_request"],
)
def test_every_built_row_answers_its_request(config):
    rows = inf.write_rows(300, seed=1, config=config)
    assert len(rows) == 300 and all(r["task"] == "write" for r in rows)
    for row in rows:  # grammatical, the requested overall sentiment, the requested first aspect
        assert sft.task_checks(row, row["completion"]) == {"grammatical": 1.0, "sentiment_ok": 1.0, "aspect_ok": 1.0}


def first_clause_agreement(rows):
    agree = [
        (rw.parse(r["completion"].strip()).clauses[0].polarity > 0) == inf.write_request(r["prompt"])[0] for r in rows
    ]
    return sum(agree) / len(agree)


def test_the_fix_balances_requests_and_makes_the_first_clause_agree(pipeline_rows):
    pipeline = [r for r in pipeline_rows if r["task"] == "write"]
    built_default = inf.write_rows(2400, seed=2)
    fixed = inf.write_rows(2400, seed=2, config=inf.FOLLOW_REQUEST)
    # The pipeline's rows and the default builder: the first clause often contradicts the request.
    assert first_clause_agreement(pipeline) < 0.75 and first_clause_agreement(built_default) < 0.75
    assert first_clause_agreement(fixed) == 1.0
    aspects = {
        name: Counter(inf.write_request(r["prompt"])[1] for r in rows)
        for name, rows in (("default", built_default), ("fixed", fixed))
    }
    # Grammar weights: acting 3 vs humour 1 (expected ratio 3); uniform requests: 200 each (sd about 14).
    assert aspects["default"]["acting"] / aspects["default"]["humour"] > 2.2
    assert all(140 < aspects["fixed"][a] < 260 for a in inf.ASPECT_NAMES)
    sentiments = Counter(inf.write_request(r["prompt"])[0] for r in fixed)
    assert abs(sentiments[True] - 1200) < 150


def test_twins_differ_only_in_the_aspect():
    rows = inf.write_rows(200, seed=3, config=inf.FOLLOW_REQUEST)
    for first, twin in zip(rows[::2], rows[1::2]):
        (positive, a), (twin_positive, b) = inf.write_request(first["prompt"]), inf.write_request(twin["prompt"])
        assert positive == twin_positive and a != b
        assert inf.swap_aspects(first["completion"], a, b) == twin["completion"]


def test_replace_task_rows(pipeline_rows):
    new = inf.write_rows(50, seed=4)
    mixed = inf.replace_task_rows(pipeline_rows, "write", new, seed=0)
    counts, before = Counter(r["task"] for r in mixed), Counter(r["task"] for r in pipeline_rows)
    assert counts == {"write": 50, "summarise": before["summarise"], "continue": before["continue"]}
    assert [r for r in mixed if r["task"] == "write"] != new  # shuffled ...
    assert sorted(map(str, mixed)) == sorted(map(str, [r for r in pipeline_rows if r["task"] != "write"] + new))


class BigramLM(nn.Module):
    """Logits depend on the current token only: the request, in the masked prompt, cannot reach the completion."""

    def __init__(self, vocab_size: int):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table(input_ids)})()  # (B, T, V)


@pytest.fixture(scope="module")
def tokenizer(pipeline_rows):
    texts = [r["text"] for r in rw.lm_corpus(400, seed=4)] + [r["prompt"] + r["completion"] for r in pipeline_rows]
    return train_bpe(texts, vocab_size=300)


def test_request_sensitivity(tokenizer, pipeline_rows):
    rows = pipeline_rows[:60]
    blind = inf.request_sensitivity(BigramLM(len(tokenizer)), tokenizer, rows)
    assert blind == {"sentiment": 0.0, "aspect": 0.0}
    model = build_model(LMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=256), tokenizer, seed=0)
    write = [r for r in rows if r["task"] == "write"]
    by_hand = sft.completion_nll(model, tokenizer, [inf.counterfactual(r, "aspect") for r in write])
    sensitivity = inf.request_sensitivity(model, tokenizer, rows)
    assert sensitivity["aspect"] == pytest.approx(by_hand - sft.completion_nll(model, tokenizer, write), abs=1e-9)
    assert abs(sensitivity["sentiment"]) > 1e-4  # a transformer reads its whole prefix, even untrained


def test_sensitivity_log_records_during_training(tokenizer, pipeline_rows, tmp_path):
    model = build_model(LMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=256), tokenizer, seed=0)
    held_out = [r for r in pipeline_rows[-80:] if r["task"] == "write"]
    before = inf.request_sensitivity(model, tokenizer, held_out)
    trainer = sft.build_sft_trainer(model, tokenizer, pipeline_rows[:64], sft.SFTConfig(batch_size=16), tmp_path)
    log = inf.sensitivity_log(tokenizer, held_out, every=3)
    trainer.add_callback(log)
    trainer.train()  # 2 epochs of 4 steps
    assert [r["step"] for r in log.history] == [0, 3, 6]
    assert log.history[0] == {"step": 0, **before}
    assert log.history[-1] != log.history[0]  # measured on the model as it trains


def test_default_follow_request_config_is_plain_sft(tokenizer, pipeline_rows):
    config = sft.SFTConfig(batch_size=16, epochs=1.0)
    tiny = LMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=256)
    plain, plain_report = sft.train_sft(build_model(tiny, tokenizer, seed=0), tokenizer, pipeline_rows[:64], config)
    ours, report = inf.train_sft_following_requests(
        build_model(tiny, tokenizer, seed=0), tokenizer, pipeline_rows[:64], config, inf.FollowRequestConfig()
    )
    assert report["steps"] == plain_report["steps"] == 4 and report["first_phase"] is None
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), ours.state_dict().values()))


def test_follow_request_config_adds_a_first_phase_and_rebuilds_the_write_rows(tokenizer, pipeline_rows, monkeypatch):
    seen = []  # the rows of every train_sft call
    real = inf.train_sft
    monkeypatch.setattr(
        inf, "train_sft", lambda model, tok, rows, cfg: seen.append(rows) or real(model, tok, rows, cfg)
    )
    rows = pipeline_rows[:64]
    config = inf.FollowRequestConfig(write_data=inf.FOLLOW_REQUEST, first_phase_steps=3, first_phase_rows=40, seed=7)
    model = build_model(LMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=256), tokenizer, seed=0)
    _, report = inf.train_sft_following_requests(model, tokenizer, rows, sft.SFTConfig(batch_size=16), config)
    assert report["first_phase"]["steps"] == 3 and report["steps"] == 3 + 8  # 2 epochs of 64 rows by 16
    first, mixture = seen
    assert first == inf.write_rows(40, 7, inf.FOLLOW_REQUEST)
    assert Counter(r["task"] for r in mixture) == Counter(r["task"] for r in rows)  # same counts per task
    assert first_clause_agreement([r for r in mixture if r["task"] == "write"]) == 1.0  # rebuilt with the fix
    with pytest.raises(ValueError):
        inf.FollowRequestConfig(first_phase_steps=-1)
