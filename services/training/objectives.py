"""What a training run minimises, as the Trainer sees it: the supervised objective here, DPO in `dpo.py`.

The Trainer owns the loop (batches, micro-batches, optimizer, checkpoints, resume, cancel, early
stopping, events); an objective owns everything that depends on the kind of example: how examples
are encoded, how many tokens one costs, what the batch's summed loss is divided by, the loss of a
micro-batch and the metrics it reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from services.training.batching import EncodedExample, collate, encode_dataset
from services.training.lora import labelled_loss

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


class Objective(Protocol):
    # Sequences the model runs per example: 1 for a chat, 2 for a preference pair.
    rows_per_example: int
    # Metric names without their prefix ("train_", "valid_", "full_valid_"); "loss" first.
    metric_names: tuple[str, ...]
    # The sums `loss` returns ("loss" and its stats), that `metrics` makes the metrics of.
    total_names: tuple[str, ...]

    def encode(self, tokenizer: PreTrainedTokenizerBase, items: Sequence[Any], max_length: int,
               param: str) -> tuple[list[Any], int]:
        """The encoded examples that keep something to learn from, and how many did not."""

    def length(self, example: Any) -> int:
        """Tokens of the example's longest row: what batches are grouped and padded by."""

    def tokens(self, example: Any) -> int:
        """Tokens the model reads for the example (OpenAI's trained_tokens)."""

    def weight(self, example: Any) -> int:
        """The example's share of the divisor of a batch's summed loss."""

    def loss(self, model: Any, examples: Sequence[Any], pad_id: int, bf16: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """The summed loss of a micro-batch and the sums its metrics are made of."""

    def metrics(self, totals: Mapping[str, float], weight: int, prefix: str) -> dict[str, float]:
        """Metrics from summed `loss` results over examples whose weights add up to `weight`."""


class SupervisedObjective:
    """Cross-entropy on the assistant's tokens, averaged over a batch's label tokens.

    `loss_fn` is `lora.labelled_loss` (frozen LM head, fused) or `full.labelled_loss` (trainable head).
    """

    rows_per_example = 1
    metric_names = ("loss", "mean_token_accuracy")
    total_names = ("loss", "correct")

    def __init__(self, loss_fn=labelled_loss):
        self._loss_fn = loss_fn

    def encode(self, tokenizer, items, max_length, param):
        return encode_dataset(tokenizer, items, max_length, param)

    def length(self, example: EncodedExample) -> int:
        return len(example)

    def tokens(self, example: EncodedExample) -> int:
        return len(example)

    def weight(self, example: EncodedExample) -> int:
        return example.n_targets

    def loss(self, model, examples, pad_id, bf16):
        loss_sum, correct, _ = self._loss_fn(model, collate(list(examples), pad_id), bf16)
        return loss_sum, {"correct": int(correct)}

    def metrics(self, totals, weight, prefix):
        return {f"{prefix}loss": totals["loss"] / weight, f"{prefix}mean_token_accuracy": totals["correct"] / weight}
