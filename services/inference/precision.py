"""The dtype the `transformers` backend serves in: bf16 where the hardware computes it natively.

A CPU with AVX512-BF16 or AMX (or a CUDA GPU with bf16) multiplies bf16 matrices about twice as
fast as float32 ones and moves half the bytes, and decoding a small model on a CPU is bound by
exactly those matmuls. Elsewhere bf16 is emulated, slower than float32, so "auto" keeps float32.

What stays float32 on a bf16 model: LoRA adapter weights (peft upcasts them, computes the adapter's
product in float32 and adds it to the bf16 output), and everything that turns logits into numbers
a client sees: the engine upcasts each row's logits before sampling and log-probabilities, and
`Score` before its log-softmax. Batched rows match lone ones less exactly in bf16 than in float32
(each rounding is 2^-8 instead of 2^-24), which is why the token-for-token tests pin float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

from services.shared.models import computes_bf16_natively

if TYPE_CHECKING:
    import torch

ServingDtype = Literal["auto", "float32", "bfloat16"]
SERVING_DTYPES: tuple[str, ...] = get_args(ServingDtype)


def check_serving_dtype(choice: str) -> str:
    """`choice` if it is one of SERVING_DTYPES; ValueError naming the setting otherwise."""
    if choice not in SERVING_DTYPES:
        raise ValueError(f"inference_dtype (TUNELOOP_INFERENCE_DTYPE) must be one of {', '.join(SERVING_DTYPES)}; "
                         f"got {choice!r}")
    return choice


def serving_dtype(choice: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The torch dtype `choice` means on `device`: "auto" is bfloat16 exactly where the device
    computes it natively (services.shared.models.computes_bf16_natively), float32 elsewhere."""
    import torch

    check_serving_dtype(choice)
    if choice == "auto":
        choice = "bfloat16" if computes_bf16_natively(device) else "float32"
    return torch.bfloat16 if choice == "bfloat16" else torch.float32
