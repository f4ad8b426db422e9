"""vLLM's all-gather / reduce-scatter all-to-all (``AgRsAll2AllManager``); ``naive`` is an alias.

Dispatch all-gathers every DP rank's tokens (the EP group's under sequence
parallelism) to every rank; combine reduce-scatters the ranks' expert
partials back.  It runs on CPU ranks over gloo (vLLM's ``CpuCommunicator``)
and on GPUs over PyNccl.  fp8 block scales travel as vLLM's quantised
dispatch sends them (``extra_tensors``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch

from vllm_ep_kit.backends import registry
from vllm_ep_kit.backends.spec import ALL_FORMATS, DP_SOURCES, TO_GROUP, Backend, Needs
from vllm_ep_kit.backends.transport import Dispatched, Transport, received
from vllm_ep_kit.reference.layout import ParallelLayout
from vllm_ep_kit.reference.moe import RoutingCase, Tokens, concat_tokens

if TYPE_CHECKING:
    from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager
    from vllm.distributed.parallel_state import GroupCoordinator

    from vllm_ep_kit.harness.rank import RankContext

NAME = "allgather_reducescatter"


def applies_to(layout: ParallelLayout) -> str:
    """Empty if vLLM uses an all-to-all here, else why the case is not applicable."""
    if not layout.uses_all2all:
        return "no all-to-all in this layout (DP=1 without sequence parallelism)"
    if layout.pcp > 1:
        return "PCP layouts are not covered yet"
    return ""


class AgrsTransport(Transport):
    """vLLM's ``AgRsAll2AllManager`` on the EP group's CPU group, as vLLM builds it."""

    name = "vllm AgRsAll2AllManager"

    def __init__(self, ctx: RankContext, backend: Backend) -> None:
        super().__init__(ctx, backend)
        from vllm.distributed import parallel_state as ps
        from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager

        from vllm_ep_kit.harness.gloo_collectives import ensure_v_collectives

        if ctx.backend == "gloo":
            for group in (ps.get_dp_group(), ps.get_ep_group(), ps.get_tp_group()):
                ensure_v_collectives(group)
        assert ctx.vllm_config is not None, "AGRS runs inside vLLM's parallel state"
        self.sp: bool = bool(ctx.vllm_config.parallel_config.use_sequence_parallel_moe)
        ep = ps.get_ep_group()
        self.rank, self.world = ep.rank_in_group, ep.world_size
        # whose tokens dispatch gathers
        self.group: GroupCoordinator = ep if self.sp else ps.get_dp_group()
        self.manager: AgRsAll2AllManager = AgRsAll2AllManager(ep.cpu_group)

    def dispatch(self, tokens: Tokens) -> Dispatched:
        x, scale, ids, w = tokens.wire(self.ctx.device)
        gscale: torch.Tensor | None
        # vLLM's dispatch returns the gathered extra_tensors as a 4th item when given some
        if scale is None:
            gx, gw, gids = cast(
                "tuple[torch.Tensor, torch.Tensor, torch.Tensor]",
                self.manager.dispatch(x, w, ids, is_sequence_parallel=self.sp),
            )
            gscale = None
        else:
            gx, gw, gids, extra = cast(
                "tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]",
                self.manager.dispatch(
                    x, w, ids, is_sequence_parallel=self.sp, extra_tensors=[scale]
                ),
            )
            gscale = extra[0]
        return Dispatched(
            received(gx, gscale, gids, gw, self.prepared_case), source_rows=x.shape[0]
        )

    def combine(self, dispatched: Dispatched, partial: torch.Tensor) -> torch.Tensor:
        return self.manager.combine(partial, is_sequence_parallel=self.sp)

    def expected_dispatch(self, source: Callable[[int], Tokens]) -> Tokens | None:
        return concat_tokens([source(rank) for rank in self.group.ranks])

    def forward_context(self, case: RoutingCase) -> contextlib.AbstractContextManager[object]:
        from vllm_ep_kit.backends.forward import dp_forward_context

        return dp_forward_context(self.ctx, case.tokens, self.sp)


BACKEND = registry.register(
    Backend(
        NAME,
        Needs(cpu_ok=True, pynccl=True),
        note="all-gather dispatch, reduce-scatter combine (the AGRS reference)",
        aliases=("naive",),
        vllm_name=NAME,
        transport=AgrsTransport,
        sources=DP_SOURCES,
        delivers_to=TO_GROUP,
        applies_to=applies_to,
        # vLLM's dispatch moves hidden states without a scale tensor in check's cases; fp8 +
        # scales is checked on the FlashInfer backends and timed here (extra_tensors).
        check_dtypes=("bf16", "fp16", "fp32"),
        bench_dtypes=("bf16", "fp8"),
        layer_quants=("bf16", "fp32", "fp8"),
        layer_driven=("bf16", "fp32"),
        takes_sp=True,
        formats=ALL_FORMATS,
        formats_source="vllm/model_executor/layers/fused_moe/prepare_finalize/naive_dp_ep.py "
        "(quantised before the all-gather, as the layer says)",
    )
)
