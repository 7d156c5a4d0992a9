"""bf16 linear layers whose weights are laid out once for oneDNN's kernels, not on every call.

On a CPU with AMX or AVX512-BF16, `torch.nn.functional.linear` on bf16 tensors runs oneDNN's
matmul, which first reorders the weight into its blocked layout: on every call, for every layer.
Decoding a small model reads each weight once per step, so that reorder is most of a step's matmul
time. `torch.ops.mkldnn._reorder_linear_weight` makes the blocked copy once and
`torch.ops.mkldnn._linear_pointwise` multiplies with it; these are the two ops torch.compile's
Inductor emits for a frozen bf16 linear on a CPU, and they run the same kernel as the unpacked
call, so the results are the same bits (tests/inference/test_packed_linear.py checks that).

Measured on 2 cores of a Xeon with AMX, SmolLM2-135M-Instruct in bf16, one decoding step of a
batch of 8: 36 ms unpacked, 28 ms packed (the matmuls from 24 to 16 ms); one row: 31 ms to 24 ms.
The price is memory: the packed copy sits beside the weight (peft reads the weight's dtype, shape
and device when it wraps a layer with an adapter), so a packed model holds its linear weights
twice (+270 MB for SmolLM2-135M).

Only bf16 on a CPU that computes it natively is packed. In float32 the packed kernels are not the
unpacked ones (MKL's sgemm serves the unpacked call), so answers would change in the last bits
and the float32 exactness the tests rely on would be lost, for a gain measured only at batch 8.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from services.shared.models import computes_bf16_natively

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class PackedLinear(torch.nn.Linear):
    """A `torch.nn.Linear` (so peft still wraps it with adapters) that multiplies with its weight's
    oneDNN-blocked copy when it can: bf16 in, on the CPU, no gradient asked for."""

    packed: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def can_pack(model: PreTrainedModel) -> bool:
    """Whether `pack_linears` would pack `model`: bf16 weights, on a CPU that computes bf16 natively."""
    return (model.dtype == torch.bfloat16 and model.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and computes_bf16_natively("cpu"))


def pack_linears(model: PreTrainedModel, batch_size: int) -> int:
    """Pack every plain bf16 `torch.nn.Linear` of `model` in place (none if `can_pack` says no); how
    many were packed. `batch_size` is oneDNN's hint for the rows it will multiply at once; any
    number of rows gives the same result. Call it before peft wraps any layer, and not on a model
    that will be trained."""
    if not can_pack(model):
        return 0
    packed = 0
    with torch.no_grad():
        for module in model.modules():
            if type(module) is torch.nn.Linear and module.weight.dtype == torch.bfloat16:
                module.__class__ = PackedLinear
                module.packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), batch_size)
                packed += 1
    return packed
