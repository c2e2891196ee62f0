"""The hub profile (utils.hub, utils.stages.hub) on the real data slices in ../shared/data, offline.

Offline there are no pretrained weights, so the models are GPT2Config()-shaped and randomly initialised, the
tokenizer is a stand-in BPE trained on the slice, and the judge is a random DistilBERT: these tests check that
the code path loads, cuts, trains, samples and measures correctly, not what it learns.

The end-to-end smoke run (every stage of the ``hub_smoke`` profile: 124M-shaped models, a few steps each) takes
about 45 CPU-seconds and several minutes of wall time on a busy 2-core machine, so ``make test`` skips it; run
it with ``make hub-smoke`` (which sets ``RLHF_HUB_SMOKE=1``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from utils import hub
from utils.preference_data import HH_ASSISTANT_PROMPT, load_imdb, validate_preference_rows
from utils.profiles import HUB_PROFILES, PROFILES, get_hub_profile, get_profile

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMDB = SHARED_DATA / "imdb_reviews_sample700.csv"
HH = SHARED_DATA / "hh_rlhf_harmless_base_test_first1000.jsonl"

pytestmark = pytest.mark.skipif(
    not (IMDB.is_file() and HH.is_file()),
    reason=f"the real-data slices are not in {SHARED_DATA} (a clone without ../shared); see ../shared/data/README.md",
)


@pytest.fixture(scope="module")
def reviews() -> list[dict]:
    return load_imdb(IMDB)


@pytest.fixture(scope="module")
def standin(reviews):
    """The offline stand-in tokenizer, trained on the whole slice (a few seconds)."""
    return hub.load_tokenizer(
        hub.HubModelConfig(weights="random", standin_vocab_size=4_096), "random", [r["text"] for r in reviews]
    )


# ------------------------------------------------------------------------------------------------
# Data: counts, schemas, splits, clear errors
# ------------------------------------------------------------------------------------------------
def test_imdb_slice_loads_as_text_label_rows(reviews):
    assert len(reviews) == 700
    assert all(set(r) == {"text", "label"} and r["label"] in (0, 1) for r in reviews)
    assert all("<br" not in r["text"].lower() for r in reviews)  # HTML breaks cleaned
    assert sum(r["label"] for r in reviews) == 338  # 48.3% positive in this slice


def test_split_deals_every_review_once_and_pairs_positive_over_negative(reviews):
    config = hub.HubDataConfig(sft_reviews=100, rm_train_pairs=150, rm_test_pairs=50, prompts_train=64, prompts_test=32)
    splits = hub.split_imdb(reviews, config)
    assert {k: len(v) for k, v in splits.items()} == {
        "rm_train": 150,
        "rm_test": 50,
        "prompts_train": 64,
        "prompts_test": 32,
        "sft": 100,
    }
    label = {r["text"]: r["label"] for r in reviews}
    pairs = splits["rm_train"] + splits["rm_test"]
    assert all(label[p["chosen"]] == 1 and label[p["rejected"]] == 0 for p in pairs)
    texts = [t for p in pairs for t in p.values()] + [
        r["text"] for k in ("sft", "prompts_train", "prompts_test") for r in splits[k]
    ]
    assert len(texts) == len(set(texts)) == 2 * 200 + 196  # no review in two splits
    # implicit-prompt preference rows that the course's validator accepts
    assert validate_preference_rows(pairs, prompt_boundary=None) == []
    assert hub.split_imdb(reviews, config) == splits  # seeded


def test_split_says_how_many_reviews_it_lacks(reviews):
    with pytest.raises(ValueError, match=r"need 400 positive and 400 negative reviews; the data have 338 and 362"):
        hub.split_imdb(reviews, hub.HubDataConfig(rm_train_pairs=300, rm_test_pairs=100))


def test_hh_slice_loads_as_explicit_prompt_rows_without_the_unusable_ones():
    rows, dropped = hub.load_hh_pairs(HH, 1_000)
    assert (len(rows), dropped) == (997, 3)  # three rows of the slice have nothing to prefer or an empty reply
    assert all(set(r) == {"prompt", "chosen", "rejected"} and r["prompt"].endswith(HH_ASSISTANT_PROMPT) for r in rows)
    validate_preference_rows(rows)  # no PreferenceDataError left
    assert hub.load_hh_pairs(HH, 10) == (rows[:10], 0)


def test_a_bad_imdb_row_is_named_with_its_line_and_field(tmp_path):
    bad = tmp_path / "imdb.csv"
    bad.write_text('review,sentiment\n"A fine film.",positive\n"Dull.",meh\n')
    with pytest.raises(ValueError, match=r"imdb.csv, line 3, column 'sentiment': expected 'positive' or 'negative'"):
        load_imdb(bad)


def test_a_bad_hh_row_is_named_with_its_line_and_field(tmp_path):
    bad = tmp_path / "hh.jsonl"
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"chosen": good["chosen"]}) + "\n")
    with pytest.raises(ValueError, match=r"hh.jsonl, line 2: not an HH-RLHF row \(KeyError\('rejected'\)\)"):
        hub.load_hh_pairs(bad, 10)


def test_missing_slices_say_where_and_how_to_get_data(tmp_path):
    config = hub.HubDataConfig(local_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="RLHF_ALLOW_HUB=1"):
        hub.imdb_source(config, tmp_path, online=False)


# ------------------------------------------------------------------------------------------------
# Tokenizer and truncation
# ------------------------------------------------------------------------------------------------
def test_standin_tokenizer_is_byte_level_bpe_like_gpt2(reviews, standin):
    assert len(standin) == 4_097  # the trained vocabulary and our PAD
    assert standin.eos_token == standin.bos_token == "<|endoftext|>"
    assert standin.pad_token == "<|pad|>" and standin.pad_token_id != standin.eos_token_id
    for review in reviews[:50]:  # byte-level: every text round-trips exactly, whatever its characters
        assert standin.decode(standin(review["text"])["input_ids"]) == review["text"]
    assert standin("<|endoftext|>")["input_ids"] == [standin.eos_token_id]  # EOS is one special token


def test_long_reviews_are_cut_to_the_context_and_counted(reviews, standin, caplog):
    texts = [r["text"] for r in reviews]
    lengths = [len(ids) for ids in standin(texts, verbose=False)["input_ids"]]
    too_long = sum(n > hub.GPT2_CONTEXT - 1 for n in lengths)
    assert too_long > 0  # the slice really has reviews longer than GPT-2's context
    with caplog.at_level(logging.WARNING, logger="utils.hub"):
        sequences, cut = hub.encode_with_eos(texts, standin, hub.GPT2_CONTEXT, "IMDB reviews")
    assert cut == too_long
    assert f"IMDB reviews: {too_long} of 700 sequences were longer than 1023 tokens and were cut" in caplog.text
    assert max(len(s) for s in sequences) == hub.GPT2_CONTEXT
    assert all(s[-1] == standin.eos_token_id for s in sequences)
    short = next(i for i, n in enumerate(lengths) if n < 100)
    assert sequences[short][:-1] == standin(texts[short])["input_ids"]  # short reviews are untouched
    with pytest.raises(ValueError, match="rm_max_tokens"):
        hub.HubDataConfig(rm_max_tokens=2_000)  # more than GPT-2 can read


def test_review_openings_are_the_first_prompt_tokens(reviews, standin):
    texts = [r["text"] for r in reviews[:20]]
    openings = hub.review_openings(texts, standin, 8)
    assert openings == [standin(t)["input_ids"][:8] for t in texts]


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
def test_random_gpt2_has_gpt2_small_parameter_count():
    assert hub.parameter_count(hub.build_random_gpt2()) == hub.GPT2_SMALL_PARAMETERS == 124_439_808


def test_offline_policy_is_gpt2_config_with_embeddings_sized_to_the_tokenizer(standin):
    config = hub.HubModelConfig(weights="random")
    policy = hub.build_policy(config, standin, "random")
    reference = GPT2Config()
    assert (policy.config.n_layer, policy.config.n_head, policy.config.n_embd, policy.config.n_positions) == (
        reference.n_layer,
        reference.n_head,
        reference.n_embd,
        reference.n_positions,
    )
    # the only difference from GPT-2 small: 50,257 embedding rows replaced by the stand-in's 4,097
    assert hub.parameter_count(policy) == 124_439_808 + (4_097 - 50_257) * 768
    assert policy.config.pad_token_id == standin.pad_token_id and policy.config.eos_token_id == standin.eos_token_id
    assert policy.get_output_embeddings().weight is policy.get_input_embeddings().weight  # still tied


def test_the_weights_switch_follows_the_environment(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve_weights(hub.HubModelConfig()) == "random"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub.resolve_weights(hub.HubModelConfig()) == "hub"
    assert hub.resolve_weights(hub.HubModelConfig(weights="random")) == "random"
    assert hub.autocast_dtype(hub.HubModelConfig(), torch.device("cpu")) is None  # fp32 on a CPU


def test_random_judge_reads_its_positive_label_and_gives_probabilities(standin):
    judge, judge_tokenizer = hub.build_judge(hub.HubModelConfig(), "random", standin)
    assert hub.positive_label(judge) == 1
    texts = ["A wonderful film.", "Terrible. " * 600]  # the second is longer than DistilBERT's 512 positions
    probs = hub.judge_positive(judge, judge_tokenizer, texts)
    logits = judge(**judge_tokenizer(texts[:1], return_tensors="pt")).logits
    assert probs.shape == (2,) and torch.allclose(probs[0], logits.softmax(-1)[0, 1], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Losses against references (a tiny GPT-2: these check formulas, not scale)
# ------------------------------------------------------------------------------------------------
def test_lm_loss_equals_transformers_loss_on_padded_batches():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32)).eval()
    from utils.language_model import collate

    batch = collate([[1, 5, 7, 9, 3], [2, 4, 6]], pad_id=0)
    expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(hub.lm_loss(model, batch), expected, atol=1e-6)


def test_rm_loss_is_bradley_terry_on_the_last_real_token():
    from transformers import GPT2ForSequenceClassification

    from utils.reward_model import collate_pairs

    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(
        GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32, num_labels=1, pad_token_id=0)
    ).eval()
    pairs = [([1, 5, 7, 9], [2, 4]), ([3, 3], [8, 9, 10])]
    scores = [model(input_ids=torch.tensor([ids])).logits[0, 0] for pair in pairs for ids in pair]
    expected = -F.logsigmoid(torch.stack([scores[0] - scores[1], scores[2] - scores[3]])).mean()
    assert torch.allclose(hub.rm_loss(model, collate_pairs(pairs, 0)), expected, atol=1e-5)
    assert hub.pair_accuracy(model, pairs, 0) == ((scores[0] > scores[1]).float() + (scores[2] > scores[3]).float()) / 2


# ------------------------------------------------------------------------------------------------
# Profiles: the hub profiles leave course and tiny alone
# ------------------------------------------------------------------------------------------------
def test_hub_profiles_are_apart_from_the_course_profiles():
    assert set(HUB_PROFILES).isdisjoint(PROFILES)
    with pytest.raises(ValueError, match=r"use get_hub_profile\('hub'\)"):
        get_profile("hub")
    shifted = get_hub_profile("hub_smoke", seed=1)
    assert (shifted.data.seed, shifted.ppo.seed, shifted.models.seed) == (1_000, 1_000, 1_000)
    assert get_hub_profile("hub").models.weights == "auto" and get_hub_profile("hub_smoke").models.weights == "random"


# ------------------------------------------------------------------------------------------------
# End to end: every stage of hub_smoke (opt-in: make hub-smoke)
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(os.environ.get("RLHF_HUB_SMOKE") != "1", reason="minutes of wall time: run with make hub-smoke")
def test_hub_smoke_runs_every_stage_and_writes_its_metrics(tmp_path, monkeypatch):
    from utils.pipeline import run

    monkeypatch.setenv("RLHF_RESULTS_DIR", str(tmp_path))
    metrics = run(None, "hub_smoke")
    written = json.loads((tmp_path / "hub" / "hub_smoke" / "metrics.json").read_text())
    assert written == metrics
    assert not (tmp_path / "metrics.json").exists()  # the course's metrics file is not touched
    artifacts = sorted(
        p.name.rsplit("-", 1)[0] for p in (tmp_path / "artifacts").iterdir() if not p.name.startswith(".")
    )
    assert artifacts == ["hub_data", "hub_eval", "hub_ppo", "hub_rm", "hub_sft", "hub_tokenizer"]
    expected = {
        "data.imdb_rows": 700,
        "data.hh_rows": 997,
        "data.hh_rows_dropped": 3,
        "sft.weights": "random",
        "sft.steps": 2,
        "sft.lora": True,
        "sft.reviews_cut": 8,  # every fine-tuning review is longer than the smoke's 32 tokens
        "rm.steps": 2,
        "rm.heldout_pairs": 8,
        "ppo.updates": 2,
        "ppo.device": "cpu",
        "eval.weights": "random",
        "eval.prompts": 4,
        "profile": "hub_smoke",
    }
    assert {k: metrics[k] for k in expected} == expected
    for key in ("sft.first_loss", "rm.heldout_accuracy", "eval.judge_positive_before", "eval.judge_positive_after"):
        assert isinstance(metrics[key], float)
    assert metrics["rm.heldout_accuracy"] == metrics["eval.rm_heldout_accuracy"]
    assert "mean nothing" in metrics["eval.what_the_numbers_mean"]
    assert 0 < metrics["tokenizer.reviews_over_context"] < metrics["tokenizer.reviews"]
