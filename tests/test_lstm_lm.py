"""The LSTM language model: GPT-2's shifted loss, causal by construction, trainable by train_lm; the probe of
the connective rule gives 1 for a model that has the rule and 0 for one that ignores the connective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from utils import review_world as rw
from utils.language_model import LMTrainConfig, encode_reviews, train_lm
from utils.lstm_lm import LMOutput, LSTMConfig, build_lstm, connective_probes, connective_rule_score
from utils.tokenizer import train_bpe


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe([r["text"] for r in rw.lm_corpus(2000, seed=0)], vocab_size=1024)


def test_loss_is_the_shifted_cross_entropy_with_ignored_labels():
    model = build_lstm(LSTMConfig(n_embd=16, n_layer=2), vocab_size=30, seed=1)
    ids = torch.randint(30, (3, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 6:] = -100
    out = model(input_ids=ids, labels=labels)
    by_hand = [-torch.log_softmax(out.logits[b, t], -1)[ids[b, t + 1]] for b in range(3) for t in range(8)
               if labels[b, t + 1] != -100]  # fmt: skip
    assert out.logits.shape == (3, 9, 30)
    assert torch.allclose(out.loss, torch.stack(by_hand).mean(), atol=1e-6)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits[:, :-1].reshape(-1, 30), labels[:, 1:].reshape(-1)))


def test_causal_and_tied():
    model = build_lstm(LSTMConfig(n_embd=16), vocab_size=30, seed=1).eval()
    ids = torch.randint(30, (1, 10), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % 30
    a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    assert torch.equal(a[0, :6], b[0, :6]) and not torch.allclose(a[0, 6:], b[0, 6:])
    assert model(input_ids=ids).loss is None
    assert isinstance(model(input_ids=ids), LMOutput)
    again = build_lstm(LSTMConfig(n_embd=16), 30, 1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))  # same seed, same weights
    with torch.no_grad():  # the output layer is the embedding table: moving one row moves that token's logit
        model.wte.weight[5] += 1.0
    assert not torch.allclose(model(input_ids=ids).logits[..., 5], a[..., 5])
    assert torch.allclose(model(input_ids=ids).logits[..., 6], a[..., 6])


def test_train_lm_trains_it(tokenizer):
    seqs = encode_reviews([r["text"] for r in rw.lm_corpus(300, seed=3)], tokenizer)
    model = build_lstm(LSTMConfig(n_embd=32), len(tokenizer), seed=0)
    config = LMTrainConfig(steps=40, batch_size=8, block_size=32, lr=1e-2, warmup_steps=4, eval_every=40,
                           eval_batches=2)  # fmt: skip
    log = train_lm(model, seqs, seqs[:50], config, progress=False)
    assert log[-1]["val_loss"] < 0.75 * torch.log(torch.tensor(float(len(tokenizer)))).item()


def test_probes_follow_the_grammar():
    probes = connective_probes(0.9)
    assert len(probes) == 12
    assert dict(probes)["the acting was great and the plot was"] == 0.9
    assert dict(probes)["the acting was great, but the plot was"] == pytest.approx(0.1)
    assert dict(probes)["the acting was awful, but the plot was"] == 0.9
    assert dict(probes)["the acting was boring and the plot was"] == pytest.approx(0.1)


class Oracle(torch.nn.Module):
    """Puts `share(prompt)` of its adjective mass on positive adjectives, spread evenly over them."""

    def __init__(self, tokenizer, share):
        super().__init__()
        self.tokenizer, self.share = tokenizer, share
        self.pos = [tokenizer.convert_tokens_to_ids("Ġ" + w) for w, *_ in rw.ADJECTIVES[+1]]
        self.neg = [tokenizer.convert_tokens_to_ids("Ġ" + w) for w, *_ in rw.ADJECTIVES[-1]]

    def forward(self, input_ids):
        prompt = self.tokenizer.decode(input_ids[0], skip_special_tokens=True)
        probs = torch.full((len(self.tokenizer),), 1e-3)
        s = self.share(prompt)
        probs[self.pos], probs[self.neg] = s / len(self.pos), (1 - s) / len(self.neg)
        return LMOutput(logits=probs.log().expand(1, input_ids.size(1), -1))


def test_rule_score_is_one_for_the_grammar_and_zero_without_the_rule(tokenizer):
    truth = dict(connective_probes(0.9))
    assert connective_rule_score(Oracle(tokenizer, truth.get), tokenizer) == pytest.approx(1.0, abs=1e-5)
    assert connective_rule_score(Oracle(tokenizer, lambda p: 0.5), tokenizer) == pytest.approx(0.0, abs=1e-6)
    first_clause_only = lambda p: 0.7 if any(w in p for w in ("great", "excellent", "wonderful")) else 0.3  # noqa: E731
    assert abs(connective_rule_score(Oracle(tokenizer, first_clause_only), tokenizer)) < 1e-5  # ignores the connective
    backwards = lambda p: 1 - truth[p]  # noqa: E731
    assert connective_rule_score(Oracle(tokenizer, backwards), tokenizer) == pytest.approx(-1.0, abs=1e-5)


def test_bad_config():
    with pytest.raises(ValueError, match="n_embd"):
        LSTMConfig(n_embd=0)
    with pytest.raises(ValueError, match="dropout"):
        LSTMConfig(dropout=1.0)
