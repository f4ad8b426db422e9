"""Exact CPU stand-ins for FlashInfer's NVLink all-to-all kernels (one-sided
``MoeAlltoAll``, two-sided ``MnnvlMoe`` alltoallv).

vLLM's FlashInfer one-sided prepare/finalize is Python: it quantises, picks the
per-rank token bound from the forward context, dispatches, reshapes what
arrived, combines into the layer's output and says whether that output is
already reduced (upstream PR 41382: it said no, and the layer reduced twice).
Only the kernels under it need NVLink GPUs.  This stand-in moves the same
bytes over the communicator vLLM gives FlashInfer (the EP group's CPU group),
so that code runs in CI; FlashInfer's own Python between vLLM and the kernels
(``flashinfer.moe_ep``'s ``NVLinkOneSidedAlltoAll`` in vLLM 0.33) runs as is.

The contract, read from FlashInfer's dispatch, sanitize and combine kernels:

* dispatch sends each token once to every EP rank owning one of its experts
  (contiguous blocks of experts per rank); each payload arrives as
  ``[ep_size, runtime_max_tokens_per_rank, ...]``, source ``s``'s tokens for
  this rank packed from row 0 (the kernel's order is its atomics'; here token
  order).  Rows past a source's count hold junk (NaN; integer payloads zeros, as
  stale expert ids would look) and, given ``invalid_token_expert_id``, that id
  in every top-k slot;
* combine gives each local token the fp32 sum of the rows its owner ranks hold
  for it, in the payload's dtype.

The two-sided contract (its prepare, alltoallv and combine kernels): prepare
exchanges the routing; each rank receives every token owning one of its
experts once, packed from row 0 in source-rank order, with its top-k weights
and ids, the ids of experts it does not own replaced by ``slot_count`` (by the
sender); the rows past them carry ``slot_count`` (the kernels' memset) and junk; combine returns every received row to its source and sums
per token.  The one-sided stand-in is checked against the real kernels on a GPU
(``test_kernel_emulator_matches_flashinfer_kernels``), the two-sided one too
(``test_two_sided_kernel_emulator_matches_flashinfer_kernels``, 1x H200: it holds the
rewrite of ids the receiving rank does not own, as the kernels do it).
"""

from __future__ import annotations

import importlib
import inspect
from collections import Counter

import torch

from tests.drivers.flashinfer_recorder import FlashInferAllocationRecorder
from vllm_ep_kit.reference.moe import expert_owner


def junk_like(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Rows nobody sent: NaN for floating payloads (0xFF bytes for fp8), zeros for integer
    ones, which as expert ids look like a stale row's (only the sanitize step marks them)."""
    if dtype.is_floating_point and dtype.itemsize > 1:
        return torch.full(shape, float("nan"), dtype=dtype)
    if dtype.itemsize == 1 and dtype.is_floating_point:
        return torch.full(shape, -1, dtype=torch.int8).view(dtype)
    return torch.zeros(shape, dtype=dtype)


class FlashInferKernelEmulator(FlashInferAllocationRecorder):
    """Installs the stand-in where the installed vLLM's one-sided manager meets FlashInfer
    (allocations are recorded as by the recorder)."""

    def __init__(self) -> None:
        super().__init__()
        self.dispatches = 0
        self.combines = 0
        self._comms: dict[int, object] = {}  # two-sided workspace address -> its communicator

    def allocate(self, kind, mapping, config, **details):
        workspace = super().allocate(kind, mapping, config, **details)
        self._comms[workspace.data_ptr()] = config.comm_backend
        return workspace

    def _comm_of(self, workspace):
        if workspace is None or workspace.data_ptr() not in self._comms:
            raise RuntimeError("a workspace this emulator did not allocate")
        return self._comms[workspace.data_ptr()]

    def places(self):
        """The recorder's places, plus FlashInfer's own module for the two-sided stand-in:
        vLLM's two-sided prepare/finalize imports ``MnnvlMoe`` from there at call time."""
        places = super().places()
        two_sided = importlib.import_module("flashinfer.comm.trtllm_alltoall")
        if not any(module is two_sided for module, _ in places):
            places.append((two_sided, {"MnnvlMoe": self.two_sided_class()}))
        return places

    def two_sided_class(self):
        """FlashInfer's ``MnnvlMoe`` (alltoallv): prepare exchanges the routing and decides
        who receives what; the received tokens lie packed from row 0 in source-rank order
        (rows past them: expert id ``slot_count``, as the kernels' memset leaves them, and
        junk); combine returns each rank's rows to their sources and sums them per token."""
        emulator = self
        recorder_class: type = super().two_sided_class()

        class EmulatedMnnvlMoe(recorder_class):
            @staticmethod
            def mnnvl_moe_alltoallv_prepare_without_allgather(
                expert_ids,
                scales,
                expert_statics,
                workspace,
                max_token_count_per_rank,
                ep_rank,
                ep_size,
                expert_count,
                slot_count,
                top_k,
            ):
                comm = emulator._comm_of(workspace)
                ids = expert_ids.to("cpu", torch.long)
                n, bound = ids.shape[0], int(max_token_count_per_rank)
                if n > bound:
                    raise ValueError(f"{n} local tokens > max_token_count_per_rank {bound}")
                owner = expert_owner(int(expert_count), int(ep_size))
                owners = owner[ids.clamp(0, int(expert_count) - 1)]
                sent = [torch.nonzero((owners == r).any(dim=1)).flatten() for r in range(ep_size)]
                # the sender writes slot_count over the ids of experts the target lacks
                local_only = [
                    torch.where(owners[rows] == r, expert_ids.cpu()[rows], int(slot_count)).to(
                        expert_ids.dtype
                    )
                    for r, rows in enumerate(sent)
                ]
                everyone = comm.allgather(
                    [(local_only[r], scales.cpu()[rows]) for r, rows in enumerate(sent)]
                )
                mine = [everyone[s][ep_rank] for s in range(ep_size)]
                received = [len(m[0]) for m in mine]
                total = sum(received)
                rows = bound * ep_size
                got_ids = torch.full((rows, top_k), int(slot_count), dtype=expert_ids.dtype)
                got_w = junk_like((rows, top_k), scales.dtype)
                if total:
                    got_ids[:total] = torch.cat([m[0] for m in mine])
                    got_w[:total] = torch.cat([m[1] for m in mine])
                info = _AlltoallvRoute(comm, n, sent, received, rows)
                return info, got_ids.to(expert_ids.device), got_w.to(scales.device), None

            @staticmethod
            def mnnvl_moe_alltoallv(x, alltoall_info, workspace, ep_rank, ep_size):
                if x.dim() != 2:
                    raise ValueError("only 2D tensor supported, please reshape.")
                route = alltoall_info
                everyone = route.comm.allgather([x.cpu()[rows] for rows in route.sent])
                out = junk_like((route.rows, x.shape[1]), x.dtype)
                start = 0
                for s in range(ep_size):
                    part = everyone[s][ep_rank]
                    out[start : start + len(part)] = part
                    start += len(part)
                emulator.dispatches += 1
                return out.to(x.device)

            @staticmethod
            def mnnvl_moe_alltoallv_combine(
                x, alltoall_info, workspace, ep_rank, ep_size, top_k, token_count
            ):
                route = alltoall_info
                if token_count != route.local_tokens:
                    raise ValueError(
                        f"token_count {token_count} != the {route.local_tokens} "
                        "tokens prepare routed"
                    )
                bounds = [sum(route.received[:s]) for s in range(ep_size + 1)]
                back = [x.cpu()[bounds[s] : bounds[s + 1]] for s in range(ep_size)]
                everyone = route.comm.allgather(back)
                total = torch.zeros(token_count, x.shape[1], dtype=torch.float32)
                for r in range(ep_size):
                    total[route.sent[r]] += everyone[r][ep_rank].float()
                emulator.combines += 1
                return total.to(x.dtype).to(x.device)

        return EmulatedMnnvlMoe

    def one_sided_class(self):
        emulator = self
        recorder_class: type = super().one_sided_class()

        class EmulatedMoeAlltoAll(recorder_class):
            # the constructor of every FlashInfer release vLLM calls (it passes the
            # arguments this signature names); the recorder records the workspace
            def __init__(
                self,
                mapping,
                max_num_tokens,
                top_k,
                num_experts,
                workspace_size_per_rank=None,
                hidden_size=None,
                mnnvl_config=None,
                eplb_stats_num_experts=0,
                enable_rank_mask=False,
                **kwargs,
            ):
                super().__init__(
                    mapping,
                    max_num_tokens,
                    top_k,
                    num_experts,
                    workspace_size_per_rank,
                    mnnvl_config=mnnvl_config,
                )
                self.comm = mnnvl_config.comm_backend
                self.ep_rank, self.ep_size = self.comm.Get_rank(), self.comm.Get_size()
                self.max_num_tokens, self.top_k = int(max_num_tokens), int(top_k)
                self.num_experts = int(num_experts)
                self.owner = expert_owner(self.num_experts, self.ep_size)
                self.eplb_gathered_stats = None
                self._state = None  # (local tokens, tokens sent per target, rows received
                #                      per source, runtime bound) between dispatch and combine

            def dispatch(
                self,
                token_selected_experts,
                input_payloads,
                runtime_max_tokens_per_rank,
                invalid_token_expert_id=None,
                expert_id_payload_index=None,
                eplb_local_stats=None,
                active_rank_mask=None,
            ):
                if self._state is not None:
                    raise RuntimeError("dispatch called twice without combine")
                bound = int(runtime_max_tokens_per_rank)
                ids = token_selected_experts.to("cpu", torch.long)
                n = ids.shape[0]
                if not n <= bound <= self.max_num_tokens:
                    raise ValueError(
                        f"{n} local tokens, runtime bound {bound}, built for "
                        f"{self.max_num_tokens}: the kernel would overrun"
                    )
                if ids.shape[1:] != (self.top_k,):
                    raise ValueError(
                        f"token_selected_experts {tuple(ids.shape)}: expected "
                        f"[tokens, {self.top_k}]"
                    )
                if invalid_token_expert_id is not None and expert_id_payload_index is None:
                    raise ValueError("invalid_token_expert_id needs expert_id_payload_index")
                owners = self.owner[ids.clamp(0, self.num_experts - 1)]
                sent = [
                    torch.nonzero((owners == r).any(dim=1)).flatten() for r in range(self.ep_size)
                ]
                outgoing = [[p.cpu()[rows] for p in input_payloads] for rows in sent]
                everyone = self.comm.allgather(outgoing)
                received = [
                    len(everyone[s][self.ep_rank][0]) if input_payloads else 0
                    for s in range(self.ep_size)
                ]
                recv = []
                for index, payload in enumerate(input_payloads):
                    buf = junk_like((self.ep_size, bound, *payload.shape[1:]), payload.dtype)
                    for s in range(self.ep_size):
                        buf[s, : received[s]] = everyone[s][self.ep_rank][index]
                    if index == expert_id_payload_index and invalid_token_expert_id is not None:
                        for s in range(self.ep_size):
                            buf[s, received[s] :] = int(invalid_token_expert_id)
                    recv.append(buf.to(payload.device))
                self._state = (n, sent, received, bound)
                emulator.dispatches += 1
                return recv

            def get_combine_payload_tensor_in_workspace(
                self, runtime_max_tokens_per_rank, hidden_size, dtype
            ):
                return torch.empty(
                    self.ep_size, runtime_max_tokens_per_rank, hidden_size, dtype=dtype
                )

            def combine(
                self,
                payload,
                runtime_max_tokens_per_rank,
                payload_in_workspace=False,
                output_dtype=None,
                output_scales=None,
                output_scalar_scale=1.0,
                sf_layout=None,
                output=None,
                *,
                use_low_precision=False,
                active_rank_mask=None,
            ):
                if self._state is None:
                    raise RuntimeError("combine called before dispatch")
                n, sent, received, bound = self._state
                if int(runtime_max_tokens_per_rank) != bound:
                    raise ValueError(
                        f"combine bound {runtime_max_tokens_per_rank} != dispatch bound {bound}"
                    )
                if (
                    use_low_precision
                    or output_scales is not None
                    or (output_dtype not in (None, payload.dtype))
                ):
                    raise NotImplementedError("emulated combine: unquantised output only")
                if tuple(payload.shape[:2]) != (self.ep_size, bound):
                    raise ValueError(
                        f"combine payload {tuple(payload.shape)}: expected "
                        f"[{self.ep_size}, {bound}, hidden]"
                    )
                back = [payload[s, : received[s]].cpu() for s in range(self.ep_size)]
                everyone = self.comm.allgather(back)
                total = torch.zeros(n, payload.shape[-1], dtype=torch.float32)
                for r in range(self.ep_size):
                    total[sent[r]] += everyone[r][self.ep_rank].float()
                result = total.to(payload.dtype).to(payload.device)
                if output is not None:
                    if output.shape != result.shape or output.dtype != result.dtype:
                        raise ValueError(
                            f"output {tuple(output.shape)} {output.dtype}: "
                            f"expected {tuple(result.shape)} {result.dtype}"
                        )
                    result = output.copy_(result)
                self._state = None
                emulator.combines += 1
                return result

        return EmulatedMoeAlltoAll

    def moe_ep_places(self, moe_ep):
        """vLLM 0.33: FlashInfer's ``NVLinkOneSidedAlltoAll`` runs as is; its kernels'
        ``MoeAlltoAll`` is this stand-in, its NVLink platform checks say yes."""
        comm_class = moe_ep.NVLinkOneSidedAlltoAll
        comm_module = inspect.getmodule(comm_class)
        setup = getattr(comm_module, "mnnvl_mapping_and_config", None)
        common = inspect.getmodule(setup) if setup is not None else None
        if common is None or not hasattr(common, "nvlink_platform_supported"):
            raise RuntimeError(
                f"{comm_class.__module__}: no mnnvl_mapping_and_config / "
                "nvlink_platform_supported, a one-sided communication this "
                "emulator does not know"
            )
        kernels = importlib.import_module("flashinfer.comm.trtllm_moe_alltoall")
        return [
            (
                kernels,
                {
                    "MoeAlltoAll": self.one_sided_class(),
                    "moe_a2a_get_workspace_size_per_rank": self.workspace_size,
                },
            ),
            (common, {"nvlink_platform_supported": lambda: True}),
            (comm_class, {"is_platform_supported": classmethod(lambda cls: True)}),
        ]


def _blocks(recv: list[torch.Tensor], ids_index: int, num_experts: int) -> list[Counter]:
    """Per source block, its received rows (any id valid; all payloads' bytes) counted,
    plus how many rows carry only invalid ids under the key ``"invalid"``."""
    ids = recv[ids_index].cpu()
    out = []
    for s in range(ids.shape[0]):
        valid = ((ids[s] >= 0) & (ids[s] < num_experts)).any(dim=1)
        rows: Counter[str | tuple[bytes, ...]] = Counter({"invalid": int((~valid).sum())})
        for t in torch.nonzero(valid).flatten().tolist():
            rows[
                tuple(bytes(p[s, t].cpu().contiguous().view(torch.uint8).numpy()) for p in recv)
            ] += 1
        out.append(rows)
    return out


def _comparison_row(case, seen: dict, combined: dict) -> dict:
    """One case's verdict: the kernels' and the emulator's received rows (``_blocks``) and
    combined outputs side by side."""
    from vllm_ep_kit.reference.moe import max_error

    return {
        "case": case.describe(),
        "same_rows": seen["kernels"] == seen["emulator"],
        "invalid_rows": [b["invalid"] for b in seen["kernels"]],
        "combine_difference": max_error(combined["kernels"], combined["emulator"]),
    }


def rank_emulator_vs_kernels(ctx, cases) -> list[dict]:
    """Each case through FlashInfer's real ``MoeAlltoAll`` and through the stand-in, on the
    same communicator and inputs: per source block the same valid rows (every payload's
    bytes, fp8 block scales included) and the same number of invalid-id rows, and the same
    combine of the oracle's partials (GPU ranks)."""
    from vllm_ep_kit.backends.flashinfer_one_sided import (
        DIRECT,
        DirectOneSidedTransport,
        workspace_size,
    )
    from vllm_ep_kit.backends.transport import received
    from vllm_ep_kit.reference.moe import moe_partial, source_tokens

    transport = DIRECT.transport_class()(ctx, DIRECT)
    assert isinstance(transport, DirectOneSidedTransport)
    emulated_class = FlashInferKernelEmulator().one_sided_class()
    results = []
    for case in cases:
        transport.prepare(case)  # FlashInfer's MoeAlltoAll for the case: transport.a2a
        world, rank, bound = transport.world, transport.rank, transport.max_tokens
        real = transport.a2a
        assert real is not None, "prepare() built it"
        fake = emulated_class(
            transport.mapping(moe_ep_size=world),
            bound,
            case.top_k,
            case.num_experts,
            workspace_size(case, world),
            mnnvl_config=transport.mnnvl_config(),
        )
        x, scale, ids, w = source_tokens(case, rank).wire(transport.device)
        payloads = [x, *([scale] if scale is not None else []), ids, w]
        id_index = len(payloads) - 2
        seen, combined = {}, {}
        for name, a2a in (("kernels", real), ("emulator", fake)):
            recv = [
                t.clone()
                for t in a2a.dispatch(
                    ids,
                    payloads,
                    bound,
                    invalid_token_expert_id=-1,
                    expert_id_payload_index=id_index,
                )
            ]
            seen[name] = _blocks(recv, id_index, case.num_experts)
            got = received(
                recv[0], recv[1] if scale is not None else None, recv[-2], recv[-1], case
            )
            partial = moe_partial(got, case.num_experts, world, rank).to(case.combine_dtype)
            combined[name] = a2a.combine(partial.nan_to_num(0.0), bound)[: x.shape[0]].clone()
            ctx.heartbeat()
        torch.cuda.synchronize()
        results.append(_comparison_row(case, seen, combined))
        transport.after_case()
    transport.close()
    return results


class _AlltoallvRoute:
    """What the emulated two-sided prepare decided (FlashInfer's ``MoEAlltoallInfo``'s role):
    per target rank the local tokens sent there, per source the rows received from it."""

    def __init__(self, comm, local_tokens, sent, received, rows):
        self.comm, self.local_tokens = comm, local_tokens
        self.sent, self.received, self.rows = sent, received, rows


def rank_two_sided_emulator_vs_kernels(ctx, cases) -> list[dict]:
    """As :func:`rank_emulator_vs_kernels`, for FlashInfer's two-sided ``MnnvlMoe``
    (alltoallv): received rows packed in source order, compared as one block; fp8 block
    scales follow the rows in an alltoallv of their own, as vLLM sends them."""
    from flashinfer.comm.trtllm_alltoall import MnnvlMoe

    from vllm_ep_kit.backends.flashinfer_two_sided import DIRECT, DirectTwoSidedTransport
    from vllm_ep_kit.backends.transport import received
    from vllm_ep_kit.reference.moe import moe_partial, source_tokens

    transport = DIRECT.transport_class()(ctx, DIRECT)
    assert isinstance(transport, DirectTwoSidedTransport)
    fake = FlashInferKernelEmulator().two_sided_class()
    config = transport.mnnvl_config()
    fake_workspaces = (
        fake.get_moe_workspaces(transport.mapping(), config),
        fake.get_moe_prepare_workspace(transport.mapping(), config),
    )
    results = []
    for case in cases:
        transport.prepare(case)
        world, rank, bound = transport.world, transport.rank, transport.max_tokens
        x, scale, ids, w = source_tokens(case, rank).wire(transport.device)
        seen, combined = {}, {}
        for name, moe, (workspace, prepare_workspace) in (
            ("kernels", MnnvlMoe, (transport.moe_workspace, transport.moe_prepare_workspace)),
            ("emulator", fake, fake_workspaces),
        ):
            info, got_ids, got_w, _ = moe.mnnvl_moe_alltoallv_prepare_without_allgather(
                ids,
                w,
                None,
                prepare_workspace,
                bound,
                rank,
                world,
                case.num_experts,
                case.num_experts,
                case.top_k,
            )
            got_x = moe.mnnvl_moe_alltoallv(x, info, workspace, rank, world).clone()
            got_s = (
                None
                if scale is None
                else moe.mnnvl_moe_alltoallv(scale, info, workspace, rank, world).clone()
            )
            rows = got_x.shape[0]
            recv = [
                got_x,
                *([got_s] if got_s is not None else []),
                got_ids[:rows].clone(),
                got_w[:rows].view(torch.float32).clone(),
            ]
            seen[name] = _blocks([t.unsqueeze(0) for t in recv], len(recv) - 2, case.num_experts)
            got = received(recv[0], got_s, recv[-2], recv[-1], case)
            partial = moe_partial(got, case.num_experts, world, rank).to(case.combine_dtype)
            combined[name] = moe.mnnvl_moe_alltoallv_combine(
                partial.nan_to_num(0.0),
                info,
                workspace,
                ep_rank=rank,
                ep_size=world,
                top_k=case.top_k,
                token_count=x.shape[0],
            ).clone()
            ctx.heartbeat()
        torch.cuda.synchronize()
        results.append(_comparison_row(case, seen, combined))
        transport.after_case()
    transport.close()
    return results
