"""FlashInfer's NVLink all-to-alls driven directly (no vLLM), checked against the oracle.

The kernel tests' rank functions: FlashInfer's objects are built on the
harness's gloo world group (as vLLM's managers do over the EP group's CPU
group) by the backends' ``Direct*`` transports, and each case goes through
``exchange.rank_cases`` like every other backend.  Ranks may share a GPU.

``rank_graph_replays`` is the CUDA-graph case: vLLM captures each
batch size's forward once (dispatch, experts, combine over one workspace) and
replays it with new tokens written into the captured inputs.  Anything the
kernels take from the host at capture time (a counter, a flag's value, a
pointer to a copy) would be frozen into the graph: a replay would then see
the captured routing, or race the peers' previous round.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from vllm_ep_kit.reference.moe import RoutingCase
from vllm_ep_kit.reference.results import CaseResult

GRAPH_TOKENS = ((64, 64), (3, 9), (7, 0), (0, 5))  # even, uneven, each rank empty in turn


def default_cases(world: int, fp8: bool = True) -> list[RoutingCase]:
    """Even (64 x 2048 bf16, top-4 of 16), uneven, one rank empty, fp32, and fp8 + scales."""
    cases = [
        RoutingCase(tokens=(64,) * world, hidden=2048, num_experts=16, top_k=4),
        RoutingCase(tokens=tuple(3 + 4 * r for r in range(world)), hidden=256),
        RoutingCase(tokens=tuple(0 if r == world - 1 else 7 for r in range(world)), hidden=256),
        RoutingCase(tokens=(16,) * world, hidden=512, dtype="fp32"),
    ]
    if fp8:
        cases += [
            RoutingCase(tokens=(64,) * world, hidden=2048, dtype="fp8"),
            RoutingCase(
                tokens=tuple(0 if r == 0 else 5 + r for r in range(world)), hidden=512, dtype="fp8"
            ),
        ]
    return cases


def format_cases(world: int) -> list[RoutingCase]:
    """The block-scaled formats beyond fp8 (``reference.formats``): MXFP8 and NVFP4 at
    gpt-oss' hidden 2880, whose scale rows vLLM pads to 256 columns' worth (90 -> 96 and
    180 -> 192 bytes), and unpadded at 1024 with one rank empty."""
    uneven = tuple(0 if r == world - 1 else 5 + 3 * r for r in range(world))
    return [
        case
        for dtype in ("mxfp8", "nvfp4")
        for case in (
            RoutingCase(tokens=(48,) * world, hidden=2880, dtype=dtype, scale_alignment=256),
            RoutingCase(tokens=uneven, hidden=1024, dtype=dtype),
        )
    ]


def rank_one_sided_roundtrip(
    ctx, cases: list[RoutingCase], ignore_ownership: bool = False
) -> list[CaseResult]:
    """Every case through a ``MoeAlltoAll`` built here on the world group."""
    from vllm_ep_kit.backends.exchange import rank_cases
    from vllm_ep_kit.backends.flashinfer_one_sided import DIRECT

    return rank_cases(ctx, DIRECT, cases, ignore_ownership)


def rank_moe_ep_roundtrip(
    ctx, cases: list[RoutingCase], ignore_ownership: bool = False
) -> list[CaseResult]:
    """Every case through ``flashinfer.moe_ep``'s one-sided communication built here."""
    from vllm_ep_kit.backends.exchange import rank_cases
    from vllm_ep_kit.backends.flashinfer_one_sided import DIRECT_MOE_EP

    return rank_cases(ctx, DIRECT_MOE_EP, cases, ignore_ownership)


def rank_two_sided_roundtrip(
    ctx, cases: list[RoutingCase], ignore_ownership: bool = False
) -> list[CaseResult]:
    """Every case through ``MnnvlMoe`` workspaces built here on the world group."""
    from vllm_ep_kit.backends.exchange import rank_cases
    from vllm_ep_kit.backends.flashinfer_two_sided import DIRECT

    return rank_cases(ctx, DIRECT, cases, ignore_ownership)


def graph_shapes(dtype: str = "bf16") -> list[RoutingCase]:
    """The batch shapes captured on one set of buffers (2 ranks): even, uneven, and each
    rank empty in turn, as a DP rank without requests still runs the captured forward."""
    return [
        RoutingCase(tokens=tokens, hidden=1024, num_experts=16, top_k=4, dtype=dtype, seed=77 + i)
        for i, tokens in enumerate(GRAPH_TOKENS)
    ]


def alternating_layers() -> list[RoutingCase]:
    """One model's layers on one set of buffers (2 ranks): NVFP4 MoE layers at gpt-oss'
    hidden 2880 (padded scale rows) beside a bf16 MTP head whose rows are 3.5x wider,
    and fp8 and MXFP8 layers of another width, some with an empty rank."""
    return [
        RoutingCase(tokens=(32, 32), hidden=2880, dtype="nvfp4", scale_alignment=256, seed=11),
        RoutingCase(tokens=(32, 32), hidden=2880, dtype="bf16", seed=12),
        RoutingCase(tokens=(9, 0), hidden=2048, dtype="fp8", seed=13),
        RoutingCase(tokens=(4, 17), hidden=2880, dtype="mxfp8", scale_alignment=256, seed=14),
    ]


def replay_case(shape: RoutingCase, round_index: int) -> RoutingCase:
    """The tokens of one replay: the shape's sizes, new values and new routing."""
    return dataclasses.replace(shape, seed=shape.seed + 1000 * (round_index + 1))


def _check_graph_shapes(shapes: list[RoutingCase], world: int) -> None:
    if not shapes:
        raise ValueError("shapes=[]: expected at least one RoutingCase")
    dims = {(s.num_experts, s.top_k, len(s.tokens)) for s in shapes}
    if len(dims) != 1:
        raise ValueError(
            f"shapes differ in (experts, top_k, ranks): {sorted(dims)}; one "
            "set of buffers serves one model's layers (payload formats and "
            "hidden sizes may differ)"
        )
    if len(shapes[0].tokens) != world:
        raise ValueError(
            f"shapes have {len(shapes[0].tokens)} sources, the world has {world} ranks"
        )


def graph_backends() -> dict:
    """The kernels the CUDA-graph test captures, by the backend name vLLM gives them."""
    from vllm_ep_kit.backends import flashinfer_one_sided, flashinfer_two_sided

    return {module.NAME: module.DIRECT for module in (flashinfer_one_sided, flashinfer_two_sided)}


def rank_graph_replays(
    ctx, backend_name: str, shapes: list[RoutingCase], rounds: int = 3, stale_inputs: bool = False
) -> list[CaseResult]:
    """Each shape's dispatch, oracle experts and combine captured in a CUDA graph on one
    set of FlashInfer buffers sized for the union of their payloads (shapes may be
    layers of other formats and widths, as a quantised model's MoE layers and its bf16
    MTP head share vLLM's one workspace), after an eager warm-up; then
    ``rounds`` rounds replaying every graph (order reversed each round, no host sync
    between replays), each on new tokens copied into the captured inputs.  One row per
    warm-up and per replay, against the fp32 oracle of that replay's tokens.
    ``stale_inputs`` is the negative control: the new tokens are not copied in."""
    from vllm_ep_kit.reference.moe import moe_partial, source_tokens
    from vllm_ep_kit.reference.results import oracle_result

    backends = graph_backends()
    if backend_name not in backends:
        raise ValueError(f"backend_name={backend_name!r}: expected one of {sorted(backends)}")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r}: expected an integer >= 1")
    _check_graph_shapes(shapes, ctx.world_size)
    transport = backends[backend_name].open(ctx)
    world, rank = transport.world, transport.rank
    largest = tuple(max(s.tokens[r] for s in shapes) for r in range(world))
    transport.layers = tuple(shapes)
    transport.prepare(dataclasses.replace(shapes[0], tokens=largest))
    name = f"{transport.name} (CUDA graph)"
    rows, captured = [], []
    for index, shape in enumerate(shapes):
        start = time.perf_counter()
        sent = source_tokens(shape, rank)
        inputs = sent.wire(transport.device)
        bound = max(max(shape.tokens), 1)

        def forward(inputs=inputs, bound=bound, shape=shape):
            dispatched = transport.send(shape, *inputs, bound)
            partial = moe_partial(dispatched.tokens, shape.num_experts, world, rank)
            return transport.combine(dispatched, partial.to(shape.combine_dtype))

        side = torch.cuda.Stream()  # warm up off the capture stream, as PyTorch advises
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            eager = forward().clone()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        rows.append(
            oracle_result(
                name, f"world={world} graph {index} eager warm-up", shape, eager, sent, start
            )
        )
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = forward()
        captured.append((graph, inputs, out))
        ctx.heartbeat()
    replays, replay_start = [], time.perf_counter()
    for round_index in range(rounds):
        order = range(len(shapes)) if round_index % 2 == 0 else reversed(range(len(shapes)))
        for index in order:
            graph, inputs, out = captured[index]
            case = replay_case(shapes[index], round_index)
            sent = source_tokens(case, rank)
            if not stale_inputs:
                for into, value in zip(inputs, sent.wire(transport.device), strict=False):
                    if into is not None:
                        assert value is not None, "captured scales: the case has them"
                        into.copy_(value)
            graph.replay()
            replays.append((index, round_index, case, sent, out.clone()))
        ctx.heartbeat()
    torch.cuda.synchronize()
    per_replay = (time.perf_counter() - replay_start) / len(replays)  # queued back to back
    for index, round_index, case, sent, out in replays:
        row = oracle_result(
            name,
            f"world={world} graph {index} replay {round_index}",
            case,
            out,
            sent,
            time.perf_counter(),
        )
        rows.append(dataclasses.replace(row, seconds=per_replay))
    del captured
    transport.close()
    return rows
