"""Direct preference optimisation (DPO) of a LoRA adapter on preference pairs: a Trainer objective.

The loss is DPO's sigmoid loss (Rafailov et al., 2023), as trl's DPOTrainer computes it with
`loss_type="sigmoid"` and no label smoothing:

    -log σ(β · ((log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected))))

where each log π is summed over the answer's tokens only, π is the policy (base + LoRA) and π_ref
the base model, i.e. the policy with its adapter disabled, as trl does for a peft model without a
separate reference; a run warm-started from a fine-tuned adapter takes that model (the policy as it
starts) as its reference instead. The metrics are trl's too: rewards β·(log π - log π_ref), the share of pairs
whose chosen reward is higher (reward accuracy), and the mean reward margin.

Why not trl's DPOTrainer itself: it is a transformers.Trainer with its own loop, while ours
checkpoints mid-epoch, resumes exactly, cancels between steps, stops early and reports the same
events as supervised training; running DPO inside our Trainer keeps all of that shared. trl 1.16
has no standalone loss function to call instead: the loss is written inline in
`DPOTrainer._compute_loss`, tied to its accelerator and to its patched forward (`fused_lm_head`).
So the formula is written here; the log-probs come from a per-token variant of our fused LM-head
loss (lora.py), which never builds the [tokens x vocab] logits.

The reference log-probs are computed once, before training (trl's `precompute_ref_log_probs`):
the base model does not change, so they are the same at every step, and each step then runs the
model once instead of twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from services.dataprep.examples import Example
from services.shared.errors import InvalidArgument
from services.training.batching import EncodedExample, collate, encode_chat, micro_batches
from services.training.jobs import DEFAULT_BETA
from services.training.lora import LOGIT_CHUNK_ELEMENTS, on_model_device

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")


@dataclass(frozen=True)
class EncodedPair:
    """A prompt with its preferred (chosen) and non-preferred (rejected) answer, each tokenized as
    the whole conversation with labels on the answer only."""

    chosen: EncodedExample
    rejected: EncodedExample
    # The base model's summed log-probs of each answer; set by `DpoObjective.prepare`.
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0


def _answer(record: Mapping[str, Any], key: str, number: int, param: str) -> str:
    output = record.get(key)
    if (not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], Mapping)
            or output[0].get("role") != "assistant" or not isinstance(output[0].get("content"), str)):
        raise InvalidArgument(f"{param}: example {number}: {key} must be a list of one assistant message",
                              param=param)
    return output[0]["content"]


def preference_of(item: Example | Mapping[str, Any], number: int, param: str = "training_file") -> tuple[list[dict], str, str]:
    """(prompt messages, preferred answer, rejected answer) of an Example or an OpenAI preference record."""
    if isinstance(item, Example):
        if item.kind != "preference":
            raise InvalidArgument(f"{param}: the example on line {item.line} is a chat; method.type 'dpo' trains on "
                                  "preference pairs (input, preferred_output, non_preferred_output)", param=param)
        return [dict(m) for m in item.messages], item.preferred or "", item.rejected or ""
    if not isinstance(item, Mapping) or not all(key in item for key in PREFERENCE_KEYS):
        raise InvalidArgument(f"{param}: example {number} is not a preference pair; method.type 'dpo' needs "
                              f"{', '.join(PREFERENCE_KEYS)} in every example", param=param)
    messages = item["input"].get("messages") if isinstance(item["input"], Mapping) else None
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument(f"{param}: example {number}: input.messages must be a non-empty list", param=param)
    return ([dict(m) for m in messages], _answer(item, "preferred_output", number, param),
            _answer(item, "non_preferred_output", number, param))


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Example | Mapping[str, Any]],
    max_length: int,
    param: str = "training_file",
) -> tuple[list[EncodedPair], int]:
    """Every pair whose two answers each keep a token after truncation, and how many did not."""
    pairs, dropped = [], 0
    for number, item in enumerate(items, start=1):
        prompt, preferred, rejected = preference_of(item, number, param)
        # Earlier assistant turns belong to the prompt: weight 0 keeps them out of the log-probs.
        prompt = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in prompt]
        chosen, other = (encode_chat(tokenizer, [*prompt, {"role": "assistant", "content": answer}], max_length)
                         for answer in (preferred, rejected))
        if chosen.n_targets and other.n_targets:
            pairs.append(EncodedPair(chosen, other))
        else:
            dropped += 1
    if items and not pairs:
        raise InvalidArgument(f"no preference pair keeps an answer token within max_length={max_length} tokens",
                              param=param)
    return pairs, dropped


class _FusedTokenLogProbs(torch.autograd.Function):
    """log_softmax(hidden @ weight.T)[targets] per token, with `weight` frozen: lora.py's fused
    cross-entropy, but one value per token instead of their sum, since DPO needs each sequence's
    own sum. The gradient with respect to `hidden` is computed chunk by chunk in the forward pass
    (tokens x hidden, small) and the logits of a chunk are dropped as soon as it is done."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, compute_dtype: torch.dtype):
        rows = max(1, LOGIT_CHUNK_ELEMENTS // weight.shape[0])
        needs_grad = ctx.needs_input_grad[0]
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        weight_c = weight.to(compute_dtype)
        log_probs = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            target = targets[start : start + rows]
            logits = (hidden[start : start + rows].to(compute_dtype) @ weight_c.T).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            log_probs[start : start + rows] = logits.gather(1, target[:, None]).squeeze(1) - log_norm
            if needs_grad:  # d log p(target) / d logits = onehot(target) - softmax
                probs = logits.sub_(log_norm[:, None]).exp_().neg_()
                probs[torch.arange(target.shape[0], device=probs.device), target] += 1.0
                grad_hidden[start : start + rows] = (probs.to(compute_dtype) @ weight_c).to(hidden.dtype)
        ctx.save_for_backward(grad_hidden)
        return log_probs

    @staticmethod
    def backward(ctx: Any, grad_log_probs: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_log_probs[:, None].to(grad_hidden.dtype), None, None, None


def sequence_log_probs(peft_model: PeftModel, batch: dict[str, torch.Tensor | None], bf16: bool) -> torch.Tensor:
    """Each row's log-probability of its labelled tokens, summed: shape [rows]. The decoder runs on
    every token, the LM head only where the next token is a label."""
    base = peft_model.get_base_model()
    device, batch = on_model_device(base, batch)
    labels = batch["labels"]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        hidden = base.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
    weight = base.get_output_embeddings().weight
    if weight.requires_grad:
        raise ValueError("DPO's log-probs need a frozen output layer")
    targets_mask = labels[:, 1:] != -100
    token_log_probs = _FusedTokenLogProbs.apply(hidden[:, :-1][targets_mask], weight, labels[:, 1:][targets_mask],
                                                torch.bfloat16 if bf16 else weight.dtype)
    row_of_token = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets_mask)[targets_mask]
    return torch.zeros(labels.shape[0], dtype=token_log_probs.dtype, device=device).index_add(
        0, row_of_token, token_log_probs)


def _rows(pairs: Sequence[EncodedPair]) -> list[EncodedExample]:
    return [row for pair in pairs for row in (pair.chosen, pair.rejected)]


class DpoObjective:
    """DPO's sigmoid loss, averaged over a batch's pairs; needs a peft model (its reference is the
    same model with the adapter disabled)."""

    rows_per_example = 2
    metric_names = ("loss", "reward_accuracy", "reward_margin")
    total_names = ("loss", "reward_correct", "reward_margin")

    def __init__(self, beta: float = DEFAULT_BETA):
        self.beta = beta

    def encode(self, tokenizer, items, max_length, param):
        return encode_pairs(tokenizer, items, max_length, param)

    def length(self, pair: EncodedPair) -> int:
        return max(len(pair.chosen), len(pair.rejected))

    def tokens(self, pair: EncodedPair) -> int:
        return len(pair.chosen) + len(pair.rejected)

    def weight(self, pair: EncodedPair) -> int:
        return 1

    def prepare(self, peft_model: PeftModel, pairs: Sequence[EncodedPair], pad_id: int, bf16: bool,
                max_tokens: int, *, reference_adapter: bool = False) -> list[EncodedPair]:
        """The pairs with the reference log-probs of their answers filled in: of the base model, or
        with `reference_adapter` of the model with its adapter as it is now (a warm start's parent)."""
        lengths = [self.length(pair) for pair in pairs]
        reference: dict[int, tuple[float, float]] = {}
        was_training = peft_model.training
        peft_model.eval()
        try:
            adapter = contextlib.nullcontext() if reference_adapter else peft_model.disable_adapter()
            with torch.inference_mode(), adapter:
                for part in micro_batches(range(len(pairs)), lengths, max(1, max_tokens // self.rows_per_example)):
                    logps = sequence_log_probs(peft_model, collate(_rows([pairs[i] for i in part]), pad_id), bf16)
                    for index, chosen, rejected in zip(part, logps[0::2].tolist(), logps[1::2].tolist(), strict=True):
                        reference[index] = (chosen, rejected)
        finally:
            peft_model.train(was_training)
        return [replace(pair, ref_chosen=reference[i][0], ref_rejected=reference[i][1]) for i, pair in enumerate(pairs)]

    def loss(self, model, pairs, pad_id, bf16):
        logps = sequence_log_probs(model, collate(_rows(pairs), pad_id), bf16)
        reference = torch.tensor([[pair.ref_chosen, pair.ref_rejected] for pair in pairs], dtype=logps.dtype,
                                 device=logps.device)
        chosen_rewards = self.beta * (logps[0::2] - reference[:, 0])
        rejected_rewards = self.beta * (logps[1::2] - reference[:, 1])
        margins = chosen_rewards - rejected_rewards
        loss_sum = -F.logsigmoid(margins).sum()
        margins = margins.detach()
        return loss_sum, {"reward_correct": float((margins > 0).sum()), "reward_margin": float(margins.sum())}

    def metrics(self, totals, weight, prefix):
        return {f"{prefix}loss": totals["loss"] / weight, f"{prefix}reward_accuracy": totals["reward_correct"] / weight,
                f"{prefix}reward_margin": totals["reward_margin"] / weight}
