"""A recurrent language model (LSTM) to set beside the transformer, and a probe of the connective rule.

Before attention, language models were recurrent: a fixed-size state :math:`h_t` is updated token by
token, :math:`h_t = f(h_{t-1}, x_t)`, and the next token is predicted from :math:`h_t` alone. Everything
the model knows about the prefix must squeeze through that state, and the computation is sequential in
:math:`t` (a transformer processes all positions of a training sequence in parallel). The LSTM
(Hochreiter and Schmidhuber, 1997) gates what the state keeps and forgets, so that information can
survive many steps.

:class:`LSTMLM` has the interface the course's training loop needs (``model(input_ids=..., labels=...)``
returns an object with ``.loss`` and ``.logits``, with the same shifted next-token loss as a transformers
causal LM), so :func:`utils.language_model.train_lm` trains it unchanged.

:func:`connective_rule_shares` asks any such model the question notebooks 04 and 05 ask the base LM: after
"the X was great, but the Y was", how much of its adjective mass goes to positive adjectives? The review
world's answer is 0.9 or 0.1 depending on the connective and the first clause; a model that ignores the
connective answers about 0.5 every time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils import review_world as rw
from utils.config_checks import check_int, check_number
from utils.seed import set_seed


@dataclass(frozen=True)
class LSTMConfig:
    """Shape of the LSTM language model (vocabulary size comes from the tokenizer). Validated on construction."""

    n_layer: int = 1
    """stacked LSTM layers"""
    n_embd: int = 128
    """embedding width = hidden state width (so the output layer can be tied to the embedding)"""
    dropout: float = 0.0
    """between stacked layers only (PyTorch's LSTM dropout); fresh samples every step, nothing to overfit"""

    def __post_init__(self) -> None:
        check_int(self, "n_layer", ge=1)
        check_int(self, "n_embd", ge=1)
        check_number(self, "dropout", ge=0, lt=1)


@dataclass
class LMOutput:
    """What a transformers causal LM returns, as far as the course's loops use it."""

    logits: torch.Tensor
    """(B, T, V) next-token logits at every position"""
    loss: torch.Tensor | None = None
    """mean next-token NLL over the non-ignored labels (None without labels)"""


class LSTMLM(nn.Module):
    """Embedding -> LSTM -> output layer tied to the embedding (as GPT-2 ties its own)."""

    def __init__(self, vocab_size: int, config: LSTMConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(vocab_size, config.n_embd)
        self.lstm = nn.LSTM(
            config.n_embd,
            config.n_embd,
            num_layers=config.n_layer,
            batch_first=True,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
        )
        self.ln_f = nn.LayerNorm(config.n_embd)
        nn.init.normal_(self.wte.weight, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> LMOutput:
        """``input_ids`` (B, T), right-padded if ``attention_mask`` is given (a recurrent model reads left to
        right, so right padding never reaches a real position); ``labels`` (B, T), -100 where ignored."""
        hidden, _ = self.lstm(self.wte(input_ids))  # (B, T, C): h_t, which has read tokens 1..t
        logits = self.ln_f(hidden) @ self.wte.weight.T  # (B, T, V)
        loss = None
        if labels is not None:  # position t predicts token t + 1, exactly as GPT2LMHeadModel's loss
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return LMOutput(logits=logits, loss=loss)


def build_lstm(config: LSTMConfig, vocab_size: int, seed: int = 0) -> LSTMLM:
    """A freshly initialised :class:`LSTMLM` (same seed, same weights)."""
    set_seed(seed)
    return LSTMLM(vocab_size, config)


# The probe: first clauses with a clear polarity, then each connective; the grammar's answer for each.
PROBE_ADJECTIVES = {+1: ("great", "excellent", "wonderful"), -1: ("awful", "boring", "terrible")}
PROBE_CONNECTIVES = {"and": (" and", +1), "but": (", but", -1)}


def connective_probes(agreement: float = 0.9) -> list[tuple[str, float]]:
    """Prompts "the acting was ADJ{and|, but} the plot was" and the grammar's P(positive adjective next).

    After "and" the second clause keeps the first clause's polarity with probability ``agreement``; after
    ", but" it flips with that probability.
    """
    probes = []
    for polarity, adjectives in PROBE_ADJECTIVES.items():
        for adjective in adjectives:
            for connective, sign in PROBE_CONNECTIVES.values():
                suggested = polarity * sign
                prompt = f"the acting was {adjective}{connective} the plot was"
                probes.append((prompt, agreement if suggested > 0 else 1 - agreement))
    return probes


@torch.no_grad()
def positive_share(model: nn.Module, tokenizer, prompts: list[str]) -> torch.Tensor:
    """For each prompt, P(positive adjective) / P(any lexicon adjective) for the next token, shape (N,)."""
    positive = [tokenizer.convert_tokens_to_ids("Ġ" + w) for w, *_ in rw.ADJECTIVES[+1]]
    negative = [tokenizer.convert_tokens_to_ids("Ġ" + w) for w, *_ in rw.ADJECTIVES[-1]]
    model.eval()
    shares = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])  # (1, T), BOS first
        p = torch.softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)  # (V,)
        shares.append(p[positive].sum() / (p[positive].sum() + p[negative].sum()))
    return torch.stack(shares)


def connective_rule_score(model: nn.Module, tokenizer, agreement: float = 0.9) -> float:
    """How much the model's P(positive adjective) moves the way the connective rule says, from 0 to 1.

    Mean share on the prompts where the grammar says ``agreement`` minus the mean share where it says
    ``1 - agreement``, divided by the grammar's own difference (``2 * agreement - 1``): 1 for a model
    that has the rule exactly, about 0 for one that ignores the connective, negative if backwards.
    """
    probes = connective_probes(agreement)
    shares = positive_share(model, tokenizer, [prompt for prompt, _ in probes])
    truth = torch.tensor([p for _, p in probes])
    high, low = shares[truth > 0.5].mean(), shares[truth < 0.5].mean()
    return ((high - low) / (2 * agreement - 1)).item()
