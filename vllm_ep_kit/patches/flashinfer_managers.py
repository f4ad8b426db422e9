"""What the hotfixes and the kit's backends both need to know about vLLM's FlashInfer NVLink
managers: their class names, how to call the one-sided ``initialize`` of any release, and
the one stand-in for the FlashInfer allocation layer they call.

Kept under ``patches/`` because patches depend on vLLM and their own package only;
the backend modules and the tests' recorder and kernel emulator build on the same.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

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


# FlashInfer's MoeAlltoAll workspace, per rank (``moe_a2a_get_workspace_size_per_rank``):
# a header of counters and flags, then every EP rank's dispatch and combine rows.  The
# header's size is computed by FlashInfer's compiled module (host arithmetic, no GPU),
# which a CPU machine cannot build; its layout is restated here: 128-byte aligned
# regions for the flag and counters (8 bytes + two int32 per rank), the dispatch and
# combine completion flags (an int32 per rank each), and two int32 tables of
# ``MAX_TOP_K`` slots per token (target ranks, send indices).
ALIGN = 128
MAX_TOP_K = 22  # FlashInfer's kMaxTopK
ROUTING_BYTES_PER_SLOT = 8  # per top-k slot of a token: an int32 expert id, an fp32 weight


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def one_sided_header_bytes(ep_size: int, max_num_tokens: int) -> int:
    """The header of FlashInfer's one-sided workspace, per rank."""
    offset = _aligned(8 + 8 * ep_size)
    offset = _aligned(offset + 4 * ep_size)
    offset = _aligned(offset + 4 * ep_size)
    offset = _aligned(offset + 4 * MAX_TOP_K * max_num_tokens)
    return _aligned(offset + 4 * MAX_TOP_K * max_num_tokens)


def one_sided_workspace_bytes(
    ep_size: int, max_num_tokens: int, dispatch_bytes_per_token: int, combine_bytes_per_token: int
) -> int:
    """What FlashInfer's one-sided all-to-all allocates per rank for these sizes."""
    return (
        one_sided_header_bytes(ep_size, max_num_tokens)
        + _aligned(ep_size * max_num_tokens * dispatch_bytes_per_token)
        + _aligned(ep_size * max_num_tokens * combine_bytes_per_token)
    )


# FlashInfer's two-sided (MnnvlMoe) workspaces do not depend on the model: per rank, a
# channel of 2 MiB + 256 bytes per peer for each channel the kernel runs (half the GPU's
# SMs, split between send and receive and over the 8-GPU groups of the EP group), and
# a prepare workspace of 1 MiB + 256 bytes per peer.  Measured on H200 (132 SMs): a
# (2, 17303616) uint64 workspace on 2 ranks.
TWO_SIDED_CHANNEL_BYTES = (2 << 20) + 256
TWO_SIDED_PREPARE_BYTES = (1 << 20) + 256


def two_sided_workspace_bytes(ep_size: int, sm_count: int) -> tuple[int, int]:
    """(workspace, prepare workspace) bytes per rank of FlashInfer's two-sided all-to-all."""
    groups = -(-ep_size // 8)
    channels = max(sm_count // 2 // (2 * groups), 1)
    return ep_size * channels * TWO_SIDED_CHANNEL_BYTES, ep_size * TWO_SIDED_PREPARE_BYTES


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


NO_KERNELS = "FlashInfer stand-in: no FlashInfer kernels here"


class FlashInferStandIn:
    """FlashInfer's MNNVL allocation layer as vLLM's FlashInfer NVLink managers call it,
    installed where the installed vLLM looks each name up; nothing of FlashInfer's runs.

    Where that is, is read from the installed code, not its version: vLLM up to 0.32
    imports ``MnnvlMoe``, ``MoeAlltoAll`` and the workspace-size helper into its
    all2all module; 0.33 imports them inside the managers' ``initialize``, and its
    one-sided manager goes through ``flashinfer.moe_ep.create_communication``.

    Every workspace the managers ask for goes to :meth:`allocate` (this class
    allocates nothing and answers None), every size query to :meth:`workspace_size`
    (0), every 0.33 one-sided communication to :meth:`communication`: a hotfix's
    probe uses this class as it is; the tests' allocation recorder and kernel
    emulator override these hooks and the classes.
    """

    def allocate(self, kind: str, mapping: Any, config: Any, **details: Any) -> Any:
        """A workspace of ``kind`` ("two_sided_workspace", "two_sided_prepare",
        "one_sided") for ``mapping`` over ``config.comm_backend``."""
        return None

    def workspace_size(
        self,
        ep_size: int,
        max_num_tokens: int,
        total_dispatch_payload_size_per_token: int,
        combine_payload_size_per_token: int,
        *args: Any,
        **kwargs: Any,
    ) -> int:
        """``moe_a2a_get_workspace_size_per_rank``'s answer (FlashInfer's parameter names:
        vLLM may pass them by name)."""
        return 0

    def communication(self, bootstrap: Any, params: Any, config: Any) -> Any:
        """The workspace of a 0.33 one-sided communication (``flashinfer.moe_ep``)."""
        return None

    def two_sided_class(self) -> type:
        """``MnnvlMoe``: its two workspace getters go to :meth:`allocate`."""
        stand_in = self

        class StandInMnnvlMoe:
            @staticmethod
            def get_moe_workspaces(mapping, config):
                return stand_in.allocate("two_sided_workspace", mapping, config)

            @staticmethod
            def get_moe_prepare_workspace(mapping, config):
                return stand_in.allocate("two_sided_prepare", mapping, config)

        return StandInMnnvlMoe

    def one_sided_class(self) -> type:
        """``MoeAlltoAll`` (vLLM <= 0.32's one-sided kernels): construction allocates; its
        ``combine`` keeps the signature vLLM inspects."""
        stand_in = self

        class StandInMoeAlltoAll:
            def __init__(
                self,
                mapping,
                max_num_tokens,
                top_k,
                num_experts,
                workspace_size_per_rank,
                mnnvl_config=None,
                **kwargs,
            ):
                self.workspace = stand_in.allocate(
                    "one_sided",
                    mapping,
                    mnnvl_config,
                    max_num_tokens=max_num_tokens,
                    top_k=top_k,
                    num_experts=num_experts,
                    workspace_size_per_rank=workspace_size_per_rank,
                )

            def dispatch(self, *args, **kwargs):
                raise NotImplementedError(NO_KERNELS)

            def combine(
                self, payload, runtime_max_tokens_per_rank, output=None, use_low_precision=False
            ):
                raise NotImplementedError(NO_KERNELS)

        return StandInMoeAlltoAll

    def moe_ep_names(self, moe_ep) -> dict[str, Any]:
        """``flashinfer.moe_ep``'s ``create_communication`` and the class vLLM 0.33 asserts
        it returns (a subclass of FlashInfer's own, whose constructor never runs)."""
        stand_in = self

        class StandInNVLinkOneSidedAlltoAll(moe_ep.NVLinkOneSidedAlltoAll):
            def __init__(self, bootstrap, params, config):
                self.params, self.config, self.bootstrap = params, config, bootstrap
                self.workspace = stand_in.communication(bootstrap, params, config)

            def destroy(self):
                self.workspace = None

            def dispatch(self, *args, **kwargs):
                raise NotImplementedError(NO_KERNELS)

            combine = dispatch

        def create_communication(bootstrap, params, backend, **options):
            return StandInNVLinkOneSidedAlltoAll(bootstrap, params, backend)

        return {
            "NVLinkOneSidedAlltoAll": StandInNVLinkOneSidedAlltoAll,
            "create_communication": create_communication,
        }

    def moe_ep_places(self, moe_ep) -> list[tuple[object, dict[str, Any]]]:
        """Where vLLM 0.33's one-sided manager meets FlashInfer."""
        return [(moe_ep, self.moe_ep_names(moe_ep))]

    def places(self) -> list[tuple[object, dict[str, Any]]]:
        """(module, {name: stand-in}) for every place the installed managers look up;
        RuntimeError for a vLLM or FlashInfer whose one-sided path this does not know."""
        all2all = importlib.import_module(ALL2ALL)
        two_sided = {"MnnvlMoe": self.two_sided_class()}
        places: list[tuple[object, dict[str, Any]]] = []
        if hasattr(all2all, "MnnvlMoe"):  # imported into vLLM's module (vLLM <= 0.32)
            places.append((all2all, two_sided))
        else:  # imported at initialise time from FlashInfer
            places.append((importlib.import_module("flashinfer.comm.trtllm_alltoall"), two_sided))
        if hasattr(all2all, "MoeAlltoAll"):
            places.append(
                (
                    all2all,
                    {
                        "MoeAlltoAll": self.one_sided_class(),
                        "moe_a2a_get_workspace_size_per_rank": self.workspace_size,
                    },
                )
            )
            return places
        try:
            moe_ep = importlib.import_module("flashinfer.moe_ep")
        except ImportError as exc:
            raise RuntimeError(
                f"{ALL2ALL} has no MoeAlltoAll and flashinfer.moe_ep does not import "
                f"({exc}): a one-sided manager this stand-in does not know"
            ) from exc
        if not hasattr(moe_ep, "create_communication"):
            raise RuntimeError(
                "flashinfer.moe_ep has no create_communication: a one-sided manager "
                "this stand-in does not know"
            )
        return places + self.moe_ep_places(moe_ep)

    @contextlib.contextmanager
    def installed(self, *, accelerator: bool | None = None):
        """The stand-ins in place (and ``torch.accelerator``'s calls as no-ops where no
        accelerator is available, or where ``accelerator`` is False)."""
        import torch

        from vllm_ep_kit.patches.base import swapped

        if accelerator is None:
            accelerator = torch.accelerator.is_available()
        with contextlib.ExitStack() as stack:
            for module, names in self.places():
                stack.enter_context(swapped(module, **names))
            if not accelerator:  # nothing to pick, empty or wait for
                stack.enter_context(accelerator_stand_ins())
            yield self
