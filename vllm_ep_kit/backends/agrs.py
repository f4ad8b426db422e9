"""vLLM's all-gather / reduce-scatter all-to-all (``AgRsAll2AllManager``); ``naive`` is an alias.

Dispatch all-gathers every DP rank's tokens (the EP group's under sequence
parallelism) to every rank; combine reduce-scatters the ranks' expert
partials back.  It runs on CPU ranks over gloo (vLLM's ``CpuCommunicator``)
and on GPUs over PyNccl.  fp8 block scales travel as vLLM's quantised
dispatch sends them (``extra_tensors``).
"""

from __future__ import annotations

from vllm_ep_kit.backends import registry
from vllm_ep_kit.backends.spec import DP_SOURCES, TO_GROUP, Backend, Needs
from vllm_ep_kit.backends.transport import Dispatched, Transport, received
from vllm_ep_kit.layout import ParallelLayout
from vllm_ep_kit.reference.moe import concat_tokens

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

    def __init__(self, ctx, backend):
        super().__init__(ctx, backend)
        from vllm.distributed import parallel_state as ps
        from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager

        from vllm_ep_kit.testing.gloo_collectives import ensure_v_collectives

        if ctx.backend == "gloo":
            for group in (ps.get_dp_group(), ps.get_ep_group(), ps.get_tp_group()):
                ensure_v_collectives(group)
        self.sp = bool(ctx.vllm_config.parallel_config.use_sequence_parallel_moe)
        ep = ps.get_ep_group()
        self.rank, self.world = ep.rank_in_group, ep.world_size
        self.group = ep if self.sp else ps.get_dp_group()  # whose tokens dispatch gathers
        self.manager = AgRsAll2AllManager(ep.cpu_group)

    def dispatch(self, tokens):
        x, scale, ids, w = tokens.wire(self.ctx.device)
        if scale is None:
            gx, gw, gids = self.manager.dispatch(x, w, ids, is_sequence_parallel=self.sp)
            gscale = None
        else:
            gx, gw, gids, extra = self.manager.dispatch(
                x, w, ids, is_sequence_parallel=self.sp, extra_tensors=[scale]
            )
            gscale = extra[0]
        return Dispatched(received(gx, gscale, gids, gw, self.case), source_rows=x.shape[0])

    def combine(self, dispatched, partial):
        return self.manager.combine(partial, is_sequence_parallel=self.sp)

    def expected_dispatch(self, source):
        return concat_tokens([source(rank) for rank in self.group.ranks])

    def forward_context(self, case):
        from vllm_ep_kit.forward import dp_forward_context

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
    )
)
