"""The LoRA model and its loss: peft wrapping, bf16 base weights, logits only where labels are.

Three things make CPU training fast and small here, each measured in bench/RESULTS.md:

- With `bf16`, the frozen base weights are stored in bfloat16 and the forward runs under CPU
  autocast (AVX512-BF16 / AMX matmuls); the LoRA weights, their gradients and AdamW stay float32.
- The LM head runs only on the positions that have a label (the assistant's tokens), not on every
  position: with a 49k vocabulary it is about a fifth of the model's matrix work per token.
- `fused_linear_cross_entropy` computes head, loss, accuracy and the head's input gradient chunk
  by chunk in the forward pass, so the [tokens x vocab] logits never exist all at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from services.shared.errors import InvalidArgument

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

# Rows of logits computed at once: ~8M floats (32 MB in float32) whatever the vocabulary.
LOGIT_CHUNK_ELEMENTS = 1 << 23


def wrap_with_lora(
    model: PreTrainedModel,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: Sequence[str],
    bf16: bool,
) -> PeftModel:
    """Freeze `model`, add LoRA adapters (float32) and, with `bf16`, store the frozen base in bf16.

    The caller seeds torch first: the LoRA A matrices are drawn from its generator.
    """
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "logit_scale", None):
        raise InvalidArgument(
            f"{model.config.model_type} transforms its logits after the LM head; the trainer computes "
            "the head itself and does not support that",
            param="model",
        )
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = sorted(set(target_modules) - present)
    if missing:
        raise InvalidArgument(
            f"target_modules {missing} are not linear layers of this model (it has {sorted(present)})",
            param="target_modules",
        )
    if bf16:
        model.to(torch.bfloat16)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype keeps the adapter weights in float32 on a bf16 base.
    peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)
    if bf16:
        # peft casts each layer's input to the adapter's float32 before dropout; under autocast the
        # matmul is bf16 anyway, so the cast only costs a float32 copy of every input (kept for
        # backward). Measured: ~10% less peak memory, same speed.
        for module in peft_model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    peft_model.config.use_cache = False
    return peft_model


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, targets)) with `weight` frozen.

    The gradient with respect to `hidden` is computed in the forward pass, chunk by chunk, and
    kept (tokens x hidden, small); the logits of a chunk are dropped as soon as it is done.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, compute_dtype: torch.dtype):
        rows = max(1, LOGIT_CHUNK_ELEMENTS // weight.shape[0])
        needs_grad = ctx.needs_input_grad[0]
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        weight_c = weight.to(compute_dtype)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            chunk = hidden[start : start + rows].to(compute_dtype)
            target = targets[start : start + rows]
            logits = (chunk @ weight_c.T).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            loss += (log_norm - logits.gather(1, target[:, None]).squeeze(1)).sum()
            correct += (logits.argmax(dim=-1) == target).sum()
            if needs_grad:
                probs = logits.sub_(log_norm[:, None]).exp_()
                probs[torch.arange(target.shape[0], device=probs.device), target] -= 1.0
                grad_hidden[start : start + rows] = (probs.to(compute_dtype) @ weight_c).to(hidden.dtype)
        ctx.save_for_backward(grad_hidden)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, compute_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of correct argmax predictions) of `hidden @ weight.T`."""
    if weight.requires_grad:
        raise ValueError("fused_linear_cross_entropy needs a frozen output layer")
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, compute_dtype or weight.dtype)


def labelled_loss(
    peft_model: PeftModel, batch: dict[str, torch.Tensor | None], bf16: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(summed loss, correct predictions, label count) of one micro-batch.

    The decoder runs on every token; the LM head only on positions whose next token is a label.
    """
    base = peft_model.get_base_model()
    labels = batch["labels"]
    targets_mask = labels[:, 1:] != -100
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = base.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
    selected = hidden[:, :-1][targets_mask]
    targets = labels[:, 1:][targets_mask]
    weight = base.get_output_embeddings().weight
    compute_dtype = torch.bfloat16 if bf16 else weight.dtype
    loss_sum, correct = fused_linear_cross_entropy(selected, weight, targets, compute_dtype)
    return loss_sum, correct, int(targets.numel())
