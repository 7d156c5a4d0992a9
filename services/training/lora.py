"""The trainable model and its loss: peft LoRA on a frozen base, made fast on a CPU.

What makes CPU training fast and small here, each measured in bench/RESULTS.md:

- With `bf16`, the frozen base weights are stored in bfloat16 and the forward runs under CPU
  autocast (AVX512-BF16 / AMX matmuls); the LoRA weights, their gradients and AdamW stay float32.
- The LM head runs only on the positions that have a label (the assistant's tokens), not on every
  position: with a 49k vocabulary it is about a fifth of the model's matrix work per token.
- `fused_linear_cross_entropy` computes head, loss, accuracy and the head's input gradient chunk
  by chunk in the forward pass, so the [tokens x vocab] logits never exist all at once.
- Attention over short sequences is plain matmuls (`short_sequence_attention`): PyTorch's CPU
  flash-attention backward is several times slower than the matmuls at these lengths.
- LoRA dropout draws 16 random bits per element from 64-bit draws (`FastDropout`), not a 32-bit
  draw per element as torch's dropout does: the random numbers were an eighth of the step.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from services.shared.errors import InvalidArgument

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

# Rows of logits computed at once: ~8M floats (32 MB in float32) whatever the vocabulary.
LOGIT_CHUNK_ELEMENTS = 1 << 23
ATTENTION = "tuneloop_cpu_training"
# Up to this many tokens per sequence attention is plain matmuls; above it, SDPA's flash kernel,
# whose memory does not grow with the square of the length.
EAGER_ATTENTION_MAX_TOKENS = 256


class FastDropout(torch.nn.Module):
    """Dropout whose keep-mask comes from 16-bit random lanes of 64-bit draws (p resolved to
    1/65536): a quarter of the random-number work of `torch.nn.Dropout`, same expectation.
    Draws from torch's default generator, so seeds and saved RNG states still apply."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * 65536)
        self.scale = 65536 / (65536 - self.threshold)

    @property
    def active(self) -> bool:
        return self.training and self.threshold > 0

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        draws = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
        return draws.view(torch.int16)[: x.numel()].view(x.shape) >= self.threshold - 32768

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return (x * self.keep_mask(x)).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _lean_lora_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's LoRA Linear forward for one plain adapter, with fewer passes over full-size tensors:
    the dropout and LoRA scales are applied to the rank-r activations, and the low-rank update is
    added to the base output inside the second matmul (addmm). Anything else: peft's own forward."""
    name = self.active_adapters[0] if len(self.active_adapters) == 1 else None
    if (name is None or self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None
            or name in self.lora_variant or name not in self.lora_A or self.lora_B[name].bias is not None):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    dropout, scale = self.lora_dropout[name], self.scaling[name]
    if isinstance(dropout, FastDropout) and dropout.active:
        x, scale = x * dropout.keep_mask(x), scale * dropout.scale
    else:
        x = dropout(x)
    down = self.lora_A[name](x.to(self.lora_A[name].weight.dtype) if self.cast_input_dtype_enabled else x) * scale
    up = self.lora_B[name].weight
    if not torch.is_autocast_enabled(x.device.type):
        down, up = down.to(result.dtype), up.to(result.dtype)
    flat = torch.addmm(result.reshape(-1, result.shape[-1]), down.reshape(-1, down.shape[-1]), up.t())
    return flat.view(result.shape)


def short_sequence_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention: matmuls and a float32 softmax for short sequences, SDPA otherwise.

    The mask is SDPA's (boolean, True = attend; None = plain causal)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, k_len = query.shape[-2], key.shape[-2]
    if k_len > EAGER_ATTENTION_MAX_TOKENS or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if attention_mask is None:
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
    scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _use_training_attention(model: PreTrainedModel) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, short_sequence_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    model.set_attn_implementation(ATTENTION)


def on_model_device(model: PreTrainedModel, batch: dict[str, torch.Tensor | None]
                    ) -> tuple[torch.device, dict[str, torch.Tensor | None]]:
    """The device the model runs on (the GPU, where the trainer put it) and the batch moved there."""
    device = model.get_input_embeddings().weight.device
    return device, {name: t.to(device, non_blocking=True) if t is not None else None for name, t in batch.items()}


def is_quantized(model: PreTrainedModel) -> bool:
    """Loaded through bitsandbytes (QLoRA's 4-bit base)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


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

    A 4-bit base (QLoRA) goes through peft's `prepare_model_for_kbit_training` first: the layers
    left unquantized (norms, embeddings) in float32, everything frozen; its LoRA layers are peft's
    bitsandbytes ones, which run peft's own forward.
    The caller seeds torch first: the LoRA A matrices are drawn from its generator.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "logit_scale", None):
        raise InvalidArgument(
            f"{model.config.model_type} transforms its logits after the LM head; the trainer computes "
            "the head itself and does not support that",
            param="model",
        )
    if is_quantized(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # bitsandbytes' Linear4bit is a torch.nn.Linear too
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = sorted(set(target_modules) - present)
    if missing:
        raise InvalidArgument(
            f"target_modules {missing} are not linear layers of this model (it has {sorted(present)})",
            param="target_modules",
        )
    if bf16 and not is_quantized(model):  # a 4-bit base keeps its layout; bf16 is its compute dtype
        model.to(torch.bfloat16)
    if model.config._attn_implementation in ("sdpa", "eager"):
        _use_training_attention(model)
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
    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            for name, dropout in module.lora_dropout.items():
                if isinstance(dropout, torch.nn.Dropout):
                    module.lora_dropout[name] = FastDropout(dropout.p)
        if type(module) is LoraLinear:
            module.forward = types.MethodType(_lean_lora_forward, module)
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
    device, batch = on_model_device(base, batch)
    labels = batch["labels"]
    targets_mask = labels[:, 1:] != -100
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        hidden = base.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
    selected = hidden[:, :-1][targets_mask]
    targets = labels[:, 1:][targets_mask]
    weight = base.get_output_embeddings().weight
    compute_dtype = torch.bfloat16 if bf16 else weight.dtype
    loss_sum, correct = fused_linear_cross_entropy(selected, weight, targets, compute_dtype)
    return loss_sum, correct, int(targets.numel())
