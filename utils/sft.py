"""Supervised fine-tuning (SFT, "instruction tuning") of the base LM with TRL's ``SFTTrainer``.

The base LM only continues reviews. SFT shows it (prompt, completion) pairs from the review world's three
instruction tasks (summarise a review, write a review with a given sentiment, continue an opening) and
trains it to produce the completion. Three details decide whether this works:

* **Loss on the completion only** (``completion_only_loss=True``): the prompt tokens get label -100, so the
  model is not trained to *write prompts*, only to answer them.
* **EOS after every completion**: TRL appends ``tokenizer.eos_token`` to each completion, so the model
  learns to *stop*. Our tokenizer has a separate PAD token; were PAD = EOS, masking the padding would also
  mask this EOS, and the model would ramble on forever.
* **BOS once**: our tokenizer adds BOS to every encoded text, and TRL tokenizes ``prompt`` and
  ``prompt + completion`` with it, so every training sequence is ``[BOS] prompt completion [EOS]``, exactly
  what greedy decoding sees at test time (``[BOS] prompt`` -> ...). The BOS sits in the masked prompt part.

Two ways to fine-tune: full fine-tuning (every weight moves; the pipeline's policy for PPO) and LoRA
(Hu et al., 2021: frozen weights plus trainable low-rank updates ``W + B A``, a few percent of the
parameters). QLoRA (Dettmers et al., 2023) additionally stores the frozen base in 4 bits; it needs a CUDA
GPU and bitsandbytes, see :func:`qlora_unavailable_reason`.

Evaluation: greedy decoding on held-out instructions, ROUGE and BLEU against the references (per task),
task-specific checks from the review world's grammar (does "write a positive review" give a grammatical
positive review?), and catastrophic forgetting: the NLL of plain reviews before and after SFT.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from utils import review_world as rw
from utils.config_checks import check_bool, check_choice, check_int, check_names, check_number, check_numbers
from utils.decoding import SamplingConfig, generate, left_pad
from utils.text_metrics import corpus_bleu, mean_rouge
from utils.trl_helpers import offline_cpu_training_args, quiet_training, silence_trainer

if TYPE_CHECKING:  # heavy imports (TRL, PEFT, datasets) are loaded only when training
    from transformers import PreTrainedTokenizerBase
    from trl import SFTTrainer

LORA_ADAPTER_DIR = "lora_adapter"  # sub-folder of the SFT artifact holding the LoRA adapter


@dataclass(frozen=True)
class SFTConfig:
    """How the base LM is instruction-tuned (our own config; TRL's ``trl.SFTConfig`` is built from it).
    Validated on construction (ValueError on bad values)."""

    epochs: float = 2.0
    """passes over the instruction rows"""
    batch_size: int = 32
    """rows per optimiser step"""
    lr: float = 2e-3
    """peak learning rate of full fine-tuning (tiny models tolerate large ones)"""
    lr_scheduler: str = "cosine"
    """transformers scheduler name (``transformers.SchedulerType``): warmup, then cosine decay to 0"""
    warmup_ratio: float = 0.05
    """share of the steps spent warming up linearly"""
    weight_decay: float = 0.0
    """a short fine-tune on clean data: nothing to regularise"""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas as in pretraining (TRL's default beta2=0.999 adapts slowly)"""
    grad_clip: float = 1.0
    """max global gradient norm"""
    max_length: int = 256
    """longest training sequence in tokens (ours are < 100: nothing is truncated)"""
    group_by_length: bool = True
    """batch rows of similar length: half the padding, ~1.5x faster on a CPU"""
    lora_r: int = 16
    """rank of the LoRA update B A"""
    lora_alpha: int = 32
    """LoRA scale: alpha / r multiplies the update"""
    lora_dropout: float = 0.0
    """dropout on the LoRA input; none needed for a short run"""
    lora_lr: float = 5e-3
    """LoRA trains few weights from a zero update: it needs a larger step"""
    lora_target_modules: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    """GPT-2 attention and MLP matrices that get an adapter"""
    train_lora: bool = False
    """also train the LoRA variant in the stage (+12 min on 2 cores; notebook 06 demos it)"""
    eval_max_new_tokens: int = 96
    """greedy decoding budget (the longest reference is ~60 tokens)"""
    eval_batch_size: int = 128
    """prompts decoded together"""
    seed: int = 0
    """TRL's seed: batch order and LoRA init"""

    def __post_init__(self) -> None:
        from transformers import SchedulerType

        for name in ("batch_size", "max_length", "lora_r", "lora_alpha", "eval_max_new_tokens", "eval_batch_size"):
            check_int(self, name, ge=1)
        check_int(self, "seed", ge=0)
        for name in ("epochs", "lr", "lora_lr", "grad_clip"):
            check_number(self, name, gt=0)
        check_number(self, "weight_decay", ge=0)
        for name in ("warmup_ratio", "lora_dropout"):
            check_number(self, name, ge=0, lt=1)
        check_numbers(self, "betas", length=2, ge=0, lt=1)
        check_choice(self, "lr_scheduler", [s.value for s in SchedulerType])
        check_names(self, "lora_target_modules")
        for name in ("group_by_length", "train_lora"):
            check_bool(self, name)


# ------------------------------------------------------------------------------------------------
# Training with TRL
# ------------------------------------------------------------------------------------------------
def to_dataset(rows: Sequence[dict]):
    """Prompt-completion rows as a ``datasets.Dataset`` (extra columns such as ``task`` are kept)."""
    from datasets import Dataset

    if not rows or not {"prompt", "completion"} <= set(rows[0]):
        raise ValueError("SFT rows must be a non-empty list of dicts with 'prompt' and 'completion' keys")
    return Dataset.from_list(list(rows))


def lora_config(config: SFTConfig):
    """PEFT's ``LoraConfig`` for our GPT-2: adapters on the attention and MLP projections.

    GPT-2 stores its projections as ``Conv1D`` (weight shape (in, out), the transpose of ``nn.Linear``),
    hence ``fan_in_fan_out=True``. The LM head is tied to the token embedding and stays frozen.
    """
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        fan_in_fan_out=True,
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_sft_trainer(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    config: SFTConfig,
    output_dir: str | Path,
    lora: bool = False,
    eval_rows: Sequence[dict] | None = None,
) -> SFTTrainer:
    """A TRL ``SFTTrainer`` for prompt-completion ``rows`` (loss on completions only), not yet trained.

    With ``lora=True`` TRL wraps ``model`` in a PEFT LoRA model (see :func:`lora_config`).
    """
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    args = TRLSFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        learning_rate=config.lora_lr if lora else config.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a share of the total steps
        weight_decay=config.weight_decay,
        adam_beta1=config.betas[0],
        adam_beta2=config.betas[1],
        max_grad_norm=config.grad_clip,
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,  # packing would let attention cross from one example into the next
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        eval_strategy="epoch" if eval_rows is not None else "no",
        **offline_cpu_training_args(config.batch_size, config.seed),
    )
    with quiet_training():
        return silence_trainer(
            SFTTrainer(
                model=model,
                args=args,
                processing_class=tokenizer,
                train_dataset=to_dataset(rows),
                eval_dataset=to_dataset(eval_rows) if eval_rows is not None else None,
                peft_config=lora_config(config) if lora else None,
            )
        )


def train_sft(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    config: SFTConfig,
    lora: bool = False,
    eval_rows: Sequence[dict] | None = None,
) -> tuple[nn.Module, dict]:
    """Fine-tune ``model`` on ``rows``; returns the trained model and a report (log, seconds, shares).

    Full fine-tuning trains ``model`` in place. With ``lora=True`` the returned model is the PEFT wrapper
    (adapters + frozen base); call ``merge_and_unload()`` on it for a plain, fast ``GPT2LMHeadModel``.
    """
    with tempfile.TemporaryDirectory(prefix="sft-") as output_dir:
        trainer = build_sft_trainer(model, tokenizer, rows, config, output_dir, lora=lora, eval_rows=eval_rows)
        trained, total = count_trainable(trainer.model)
        start = time.perf_counter()
        with quiet_training():
            trainer.train()
        seconds = time.perf_counter() - start
    trained_model = trainer.model.eval()
    report = {
        "train_seconds": seconds,
        "trainable_params": trained,
        "total_params": total,
        "trainable_share": trained / total,
        "steps": trainer.state.global_step,
        "log": trainer.state.log_history,
    }
    return trained_model, report


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts: LoRA's selling point is the ratio of the two."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# QLoRA: only on a CUDA GPU with bitsandbytes
# ------------------------------------------------------------------------------------------------
def qlora_unavailable_reason() -> str | None:
    """Why QLoRA cannot run here (a sentence for the student), or None if it can."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("no bitsandbytes")
    if not missing:
        return None
    has = "neither" if len(missing) == 2 else missing[0]
    return (
        f"QLoRA needs a CUDA GPU and bitsandbytes; this machine has {has}, so QLoRA is skipped: "
        "use LoRA (same adapters on a full-precision base model), which runs anywhere."
    )


def load_for_qlora(model_dir: str | Path, config: SFTConfig):
    """The LM in ``model_dir`` loaded in 4-bit NF4 and made ready for QLoRA (pass to ``train_sft(lora=True)``).

    Raises RuntimeError with :func:`qlora_unavailable_reason` where QLoRA cannot run (e.g. on a CPU).
    """
    reason = qlora_unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, GPT2LMHeadModel

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = GPT2LMHeadModel.from_pretrained(str(model_dir), quantization_config=quantization, device_map={"": 0})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_completions(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 96,
    batch_size: int = 128,
) -> list[str]:
    """The greedy continuation of each prompt (text after the prompt, EOS and padding removed)."""
    model.eval()
    encoded = tokenizer(list(prompts))["input_ids"]  # each starts with BOS, like the training sequences
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths: little padding
    config = SamplingConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out: list[str] = [""] * len(encoded)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        input_ids, attention_mask = left_pad([encoded[i] for i in index], tokenizer.pad_token_id)
        sequences = generate(model, input_ids, attention_mask, config)  # (B, T + N)
        texts = tokenizer.batch_decode(sequences[:, input_ids.size(1) :], skip_special_tokens=True)
        for i, text in zip(index, texts):
            out[i] = text
    return out


@torch.no_grad()
def completion_nll(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], batch_size: int = 128
) -> float:
    """Mean NLL per completion token (EOS included) given the prompt: the quantity SFT minimises.

    Computed independently of TRL (our own masking), so it also checks what TRL optimised.
    """
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompt_lens = [len(ids) for ids in tokenizer([r["prompt"] for r in chunk])["input_ids"]]
        full = tokenizer([r["prompt"] + r["completion"] + tokenizer.eos_token for r in chunk])["input_ids"]
        length = max(len(s) for s in full)
        input_ids = torch.full((len(full), length), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
        target_mask = torch.zeros_like(input_ids, dtype=torch.bool)  # True on completion tokens
        for i, (seq, p) in enumerate(zip(full, prompt_lens)):
            input_ids[i, : len(seq)] = torch.tensor(seq)
            target_mask[i, p : len(seq)] = True
        attention_mask = (torch.arange(length)[None] < torch.tensor([len(s) for s in full])[:, None]).long()
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position t predicts token t + 1
        token_logprobs = logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        mask = target_mask[:, 1:]
        total -= token_logprobs[mask].sum().item()
        count += int(mask.sum())
    return total / count


@torch.no_grad()
def first_token_nll(model: nn.Module, sequences: Sequence[Sequence[int]], batch_size: int = 512) -> float:
    """Mean NLL (nats) of each sequence's first token after BOS: -log p(x_1 | BOS).

    Completion-only SFT never trains this prediction (every SFT sequence starts BOS + prompt, and the
    prompt is masked), so it drifts freely; separating it from the rest of the review NLL tells
    forgetting of the language from forgetting of how reviews begin.
    """
    model.eval()
    firsts = torch.tensor([s[:2] for s in sequences])  # (N, 2): BOS and the first token
    total = 0.0
    for start in range(0, len(firsts), batch_size):
        chunk = firsts[start : start + batch_size]
        logprobs = torch.log_softmax(model(input_ids=chunk[:, :1]).logits[:, -1].float(), dim=-1)  # (B, V)
        total -= logprobs.gather(-1, chunk[:, 1:]).sum().item()
    return total / len(firsts)


def requested_sentiment(prompt: str) -> bool | None:
    """True/False for "Write a positive/negative review ...", None for other prompts."""
    if not prompt.startswith("Write a "):
        return None
    return prompt.startswith("Write a positive")


def task_checks(row: dict, completion: str) -> dict[str, float]:
    """Grammar-based checks of one output, beyond n-gram overlap (1.0 = pass, 0.0 = fail)."""
    text = completion.strip()
    if row["task"] == "write":
        parsed = rw.parse(text)
        wanted_positive = requested_sentiment(row["prompt"])
        aspect = row["prompt"].split(" about the ")[-1].split(".\n")[0]
        return {
            "grammatical": float(parsed is not None),
            "sentiment_ok": float(parsed is not None and (parsed.sentiment > 0) == wanted_positive),
            "aspect_ok": float(parsed is not None and parsed.clauses[0].aspect == aspect),
        }
    if row["task"] == "continue":
        return {"grammatical": float(rw.is_grammatical(row["prompt"] + completion))}
    return {"exact_match": float(text == row["completion"].strip())}  # summarise: one right answer


def evaluate_instructions(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    max_new_tokens: int = 96,
    batch_size: int = 128,
) -> tuple[dict, list[dict]]:
    """ROUGE-1/2/L F1 and corpus BLEU of greedy outputs vs the references, overall and per task.

    Returns (flat metrics, one record per row with the output). Keys: ``rouge1_f``, ``rouge2_f``,
    ``rougeL_f``, ``bleu`` (0-100), and per task ``<task>.<metric>`` plus the checks of :func:`task_checks`
    (e.g. ``write.sentiment_ok``: share of written reviews that are grammatical *and* have the sentiment
    the instruction asked for).
    """
    outputs = greedy_completions(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens, batch_size)
    records = [{**row, "output": out, **task_checks(row, out)} for row, out in zip(rows, outputs)]

    def overlap(subset: list[dict]) -> dict[str, float]:
        predictions = [r["output"].strip() for r in subset]
        references = [r["completion"].strip() for r in subset]
        rouge = mean_rouge(predictions, references)
        return {
            "rouge1_f": rouge["rouge1"],
            "rouge2_f": rouge["rouge2"],
            "rougeL_f": rouge["rougeL"],
            "bleu": corpus_bleu(predictions, references).score,
        }

    metrics = overlap(records)
    for task in rw.INSTRUCTION_TASKS:
        subset = [r for r in records if r["task"] == task]
        if not subset:
            continue
        metrics.update({f"{task}.{k}": v for k, v in overlap(subset).items()})
        for check in task_checks(subset[0], subset[0]["output"]):
            metrics[f"{task}.{check}"] = sum(r[check] for r in subset) / len(subset)
    return metrics, records


# ------------------------------------------------------------------------------------------------
# Chat templates and assistant-only loss (conversational data, as chat models are trained)
# ------------------------------------------------------------------------------------------------
# A chat model sees a conversation rendered by a Jinja *chat template*. TRL's ``assistant_only_loss=True``
# trains on the tokens inside ``{% generation %} ... {% endgeneration %}`` only: transformers returns them as
# ``assistant_masks`` and TRL sets every other label to -100. The end-of-turn token (our EOS) sits inside the
# generation block, so the model learns to stop its turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant:' }}{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}"
    "{{ '\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def to_messages(row: dict) -> list[dict]:
    """A prompt-completion row as a two-turn conversation (TRL's conversational "messages" format)."""
    return [
        {"role": "user", "content": row["prompt"]},
        {"role": "assistant", "content": row["completion"].strip()},  # the template puts the space back
    ]


def with_chat_template(tokenizer: PreTrainedTokenizerBase, template: str = CHAT_TEMPLATE):
    """A copy of ``tokenizer`` with ``template`` as its chat template (the shared tokenizer stays untouched)."""
    import copy

    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.chat_template = template
    return chat_tokenizer


def assistant_only_labels(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation rendered like :data:`CHAT_TEMPLATE`, written out in Python, and labels
    that are -100 everywhere except on the assistant's answers and their EOS (what the model learns to write).

    Each piece is tokenized on its own; the pieces end on token boundaries (newline, colon, special token),
    so the ids equal those of the whole rendered text.
    """
    pieces = [(tokenizer.bos_token, False)]  # (text, trained?)
    for message in messages:
        if message["role"] == "user":
            pieces.append((f"User: {message['content']}\n", False))
        elif message["role"] == "assistant":
            pieces += [("Assistant:", False), (f" {message['content']}{tokenizer.eos_token}", True), ("\n", False)]
        else:
            raise ValueError(f"assistant_only_labels: unknown role {message['role']!r} (user or assistant)")
    ids, labels = [], []
    for text, trained in pieces:
        piece_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        labels += piece_ids if trained else [-100] * len(piece_ids)
    return ids, labels


def build_chat_sft_trainer(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[dict]],
    config: SFTConfig,
    output_dir: str | Path,
) -> SFTTrainer:
    """A TRL ``SFTTrainer`` on conversational data (``{"messages": [...]}`` rows) with
    ``assistant_only_loss=True``, not yet trained. ``tokenizer`` must carry a chat template with
    ``{% generation %}`` markers (see :func:`with_chat_template`)."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    args = TRLSFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        max_length=config.max_length,
        assistant_only_loss=True,
        packing=False,
        **offline_cpu_training_args(config.batch_size, config.seed),
    )
    dataset = Dataset.from_list([{"messages": list(messages)} for messages in conversations])
    with quiet_training():
        return silence_trainer(SFTTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=dataset))
