"""Instruction tuning with TRL's SFTTrainer: masking, EOS, BOS, LoRA, QLoRA's message, evaluation plumbing.

The collated batch of the real trainer is checked token by token against our own encoding of each row;
the trainer's loss against our independent completion NLL; LoRA against its definition (frozen base,
merge = same outputs). Models are tiny (1 layer, width 32) and randomly initialised.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2LMHeadModel

from utils import review_world as rw
from utils import sft
from utils.language_model import LMConfig, build_model
from utils.tokenizer import train_bpe

TINY_LM = LMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=256)  # tiny: for speed, not quality
TINY_SFT = sft.SFTConfig(epochs=1.0, batch_size=16, lr=3e-3, lora_r=4, lora_alpha=8, lora_lr=1e-2)


@pytest.fixture(scope="module")
def rows():
    return rw.instruction_pairs(240, seed=3)


@pytest.fixture(scope="module")
def tokenizer(rows):
    """A small BPE trained on reviews and instruction rows (a second or less)."""
    texts = [r["text"] for r in rw.lm_corpus(600, seed=4)] + [r["prompt"] + r["completion"] for r in rows]
    return train_bpe(texts, vocab_size=400)


def tiny_lm(tokenizer, seed: int = 0) -> GPT2LMHeadModel:
    return build_model(TINY_LM, tokenizer, seed=seed)


def test_trainer_masks_the_prompt_and_appends_eos(tokenizer, rows, tmp_path):
    trainer = sft.build_sft_trainer(tiny_lm(tokenizer), tokenizer, rows[:8], TINY_SFT, tmp_path)
    examples = [trainer.train_dataset[i] for i in range(8)]
    assert all(e["completion"].endswith(tokenizer.eos_token) for e in examples)  # TRL appended EOS
    batch = trainer.data_collator(examples)  # exactly what the training loop receives
    eos, bos, pad = tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id
    assert pad != eos  # or masking the padding would also mask the EOS the model must learn
    for i, row in enumerate(rows[:8]):
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"]
        n, p = len(full), len(prompt_ids)
        assert full[:p] == prompt_ids  # the prompt's tokens are a prefix: no merge across the boundary
        assert batch["input_ids"][i, :n].tolist() == full
        assert full[0] == bos and full[1] != bos  # one BOS, ours, not doubled by TRL
        labels = batch["labels"][i].tolist()
        assert labels[:p] == [-100] * p  # no loss on the prompt (BOS included)
        assert labels[p:n] == full[p:]  # loss on every completion token ...
        assert labels[n - 1] == eos  # ... including the final EOS
        assert labels[n:] == [-100] * (len(labels) - n)  # and none on padding
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (len(labels) - n)
        assert batch["input_ids"][i, n:].eq(pad).all()


def test_trainer_loss_is_our_completion_nll(tokenizer, rows, tmp_path):
    model = tiny_lm(tokenizer).eval()
    trainer = sft.build_sft_trainer(model, tokenizer, rows[:16], TINY_SFT, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(16)])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
    assert trl_loss == pytest.approx(sft.completion_nll(model, tokenizer, rows[:16]), rel=1e-5)


def test_short_sft_run_lowers_completion_loss(tokenizer, rows):
    train_rows, test_rows = rows[:200], rows[200:]
    model = tiny_lm(tokenizer)
    before = sft.completion_nll(model, tokenizer, test_rows)
    assert before == pytest.approx(math.log(len(tokenizer)), rel=0.1)  # random init: ~uniform over tokens
    trained, report = sft.train_sft(model, tokenizer, train_rows, TINY_SFT)
    after = sft.completion_nll(trained, tokenizer, test_rows)
    assert after < before - 0.5  # 13 steps: about 6.0 -> 5.3 nats per token
    assert report["steps"] == math.ceil(len(train_rows) / TINY_SFT.batch_size)
    assert report["trainable_share"] == 1.0  # full fine-tuning


def test_lora_trains_only_the_adapters_and_merges_exactly(tokenizer, rows):
    base = tiny_lm(tokenizer)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model, report = sft.train_sft(base, tokenizer, rows[:64], TINY_SFT, lora=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # per block: c_attn (32 -> 96), attn c_proj (32 -> 32), c_fc (32 -> 128), mlp c_proj (128 -> 32)
    r = TINY_SFT.lora_r
    expected = r * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert report["trainable_params"] == expected
    assert report["trainable_share"] == pytest.approx(expected / report["total_params"])
    probe = torch.tensor([tokenizer("Write a positive review about the music.\nReview:")["input_ids"]])
    with torch.no_grad():
        adapted = model(input_ids=probe).logits
        merged = model.merge_and_unload()  # W + (alpha / r) B A
        torch.testing.assert_close(merged(input_ids=probe).logits, adapted, rtol=1e-4, atol=1e-5)
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, frozen[k])]
    assert changed and all(any(m in k for m in TINY_SFT.lora_target_modules) for k in changed)


def test_qlora_gives_a_clear_message_without_cuda(monkeypatch, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the message is for CPU-only machines")
    monkeypatch.setattr(sft.importlib.util, "find_spec", lambda name: None)  # no bitsandbytes either
    reason = sft.qlora_unavailable_reason()
    assert reason.startswith("QLoRA needs a CUDA GPU and bitsandbytes; this machine has neither")
    with pytest.raises(RuntimeError, match="QLoRA needs a CUDA GPU"):
        sft.load_for_qlora(tmp_path, TINY_SFT)
    monkeypatch.setattr(sft.torch.cuda, "is_available", lambda: True)
    assert "this machine has no bitsandbytes" in sft.qlora_unavailable_reason()


def test_task_checks_accept_references_and_catch_errors(rows):
    for task in rw.INSTRUCTION_TASKS:
        row = next(r for r in rows if r["task"] == task)
        assert all(v == 1.0 for v in sft.task_checks(row, row["completion"]).values()), task
    write = next(r for r in rows if r["task"] == "write" and "positive" in r["prompt"])
    aspect = write["prompt"].split(" about the ")[1].split(".")[0]
    negative = f" the {aspect} was awful."
    assert rw.is_grammatical(negative.strip()) and not rw.is_positive(negative.strip())
    assert sft.task_checks(write, negative) == {"grammatical": 1.0, "sentiment_ok": 0.0, "aspect_ok": 1.0}
    assert sft.task_checks(write, " the the was.")["grammatical"] == 0.0


def test_evaluation_of_perfect_outputs(tokenizer, rows, monkeypatch):
    test_rows = rows[:30]
    perfect = lambda model, tokenizer, prompts, *args: [r["completion"] for r in test_rows]  # noqa: E731
    monkeypatch.setattr(sft, "greedy_completions", perfect)
    metrics, records = sft.evaluate_instructions(None, tokenizer, test_rows)
    assert metrics["rouge1_f"] == metrics["rougeL_f"] == pytest.approx(1.0)
    assert metrics["bleu"] == pytest.approx(100.0)
    assert metrics["write.sentiment_ok"] == metrics["summarise.exact_match"] == 1.0
    assert len(records) == 30 and records[0]["output"] == test_rows[0]["completion"]


def test_greedy_completions_strip_prompt_and_eos(tokenizer, rows):
    model = tiny_lm(tokenizer).eval()
    prompts = [r["prompt"] for r in rows[:5]]
    outputs = sft.greedy_completions(model, tokenizer, prompts, max_new_tokens=6, batch_size=2)
    for prompt, output in zip(prompts, outputs):  # one at a time, unpadded, with transformers' generate
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        reference = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=6,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        assert output == tokenizer.decode(reference[0, ids.size(1) :], skip_special_tokens=True)


def test_first_token_nll_is_minus_log_p_of_the_token_after_bos(tokenizer):
    model = tiny_lm(tokenizer)
    sequences = [[0, 7, 9, 0], [0, 12, 0], [0, 7, 0]]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([[0]])).logits[0, -1], dim=-1)
    by_hand = -(2 * logprobs[7] + logprobs[12]).item() / 3
    assert sft.first_token_nll(model, sequences, batch_size=2) == pytest.approx(by_hand, rel=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        sft.SFTConfig(batch_size=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        sft.SFTConfig(warmup_ratio=1.5)
