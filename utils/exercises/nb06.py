"""Checks for the exercises of notebook 06 (instruction fine-tuning): against ``utils.text_metrics``, PEFT,
the review world's parser and ``utils.sft``'s assistant-only masking (itself tested against TRL)."""

from __future__ import annotations

import copy

from utils import review_world as rw
from utils import sft, text_metrics
from utils.exercises import NotYet, exercise

PREDICTION = "the plot was good and the music was good"
REFERENCE = "the music was good and the plot was dull"


@exercise("06.1")
def check_rouge2_by_hand(answer):
    score = text_metrics.rouge_n(PREDICTION, REFERENCE, 2)
    n_prediction = len(PREDICTION.split()) - 1
    overlap = round(score.precision * n_prediction)
    if answer["overlap"] != overlap:
        raise NotYet(f"not {answer['overlap']}: a reference bigram matches at most as often as it occurs there")
    for key, value in (("precision", score.precision), ("recall", score.recall), ("f1", score.fmeasure)):
        if abs(answer[key] - value) > 1e-9:
            raise NotYet(f"{key} = {answer[key]} does not follow from your overlap and the bigram counts")


def _tiny_gpt2(d: int, n_layer: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(vocab_size=50, n_positions=16, n_embd=d, n_layer=n_layer, n_head=2, bos_token_id=0, eos_token_id=1)
    )


@exercise("06.2")
def check_lora_count(lora_parameter_count):
    from peft import get_peft_model

    from utils.trl_helpers import quiet_training

    for d, n_layer, r in ((16, 1, 1), (16, 2, 4), (32, 3, 2)):
        config = sft.SFTConfig(lora_r=r, lora_alpha=2 * r)
        with quiet_training():
            trainable, _ = sft.count_trainable(get_peft_model(_tiny_gpt2(d, n_layer), sft.lora_config(config)))
        yours = lora_parameter_count(r, d, n_layer)
        if yours != trainable:
            raise NotYet(f"r = {r}, d = {d}, {n_layer} layer(s): PEFT trains {trainable} parameters, you said {yours}")


@exercise("06.2b")
def check_break_even(rank):
    d = 128
    lora_per_block, frozen_per_block = 16 * rank * d, 12 * d * d  # four adapted matrices of one block
    if lora_per_block != frozen_per_block:
        more_or_fewer = "more" if lora_per_block > frozen_per_block else "fewer"
        raise NotYet(f"at r = {rank} LoRA trains {more_or_fewer} parameters than the four matrices it adapts (d = 128)")


@exercise("06.3")
def check_flip(flip):
    reviews = [r["text"] for r in rw.lm_corpus(40, seed=9)]
    for review in reviews:
        flipped = flip(review)
        parsed, original = rw.parse(flipped), rw.parse(review)
        if parsed is None:
            raise NotYet(f"{flipped!r} is not grammatical: {rw.rejection_reason(flipped)}")
        if parsed.forms != original.forms or [c.aspect for c in parsed.clauses] != [c.aspect for c in original.clauses]:
            raise NotYet(f"{review!r} -> {flipped!r}: keep the sentence forms and the aspects")
        if any(a.polarity != -b.polarity for a, b in zip(parsed.clauses, original.clauses)):
            raise NotYet(f"{review!r} -> {flipped!r}: every clause should change polarity")
        if original.closing_value is not None and parsed.closing_value * original.closing_value >= 0:
            raise NotYet(f"{review!r} -> {flipped!r}: the closing verdict should flip too")


@exercise("06.4")
def check_forgetting(results):
    if not {"base", 2e-4, 5e-3} <= set(results):
        raise NotYet("results should have the keys 'base', 2e-4 and 5e-3")
    base, small, large = results["base"], results[2e-4], results[5e-3]
    gain = {lr: base["completion"] - results[lr]["completion"] for lr in (2e-4, 5e-3)}
    if not gain[5e-3] > gain[2e-4] > 0:
        raise NotYet("both runs should lower the completion NLL, the larger learning rate more: train them again?")
    if not large["review"] - base["review"] > small["review"] - base["review"]:
        raise NotYet("the larger learning rate should raise the review NLL more: check which model you measured")


@exercise("06.5")
def check_assistant_labels(mask_labels):
    rows = rw.instruction_pairs(6, seed=12)
    texts = [r["text"] for r in rw.lm_corpus(200, seed=13)] + [r["prompt"] + r["completion"] for r in rows]
    from utils.tokenizer import train_bpe

    tokenizer = sft.with_chat_template(train_bpe(texts, vocab_size=300))
    conversations = [sft.to_messages(rows[0]), sft.to_messages(rows[1]) + sft.to_messages(rows[2])]
    for messages in conversations:
        ids, labels = mask_labels(copy.deepcopy(tokenizer), messages)
        expected_ids, expected_labels = sft.assistant_only_labels(tokenizer, messages)
        if list(ids) != expected_ids:
            raise NotYet(f"a {len(messages)}-message conversation gives other token ids than the chat template")
        if list(labels) != expected_labels:
            trained = sum(label != -100 for label in labels)
            expected = sum(label != -100 for label in expected_labels)
            raise NotYet(f"a {len(messages)}-message conversation: you train {trained} tokens, TRL trains {expected}")


def _tiny_write_setting():
    """A tiny GPT-2, its tokenizer and instruction rows the student has not seen (for exercise 06.6)."""
    from utils.language_model import LMConfig, build_model
    from utils.tokenizer import train_bpe

    rows = rw.instruction_pairs(90, seed=21)
    texts = [r["text"] for r in rw.lm_corpus(300, seed=22)] + [r["prompt"] + r["completion"] for r in rows]
    tokenizer = train_bpe(texts, vocab_size=300)
    model = build_model(LMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=256), tokenizer, seed=3)
    return model, tokenizer, rows


@exercise("06.6")
def check_aspect_gap(aspect_gap):
    from utils import instruction_following as inf

    model, tokenizer, rows = _tiny_write_setting()
    expected = inf.request_sensitivity(model, tokenizer, rows)
    yours = float(aspect_gap(model, tokenizer, rows))
    if abs(yours - expected["sentiment"]) < 1e-9 < abs(yours - expected["aspect"]):
        raise NotYet("that is the gap for the other *sentiment*: keep the sentiment, change the aspect")
    if abs(yours + expected["aspect"]) < 1e-9 < abs(yours - expected["aspect"]):
        raise NotYet("the sign is reversed: the counterfactual request's NLL minus the true one's")
    if abs(yours - expected["aspect"]) > 1e-6:
        raise NotYet(
            f"your gap is {yours:.6f} nats per token on another tiny model, the reference {expected['aspect']:.6f}: "
            "use only the 'write' rows, ask for the next aspect (wrapping around) and keep each completion"
        )


@exercise("06.7")
def check_virtual_tokens(n_virtual_tokens):
    d, n_layer, r = 128, 4, 16
    lora = n_layer * r * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    if n_virtual_tokens * d != lora:
        if n_virtual_tokens * d * n_layer == lora:
            raise NotYet("a soft prompt sits at the input only: it is not repeated in every block")
        raise NotYet(f"{n_virtual_tokens} virtual tokens of width {d} train {n_virtual_tokens * d} parameters")
