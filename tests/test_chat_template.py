"""Chat templates and assistant-only loss (utils.sft): our from-scratch masking against what TRL's SFTTrainer
with ``assistant_only_loss=True`` actually trains on, and the template against transformers' rendering."""

from __future__ import annotations

import pytest

from utils import review_world as rw
from utils import sft
from utils.language_model import LMConfig, build_model
from utils.tokenizer import train_bpe

TINY_LM = LMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=256)
TINY_SFT = sft.SFTConfig(epochs=1.0, batch_size=4, lr=3e-3)


@pytest.fixture(scope="module")
def rows():
    return rw.instruction_pairs(40, seed=5)


@pytest.fixture(scope="module")
def chat_tokenizer(rows):
    texts = [r["text"] for r in rw.lm_corpus(300, seed=6)] + [r["prompt"] + r["completion"] for r in rows]
    return sft.with_chat_template(train_bpe(texts, vocab_size=400))


def conversations(rows):
    one_turn = [sft.to_messages(r) for r in rows[:5]]
    two_turns = sft.to_messages(rows[5]) + sft.to_messages(rows[6])  # user, assistant, user, assistant
    return [*one_turn, two_turns]


def test_with_chat_template_leaves_the_original_alone(rows):
    plain = train_bpe([r["prompt"] for r in rows], vocab_size=300)
    chat = sft.with_chat_template(plain)
    assert chat.chat_template == sft.CHAT_TEMPLATE and plain.chat_template != sft.CHAT_TEMPLATE


def test_labels_match_transformers_rendering_and_assistant_mask(chat_tokenizer, rows):
    for messages in conversations(rows):
        ids, labels = sft.assistant_only_labels(chat_tokenizer, messages)
        rendered = chat_tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert ids == rendered["input_ids"]  # pieces tokenized alone == the whole rendered text
        assert labels == [t if m else -100 for t, m in zip(ids, rendered["assistant_masks"])]
        assert ids[0] == chat_tokenizer.bos_token_id and ids.count(chat_tokenizer.bos_token_id) == 1 + sum(
            m["role"] == "assistant" for m in messages
        )  # BOS once; EOS (the same id here) once per assistant turn
        trained = [t for t in labels if t != -100]
        assert trained.count(chat_tokenizer.eos_token_id) == sum(m["role"] == "assistant" for m in messages)
        answers = "".join(f" {m['content']}" for m in messages if m["role"] == "assistant")
        assert chat_tokenizer.decode(trained, skip_special_tokens=True) == answers


def test_trl_assistant_only_loss_trains_on_exactly_our_labels(chat_tokenizer, rows, tmp_path):
    chats = conversations(rows)
    model = build_model(TINY_LM, chat_tokenizer, seed=0)
    trainer = sft.build_chat_sft_trainer(model, chat_tokenizer, chats, TINY_SFT, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(chats))])
    for i, messages in enumerate(chats):
        ids, labels = sft.assistant_only_labels(chat_tokenizer, messages)
        n = len(ids)
        assert batch["input_ids"][i, :n].tolist() == ids
        assert batch["labels"][i, :n].tolist() == labels
        assert batch["labels"][i, n:].eq(-100).all()  # padding is never trained
        assert batch["attention_mask"][i].sum().item() == n


def test_a_template_without_generation_markers_trains_on_nothing_of_ours(rows):
    # The unmarked template renders the same text, but transformers cannot tell which tokens are the answer.
    chat = sft.with_chat_template(
        train_bpe([r["prompt"] + r["completion"] for r in rows], vocab_size=300),
        sft.CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", ""),
    )
    rendered = chat.apply_chat_template(
        sft.to_messages(rows[0]), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, _ = sft.assistant_only_labels(chat, sft.to_messages(rows[0]))
    assert rendered["input_ids"] == ids and not any(rendered["assistant_masks"])


def test_unknown_role_is_rejected(chat_tokenizer):
    with pytest.raises(ValueError, match="unknown role 'system'"):
        sft.assistant_only_labels(chat_tokenizer, [{"role": "system", "content": "be brief"}])
