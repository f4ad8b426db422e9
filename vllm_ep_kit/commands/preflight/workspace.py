"""The all-to-all workspace each GPU allocates for a serve command, and whether it fits.

For vLLM's FlashInfer NVLink backends the size follows from what vLLM's managers pass
FlashInfer (the EP group's size; for one-sided, the tokens per rank vLLM sizes for,
``max_num_batched_tokens``, and each token's dispatch and combine bytes) and FlashInfer's
sizing, restated in ``patches.flashinfer_managers``; the tests hold the figure to what
vLLM's real managers ask of the kit's FlashInfer recorder, layout by layout.  The
workspace is taken out of the KV cache's share of ``gpu_memory_utilization`` (vLLM's
profiling sees it), so it costs cache, and fails only where a GPU cannot hold it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_ep_kit.commands.preflight.checks import OK, RISKY, WILL_FAIL, Check
from vllm_ep_kit.commands.preflight.host import Host
from vllm_ep_kit.commands.preflight.model import ModelFacts
from vllm_ep_kit.patches.flashinfer_managers import (
    ROUTING_BYTES_PER_SLOT,
    one_sided_workspace_bytes,
    two_sided_workspace_bytes,
)
from vllm_ep_kit.reference.formats import FORMATS

ONE_SIDED, TWO_SIDED = "flashinfer_nvlink_one_sided", "flashinfer_nvlink_two_sided"
MiB, GiB = 1 << 20, 1 << 30
# Streaming multiprocessors of the GPUs whose two-sided workspace is known (the channel
# count follows from them); a host file's ``sms`` answers for others.
SM_COUNTS = {"H100": 132, "H200": 132, "H800": 132, "B200": 148}
SHARE_WORTH_SAYING = 0.05  # of a GPU's memory: below this the workspace is not a risk


# preflight's name of a format -> the payload format of ``reference.formats`` it is
# (the oracle's fp8 is vLLM's block fp8)
PAYLOADS = {"fp8-block": "fp8"}


def activation_bytes(fmt: str, hidden: int) -> int | None:
    """Bytes of one token's activations in ``fmt`` with their scales (None: not known)."""
    if fmt == "fp8":  # per-token fp8: one fp32 scale per token, not a payload format
        return hidden + 4
    payload = FORMATS.get(PAYLOADS.get(fmt, fmt))
    if payload is None:
        return None
    return payload.x_bytes(hidden) + payload.scale_row_bytes(hidden, alignment=0)


@dataclass(frozen=True)
class Workspace:
    backend: str
    ep_size: int
    bytes_per_gpu: int
    how: str  # what it is sized from


def one_sided(ep_size: int, max_tokens: int, hidden: int, top_k: int, fmt: str) -> Workspace | None:
    row = activation_bytes(fmt, hidden)
    if row is None:
        return None
    dispatch = row + ROUTING_BYTES_PER_SLOT * top_k
    combine = 2 * hidden  # bf16 rows
    return Workspace(
        ONE_SIDED,
        ep_size,
        one_sided_workspace_bytes(ep_size, max_tokens, dispatch, combine),
        f"EP {ep_size} x {max_tokens} tokens x ({dispatch} B dispatch + {combine} B combine)",
    )


def two_sided(ep_size: int, sm_count: int) -> Workspace:
    workspace, prepare = two_sided_workspace_bytes(ep_size, sm_count)
    return Workspace(
        TWO_SIDED,
        ep_size,
        workspace + prepare,
        f"EP {ep_size}, {sm_count} SMs: {workspace} B workspace + {prepare} B prepare",
    )


def sm_count(host: Host) -> int | None:
    """The host's SMs per GPU: its file's ``sms``, else known for its GPU model."""
    if host.sms:
        return host.sms
    for name, count in SM_COUNTS.items():
        if name.lower() in host.gpu.lower():
            return count
    return None


def check(
    backend: str,
    ep_size: int,
    max_tokens: int,
    model: ModelFacts | None,
    fmt: str | None,
    host: Host,
) -> tuple[Check, Workspace | None]:
    """The workspace check for ``backend`` (only FlashInfer's have a figure)."""
    if backend == TWO_SIDED:
        sms = sm_count(host)
        if sms is None:
            return Check(
                "workspace",
                RISKY,
                f"the two-sided workspace depends on the GPU's SM count; {host.gpu or 'the GPU'}"
                f" is not one of {', '.join(SM_COUNTS)} (a host file's sms gives it)",
            ), None
        figure = two_sided(ep_size, sms)
    elif backend == ONE_SIDED:
        if model is None or not (model.hidden_size and model.top_k) or fmt is None:
            return Check(
                "workspace", RISKY, "needs the model's hidden size, top-k and format: not read"
            ), None
        sized = one_sided(ep_size, max_tokens, model.hidden_size, model.top_k, fmt)
        if sized is None:
            return Check("workspace", RISKY, f"no dispatch size known for {fmt}"), None
        figure = sized
    else:
        return Check("workspace", OK, f"{backend}: not sized by this kit"), None
    return _fits(figure, host), figure


def _fits(figure: Workspace, host: Host) -> Check:
    size = f"{figure.bytes_per_gpu / MiB:.0f} MiB per GPU ({figure.how})"
    source = "vllm_ep_kit/patches/flashinfer_managers.py (FlashInfer's sizing)"
    if host.free_gib is not None and figure.bytes_per_gpu > host.free_gib * GiB:
        return Check(
            "workspace",
            WILL_FAIL,
            f"{size}: more than the {host.free_gib:.1f} GiB free on a GPU",
            source,
        )
    if (
        host.memory_gib is not None
        and figure.bytes_per_gpu > SHARE_WORTH_SAYING * host.memory_gib * GiB
    ):
        share = figure.bytes_per_gpu / (host.memory_gib * GiB)
        return Check(
            "workspace",
            RISKY,
            f"{size}: {share:.0%} of a GPU's memory, taken from the KV cache",
            source,
        )
    return Check("workspace", OK, size, source)
