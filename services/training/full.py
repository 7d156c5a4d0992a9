"""Full fine-tuning of a small model: every weight trained, the result saved as a complete model.

Every parameter (float32) has a gradient and two AdamW moments: about 16 bytes per parameter
before activations, so on a CPU machine only small models are worth it (see
`TrainingSettings.max_full_parameters`). The LM head is trained too, so the fused loss of lora.py, which needs
a frozen head, does not apply: the logits are computed for the labelled positions only, which for a
micro-batch of at most `max_tokens_per_microbatch` tokens is a few hundred rows of the vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from services.shared.errors import InvalidArgument
from services.training.lora import on_model_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def prepare_full_model(model: PreTrainedModel) -> PreTrainedModel:
    """`model` in float32 with every parameter trainable (with `bf16` the forward runs under autocast)."""
    if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "logit_scale", None):
        raise InvalidArgument(
            f"{model.config.model_type} transforms its logits after the LM head; the trainer computes "
            "the head itself and does not support that",
            param="model",
        )
    model.to(torch.float32)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.train()
    return model


def labelled_loss(
    model: PreTrainedModel, batch: dict[str, torch.Tensor | None], bf16: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(summed loss, correct predictions, label count) of one micro-batch, the head trainable."""
    device, batch = on_model_device(model, batch)
    labels = batch["labels"]
    targets_mask = labels[:, 1:] != -100
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        hidden = model.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][targets_mask])
    targets = labels[:, 1:][targets_mask]
    logits = logits.float()
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.detach().argmax(dim=-1) == targets).sum()
    return loss_sum, correct, int(targets.numel())


def trainable_weights(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Every parameter by name; tied weights (embeddings and LM head) once."""
    return dict(model.named_parameters())


def load_trainable_weights(model: PreTrainedModel, weights: dict[str, torch.Tensor], *,
                           param: str = "checkpoint") -> None:
    expected = set(trainable_weights(model))
    state = model.state_dict()
    unexpected = sorted(name for name, tensor in weights.items()
                        if name not in state or state[name].shape != tensor.shape)
    missing = sorted(expected - set(weights))
    if unexpected or missing:
        raise InvalidArgument(f"model weights do not fit this model: unexpected or of another shape {unexpected[:3]}, "
                              f"missing {missing[:3]}", param=param)
    with torch.no_grad():
        model.load_state_dict(weights, strict=False)


def read_saved_weights(directory: Path, *, param: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The weights `save_pretrained` wrote: model.safetensors, or the shards its index names."""
    from safetensors.torch import load_file

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = [directory / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        files = [directory / "model.safetensors"]
    if not all(file.is_file() for file in files):
        raise InvalidArgument(f"{directory} has no complete safetensors weights", param=param)
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(str(file)))
    return weights

