"""Direct Preference Optimisation (DPO, Rafailov et al. 2023): preference tuning with no reward model and no
sampling, from the closed form of the KL-regularised objective.

RLHF maximises, for each prompt x, the expected reward minus a KL penalty to the reference policy:

    max_pi  E_{y ~ pi(.|x)} [ r(x, y) ]  -  beta * KL( pi(.|x) || pi_ref(.|x) )

Its maximiser has a closed form (a Gibbs distribution; Z(x) normalises it):

    pi*(y|x) = pi_ref(y|x) * exp( r(x, y) / beta ) / Z(x)

Solved for the reward, every policy pi defines an *implicit reward*

    r(x, y) = beta * log( pi(y|x) / pi_ref(y|x) )  +  beta * log Z(x)

Bradley-Terry only ever compares two completions of the SAME prompt, so beta * log Z(x) cancels in the
difference, and the reward model's loss becomes a loss on the policy itself:

    L = -log sigmoid( beta * [ (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)) ] )

with y_w the chosen and y_l the rejected completion. Fitting Bradley-Terry on the implicit reward IS
solving the KL-regularised problem, for the reward model that fits the preferences best; beta plays the
KL coefficient's role (small beta: far from pi_ref; large beta: close to it).

Label smoothing (conservative DPO, Mitchell 2023): if a fraction eps of the labels is flipped, the
expected loss is -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d). TRL 1.16's ``"sigmoid"`` loss
ignores ``label_smoothing`` (only its ``"robust"`` and ``"aot"`` losses read it), so TRL and we agree at
label_smoothing = 0, the default.

``sequence_logprobs`` sums the log-probabilities of the completion tokens only, as TRL does: the prompt is
shared by the two completions and the reference, and cancels anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.config_checks import check, check_choice, check_int, check_number, is_number
from utils.ppo_losses import logprobs_from_logits

LOSS_TYPES = ("sigmoid", "hinge")  # DPO's Bradley-Terry loss; SLiC's hinge on the same margin


@dataclass(frozen=True)
class DPOConfig:
    """The DPO loss's settings. Validated on construction (ValueError naming the field on bad values)."""

    beta: float = 0.1
    """KL coefficient of the objective DPO solves, and the scale of the implicit reward beta * log pi/pi_ref.
    Must be > 0: at 0 the loss no longer depends on the policy (and the objective has no KL anchor)"""
    label_smoothing: float = 0.0
    """assumed fraction of flipped labels (conservative DPO), in [0, 0.5): at 0.5 the labels carry no
    information and the loss has no gradient. Only the "sigmoid" loss uses it"""
    loss_type: str = "sigmoid"
    """"sigmoid" (DPO: -log sigmoid(beta * margin), TRL's default) or "hinge" (SLiC: relu(1 - beta * margin))"""
    seed: int = 0
    """seed of the training run that uses this config (batch order, dropout if any)"""

    def __post_init__(self) -> None:
        check_number(self, "beta", gt=0)
        check_number(self, "label_smoothing", ge=0, lt=0.5)
        check_choice(self, "loss_type", LOSS_TYPES)
        check(
            self,
            "label_smoothing",
            self.loss_type == "sigmoid" or self.label_smoothing == 0,
            f"0 with loss_type={self.loss_type!r} (only the sigmoid loss smooths labels)",
        )
        check_int(self, "seed", ge=0)


def sequence_logprobs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """log pi(completion | prompt) for each row: the summed log-probs of the tokens where ``completion_mask``
    is set. All tensors (B, T), prompt then completion in each row, right padding.

    Token t is predicted by the logits at position t - 1, so the first token (BOS) is never scored; a mask
    set on it would be ignored, as in TRL, which also shifts by one.
    """
    if not (input_ids.shape == attention_mask.shape == completion_mask.shape):
        raise ValueError(
            "input_ids, attention_mask and completion_mask must have the same shape, got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(completion_mask.shape)}"
        )
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    token_logps = logprobs_from_logits(logits, input_ids[:, 1:])
    scored = completion_mask[:, 1:].bool()
    # where, not multiply: whatever the model says about padding must not reach the sum or its gradient
    return torch.where(scored, token_logps, torch.zeros_like(token_logps)).sum(dim=1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss of a batch of pairs, and the implicit rewards of its completions.

    Inputs are (B,) sequence log-probs (:func:`sequence_logprobs`) of the chosen and rejected completions
    under the policy and the frozen reference. Returns ``(loss, chosen_rewards, rejected_rewards)``:

    * loss: the batch mean of -log sigmoid(beta * margin) (``"sigmoid"``) or relu(1 - beta * margin)
      (``"hinge"``), with margin = (log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected);
    * the implicit rewards beta * (log pi - log pi_ref) of each completion, (B,), detached (they are for
      reading: reward accuracy is chosen_rewards > rejected_rewards), as TRL logs them.
    """
    if not (is_number(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if not (is_number(label_smoothing) and 0 <= label_smoothing < 0.5):
        raise ValueError(f"label_smoothing must be a finite number in [0, 0.5), got {label_smoothing!r}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    shapes = {
        tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    }
    if len(shapes) != 1:
        raise ValueError(f"the four log-prob tensors must have the same shape, got {sorted(shapes)}")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)  # Bradley-Terry on the implicit rewards
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    else:
        if label_smoothing != 0:
            raise ValueError(f"label_smoothing must be 0 with loss_type='hinge', got {label_smoothing!r}")
        losses = torch.relu(1 - logits)
    return losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def dpo_loss_from_config(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    config: DPOConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`dpo_loss` with the settings of ``config``."""
    return dpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=config.beta,
        label_smoothing=config.label_smoothing,
        loss_type=config.loss_type,
    )
