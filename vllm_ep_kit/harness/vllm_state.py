"""Bring up vLLM's real parallel state inside a rank that already has a world group.

The harness initialises ``torch.distributed`` itself (race-free store, or
torchrun's env://).  vLLM's ``init_distributed_environment`` then sees an
initialised default group and only builds its world coordinator, and
``initialize_model_parallel`` carves TP/DP/EP groups out of it exactly as in
``vllm serve``.  On a CPU-only machine ``DeviceConfig(device="cpu")`` is what
lets ``VllmConfig`` build (measured with vLLM 0.32.0).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from vllm_ep_kit.reference.layout import ParallelLayout

if TYPE_CHECKING:
    from vllm.config import VllmConfig

Device = Literal["cuda", "cpu"]  # the device kinds a rank runs vLLM's groups on


def build_vllm_config(
    layout: ParallelLayout, rank: int, device: Device, all2all_backend: str | None
) -> VllmConfig:
    """A ``VllmConfig`` describing ``layout`` as seen from global ``rank``."""
    from vllm.config import DeviceConfig, ParallelConfig, VllmConfig
    from vllm.config.vllm import OptimizationLevel

    # Any: the values' types are ParallelConfig's, checked by it (pydantic) at run time
    kwargs: dict[str, Any] = dict(
        tensor_parallel_size=layout.tp,
        data_parallel_size=layout.dp,
        data_parallel_rank=layout.dp_rank(rank),
        prefill_context_parallel_size=layout.pcp,
        enable_expert_parallel=layout.enable_ep,
        # The harness owns process creation: keep vLLM from planning its own.
        distributed_executor_backend="mp" if layout.world_size > 1 else "uni",
    )
    if all2all_backend is not None:
        kwargs["all2all_backend"] = all2all_backend
    parallel = ParallelConfig(**kwargs)
    # -O0: the harness compiles nothing.  Higher levels make VllmConfig plan fusion
    # passes (for TP > 1 on CUDA, all-reduce + RMSNorm) whose import looks up vLLM's
    # compiled custom ops, which a sources-only install lacks (measured on 2x H200:
    # "'_OpNamespace' '_C' object has no attribute 'rotary_embedding'").
    return VllmConfig(
        parallel_config=parallel,
        device_config=DeviceConfig(device=device),
        optimization_level=OptimizationLevel.O0,
    )


def vllm_has_compiled_ops() -> bool:
    """Whether vLLM's compiled custom ops are registered (absent in a sources-only bundle)."""
    import torch

    try:
        import vllm._custom_ops  # noqa: F401 (loads the extensions when present)
    except ImportError:
        return False
    return hasattr(torch.ops._C, "rotary_embedding")


# Environment that keeps a sources-only vLLM off paths needing its compiled ops:
# vLLM's TP-group FlashInfer all-reduce imports the all-reduce fusion pass, which
# looks up compiled ops at import (measured on 2x H200 with the bundle).  The
# all-to-all under test does not depend on which all-reduce TP uses.
SOURCES_ONLY_ENV = {"VLLM_ALLREDUCE_USE_FLASHINFER": "0"}


@contextlib.contextmanager
def vllm_parallel_state(
    layout: ParallelLayout,
    rank: int,
    local_rank: int,
    backend: str,
    device: Device,
    all2all_backend: str | None = None,
) -> Iterator[VllmConfig]:
    """Yield the ``VllmConfig`` with vLLM's groups built; tear them down after."""
    import torch.distributed as dist
    from vllm.config import set_current_vllm_config
    from vllm.distributed import parallel_state as ps

    if not dist.is_initialized():
        raise RuntimeError("vllm_parallel_state needs torch.distributed initialised first")
    if dist.get_world_size() != layout.world_size:
        raise RuntimeError(
            f"layout {layout.describe()} needs {layout.world_size} ranks, "
            f"the world group has {dist.get_world_size()}"
        )
    if device != "cpu" and not vllm_has_compiled_ops():
        for name, value in SOURCES_ONLY_ENV.items():
            os.environ.setdefault(name, value)  # this rank process only
    config = build_vllm_config(layout, rank, device, all2all_backend)
    with set_current_vllm_config(config):
        ps.init_distributed_environment(
            world_size=layout.world_size,
            rank=rank,
            local_rank=local_rank,
            backend=backend,
        )
        ps.initialize_model_parallel(
            tensor_model_parallel_size=layout.tp,
            prefill_context_model_parallel_size=layout.pcp,
        )
        try:
            yield config
        finally:
            # Only vLLM's groups: the world process group belongs to the harness.
            ps.destroy_model_parallel()
            if ps._WORLD is not None:
                ps._WORLD.destroy()
                ps._WORLD = None
