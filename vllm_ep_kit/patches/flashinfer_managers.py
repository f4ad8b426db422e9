"""What the hotfixes and the kit's backends both need to know about vLLM's FlashInfer NVLink
managers: their class names, and how to call the one-sided ``initialize`` of any release.

Kept under ``patches/`` because patches depend on vLLM and their own package only;
the backend modules read the same facts from here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

ALL2ALL = "vllm.distributed.device_communicators.all2all"
TWO_SIDED_MANAGER = "FlashInferNVLinkTwoSidedManager"
ONE_SIDED_MANAGER = "FlashInferNVLinkOneSidedManager"
MANAGER_CLASSES = (TWO_SIDED_MANAGER, ONE_SIDED_MANAGER)


@dataclass(frozen=True)
class WorkspaceShape:
    """What the one-sided manager sizes its workspace from."""

    max_num_tokens: int = 64
    top_k: int = 4
    num_experts: int = 16
    hidden_size: int = 256
    x_bytes_per_token: int = 512  # bf16 hidden
    x_sf_bytes_per_token: int = 0

    def bytes_beyond(self, row_bytes_per_token: int) -> int:
        """What a token's payload carries beyond an unquantised row of ``row_bytes_per_token``
        (vLLM 0.33 / ``flashinfer.moe_ep``'s ``extra_payload_bytes_per_token``)."""
        return max(0, self.x_bytes_per_token + self.x_sf_bytes_per_token - row_bytes_per_token)


def one_sided_initialize_kwargs(manager, shape: WorkspaceShape) -> dict:
    """Arguments for the one-sided ``initialize`` of the installed vLLM.

    vLLM 0.18-0.21 take (max_num_tokens, top_k, num_experts, hidden_size);
    0.22-0.32 add the per-token payload sizes; 0.33 takes a dispatch format
    (None: bf16 rows of ``hidden_size``) and the bytes a token carries beyond
    it.  Pass what it accepts.
    """
    accepted = inspect.signature(manager.initialize).parameters
    values = {
        "max_num_tokens": shape.max_num_tokens,
        "top_k": shape.top_k,
        "num_experts": shape.num_experts,
        "hidden_size": shape.hidden_size,
        "x_bytes_per_token": shape.x_bytes_per_token,
        "x_sf_bytes_per_token": shape.x_sf_bytes_per_token,
        "extra_payload_bytes_per_token": shape.bytes_beyond(shape.hidden_size * 2),
    }
    unknown = [
        n for n, p in accepted.items() if n not in values and p.default is inspect.Parameter.empty
    ]
    if unknown:
        raise TypeError(
            f"{type(manager).__name__}.initialize needs {unknown}, "
            "which this vllm-ep-kit does not know how to supply"
        )
    return {k: v for k, v in values.items() if k in accepted}


def accelerator_stand_ins():
    """``torch.accelerator``'s calls vLLM's managers make around an allocation (empty the
    cache, wait, pick the device) as no-ops, for probes and recorders that allocate nothing:
    a CUDA build of torch raises on them without a driver."""
    import torch

    from vllm_ep_kit.patches.base import swapped

    return swapped(
        torch.accelerator,
        empty_cache=lambda: None,
        synchronize=lambda *a: None,
        current_device_index=lambda: 0,
    )
