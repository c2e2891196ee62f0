"""Prompt tuning: our SoftPromptLM against PEFT's prompt-tuning model (parameters, logits, the loss TRL trains
on), KV-cache greedy decoding against a cache-free reference, and a short training run that moves only the
prompt. Models are tiny (1 layer, width 32) and randomly initialised: for speed, not quality."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from utils import review_world as rw
from utils import sft
from utils.decoding import SamplingConfig, generate, left_pad
from utils.language_model import LMConfig, build_model
from utils.prompt_tuning import (
    PromptTuningConfig,
    SoftPromptLM,
    hard_prompt_embeddings,
    peft_prompt_tuning_config,
    soft_prompt_of,
    train_prompt_tuning,
)
from utils.tokenizer import train_bpe
from utils.trl_helpers import quiet_training

TINY_LM = LMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=256)  # tiny: for speed, not quality
TINY_SFT = sft.SFTConfig(epochs=1.0, batch_size=16, lr=3e-3)


@pytest.fixture(scope="module")
def rows():
    return rw.instruction_pairs(96, seed=3)


@pytest.fixture(scope="module")
def tokenizer(rows):
    texts = [r["text"] for r in rw.lm_corpus(400, seed=4)] + [r["prompt"] + r["completion"] for r in rows]
    return train_bpe(texts, vocab_size=300)


@pytest.fixture()
def peft_model(tokenizer):
    from peft import get_peft_model

    torch.manual_seed(0)
    with quiet_training():
        return get_peft_model(build_model(TINY_LM, tokenizer, seed=0), peft_prompt_tuning_config(PromptTuningConfig(8)))


def test_trainable_parameters_are_the_prompt_only(peft_model):
    n, d = 8, TINY_LM.n_embd
    peft_trainable, _ = sft.count_trainable(peft_model)
    ours = SoftPromptLM(copy.deepcopy(peft_model.get_base_model()), soft_prompt_of(peft_model))
    assert peft_trainable == n * d == sft.count_trainable(ours)[0] == 256


def test_vocab_init_copies_token_embeddings(peft_model):
    prompt = soft_prompt_of(peft_model)  # (n, d)
    vocabulary = peft_model.get_base_model().get_input_embeddings().weight  # (V, d)
    copies = (prompt[:, None] == vocabulary[None]).all(dim=-1)  # (n, V): virtual token i is vocabulary token j
    assert prompt.shape == (8, TINY_LM.n_embd) and copies.any(dim=1).all()


def test_logits_equal_peft(peft_model, tokenizer, rows):
    with torch.no_grad():
        peft_model.prompt_encoder.default.embedding.weight.normal_(0, 0.5)  # a prompt unlike any token
    batch = tokenizer([r["prompt"] + r["completion"] for r in rows[:5]], padding=True, return_tensors="pt")
    ours = SoftPromptLM(copy.deepcopy(peft_model.get_base_model()), soft_prompt_of(peft_model)).eval()
    peft_model.eval()
    with torch.no_grad():
        theirs = peft_model(**batch).logits[:, 8:]  # (B, T, V) after the 8 virtual positions
        mine = ours(**batch).logits  # (B, T, V)
        plain = peft_model.get_base_model()(**batch).logits
    assert mine.shape == plain.shape
    assert (mine - theirs).abs().max() < 1e-5
    assert (mine - plain).abs().max() > 0.1  # the prompt does change the predictions


def test_trl_loss_is_our_masked_loss_behind_the_prompt(peft_model, tokenizer, rows, tmp_path):
    trainer = sft.build_sft_trainer(peft_model, tokenizer, rows[:6], TINY_SFT, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    ours = SoftPromptLM(copy.deepcopy(peft_model.get_base_model()), soft_prompt_of(peft_model)).eval()
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
        logits = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        mine = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    assert abs(trl_loss - mine.item()) < 1e-4


def test_cached_greedy_decoding_equals_a_cache_free_reference(peft_model, tokenizer, rows):
    with torch.no_grad():
        peft_model.prompt_encoder.default.embedding.weight.normal_(0, 0.5)
    model = SoftPromptLM(copy.deepcopy(peft_model.get_base_model()), soft_prompt_of(peft_model)).eval()
    prompts = [tokenizer(r["prompt"])["input_ids"] for r in rows[:4]]  # different lengths: left padding
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id)
    config = SamplingConfig(max_new_tokens=6, do_sample=False)
    cached = generate(model, input_ids, attention_mask, config)[:, input_ids.size(1) :]  # (B, 6)
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(6):  # the whole sequence again at every step: no cache, no padding
                ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
        assert ids[0, len(prompt) :].tolist() == cached[i].tolist()


def test_training_moves_only_the_prompt(tokenizer, rows):
    base = build_model(TINY_LM, tokenizer, seed=0)
    before = copy.deepcopy(base.state_dict())
    config = PromptTuningConfig(n_virtual_tokens=4, lr=5e-2)
    tuned, report = train_prompt_tuning(base, tokenizer, rows, TINY_SFT, config)
    assert report["trainable_params"] == 4 * TINY_LM.n_embd and report["steps"] == 6
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # the caller's model untouched
    assert all(torch.equal(before[k], v) for k, v in tuned.model.state_dict().items())  # frozen in training
    vocabulary = base.get_input_embeddings().weight
    assert not (tuned.prompt[:, None] == vocabulary[None]).all(dim=-1).any()  # moved off its initial tokens
    assert sft.completion_nll(tuned, tokenizer, rows) < sft.completion_nll(base, tokenizer, rows)


def test_a_hard_prompt_is_a_soft_prompt_of_token_embeddings(tokenizer, rows):
    model = build_model(TINY_LM, tokenizer, seed=1).eval()
    demo = rows[0]["prompt"] + rows[0]["completion"]
    prompted = SoftPromptLM(copy.deepcopy(model), hard_prompt_embeddings(model, tokenizer, demo)).eval()
    demo_ids, query_ids = tokenizer(demo)["input_ids"], tokenizer(rows[1]["prompt"])["input_ids"]
    with torch.no_grad():
        ours = prompted(input_ids=torch.tensor([query_ids])).logits  # (1, T, V)
        reading_both = model(input_ids=torch.tensor([demo_ids + query_ids])).logits[:, len(demo_ids) :]
    assert (ours - reading_both).abs().max() < 1e-5


def test_text_init_equals_peft_text_init(tokenizer, tmp_path):
    from peft import PromptTuningConfig as PEFTPromptTuningConfig
    from peft import get_peft_model

    tokenizer.save_pretrained(str(tmp_path))  # PEFT's TEXT init loads the tokenizer from a path
    model = build_model(TINY_LM, tokenizer, seed=2)
    text = "Write a review."
    reference = PEFTPromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=11,
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text=text,
        tokenizer_name_or_path=str(tmp_path),
    )
    with quiet_training():
        theirs = soft_prompt_of(get_peft_model(copy.deepcopy(model), reference))
    assert torch.equal(hard_prompt_embeddings(model, tokenizer, text, n_virtual_tokens=11), theirs)
    with pytest.raises(ValueError, match="init_text"):
        PromptTuningConfig(init="text")
