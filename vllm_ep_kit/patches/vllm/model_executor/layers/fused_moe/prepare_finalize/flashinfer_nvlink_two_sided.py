"""Hotfix for ``vllm/model_executor/layers/fused_moe/prepare_finalize/flashinfer_nvlink_two_sided.py``.

Symptom: with ``--all2all-backend flashinfer_nvlink_two_sided`` and a MoE
whose input quantisation yields no activation scales (``x_sf is None``, e.g.
unquantised activations), the first dispatch fails inside FlashInfer's
``MnnvlMoe.mnnvl_moe_alltoallv``, which is handed ``None`` as its payload.

Root cause: ``flashinfer_alltoall_dispatch`` sends ``x_sf`` through a second
all-to-all (and, for NVFP4, swizzles it) without checking that it exists.

Upstream: vllm-project/vllm PR 41299 (the ``x_sf`` guard landed with the
sequence-parallel MoE change).  Affected releases: 0.18.0 - 0.21.0 (probed on
each release's sources, docs/patches.md); 0.18.0 defines the function in
``fused_moe/flashinfer_nvlink_two_sided_prepare_finalize.py``, later releases
in ``fused_moe/prepare_finalize/flashinfer_nvlink_two_sided.py``: the patch
finds whichever the installed vLLM has.

Detection (behavioural): the installed ``flashinfer_alltoall_dispatch`` runs
with a stub manager, input quantisation answering "no scales", and FlashInfer's
``MnnvlMoe`` replaced by a recorder of all-to-all payloads; the bug is present
if ``None`` reaches an all-to-all.

Fix: while ``flashinfer_alltoall_dispatch`` runs, FlashInfer's
``MnnvlMoe.mnnvl_moe_alltoallv`` returns ``None`` for a ``None`` payload
(nothing to send) and behaves as before otherwise.  The NVFP4 swizzle needs no
guard in these releases: on the non-deferred path NVFP4 quantisation always
returns scales.

Proof: ``tests/patches/test_flashinfer_two_sided_x_sf.py``.

In-tree: ``patches export`` guards the scale all-to-all with ``if x_sf is not None``.
Removable: once the oldest vLLM served is 0.22.0, the first release probed with the guard.
"""

from __future__ import annotations

import importlib
import inspect
import textwrap
import types
from typing import TYPE_CHECKING, Any

from vllm_ep_kit.patches.base import (
    Patch,
    Serving,
    UnrecognisedShape,
    swapped,
    unwrap,
    wrap,
)
from vllm_ep_kit.patches.source import SourceEdit

if TYPE_CHECKING:
    import torch

MODULE = "vllm.model_executor.layers.fused_moe.prepare_finalize.flashinfer_nvlink_two_sided"
# vLLM 0.18.0 keeps the same function one package up, under a longer module name.
OLDER_MODULE = "vllm.model_executor.layers.fused_moe.flashinfer_nvlink_two_sided_prepare_finalize"
MODULES = (MODULE, OLDER_MODULE)
FUNCTION = "flashinfer_alltoall_dispatch"
_PATCHED_ATTR = "__vllm_ep_kit_x_sf_guard__"


def dispatch_module():
    """The installed module defining ``flashinfer_alltoall_dispatch`` (the first of
    ``MODULES`` that imports); UnrecognisedShape naming both if neither does."""
    errors = []
    for name in MODULES:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not name.startswith(exc.name):
                raise  # the module exists but needs something missing: not our question
            errors.append(name)
    raise UnrecognisedShape(f"vLLM has neither {' nor '.join(errors)}")


def _flashinfer_alltoall_module():
    return importlib.import_module("flashinfer.comm.trtllm_alltoall")


def none_passthrough(mnnvl_moe_cls: type[Any]) -> type[Any]:
    """``mnnvl_moe_cls`` whose ``mnnvl_moe_alltoallv(None, ...)`` returns None."""
    original = mnnvl_moe_cls.mnnvl_moe_alltoallv

    class GuardedMnnvlMoe(mnnvl_moe_cls):
        @staticmethod
        def mnnvl_moe_alltoallv(x, *args, **kwargs):
            return None if x is None else original(x, *args, **kwargs)

    return GuardedMnnvlMoe


class _PayloadRecorder:
    """FlashInfer's two-sided kernels, replaced: records each all-to-all payload."""

    def __init__(self):
        self.payloads: list[torch.Tensor | None] = []
        recorder = self

        class MnnvlMoe:
            @staticmethod
            def mnnvl_moe_alltoallv_prepare_without_allgather(
                topk_ids, topk_weights, *args, **kwargs
            ):
                return object(), topk_ids, topk_weights, None

            @staticmethod
            def mnnvl_moe_alltoallv(x, *args, **kwargs):
                recorder.payloads.append(x)
                if x is None:
                    raise TypeError("mnnvl_moe_alltoallv() got None as its payload")
                return x

        self.MnnvlMoe = MnnvlMoe


def probe_stand_ins() -> tuple[types.SimpleNamespace, types.SimpleNamespace]:
    """The manager (rank 0 of 2, workspace ready) and the unquantised config the probe
    dispatches with: what the dispatch function reads of each, nothing more."""
    manager = types.SimpleNamespace(
        ensure_alltoall_workspace_initialized=lambda: True,
        rank=0,
        world_size=2,
        workspace_tensor=None,
        prepare_workspace_tensor=None,
    )
    quant = types.SimpleNamespace(
        quant_dtype=None,
        per_act_token_quant=False,
        block_shape=None,
        is_scale_swizzled=False,
        mx_alignment=None,
    )
    return manager, quant


def scale_payloads_when_no_scales() -> list[str]:
    """Payload kinds the installed dispatch sends when quantisation gives no scales."""
    import torch

    try:
        module = dispatch_module()
        fi = _flashinfer_alltoall_module()
    except UnrecognisedShape:
        raise
    except Exception as exc:
        raise UnrecognisedShape(f"cannot import {MODULES} or FlashInfer: {exc}") from exc
    dispatch = getattr(module, FUNCTION, None)
    if dispatch is None or not hasattr(module, "moe_kernel_quantize_input"):
        raise UnrecognisedShape(f"{module.__name__} has no {FUNCTION} / moe_kernel_quantize_input")
    rec = _PayloadRecorder()
    manager, quant = probe_stand_ins()
    values = dict(
        all2all_manager=manager,
        global_num_tokens_cpu=[2, 2],
        x=torch.zeros(2, 8),
        gs=None,
        topk_ids=torch.zeros(2, 2, dtype=torch.int32),
        topk_weights=torch.zeros(2, 2),
        top_k=2,
        num_experts=4,
        quant_config=quant,
    )
    params = inspect.signature(dispatch).parameters
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty]
    unknown = [n for n in required if n not in values]
    if unknown:
        raise UnrecognisedShape(f"{FUNCTION} takes {unknown}, which the probe does not know")
    kwargs = {n: v for n, v in values.items() if n in params}
    try:
        with (
            swapped(fi, MnnvlMoe=rec.MnnvlMoe),
            swapped(module, moe_kernel_quantize_input=lambda x, *a, **k: (x, None)),
        ):
            dispatch(**kwargs)
    except TypeError as exc:
        if "got None as its payload" not in str(exc):
            raise UnrecognisedShape(f"{FUNCTION} failed under the probe: {exc}") from exc
    except Exception as exc:
        raise UnrecognisedShape(
            f"{FUNCTION} failed under the probe: {type(exc).__name__}: {exc}"
        ) from exc
    return ["none" if p is None else "tensor" for p in rec.payloads]


# the scale all-to-all of the dispatch, as 0.18.0 - 0.19.1 and 0.20.0 - 0.21.0 write it
SCALE_ALL2ALL = tuple(
    "        x_sf = MnnvlMoe.mnnvl_moe_alltoallv(\n"
    "            x_sf,\n"
    "            alltoall_info,\n"
    f"            all2all_manager.workspace_tensor,{comment}\n"
    "            ep_rank,\n"
    "            ep_size,\n"
    "        )\n"
    for comment in ("", "  # type: ignore[attr-defined]")
)


class TwoSidedDispatchXsfGuard(Patch):
    name = "two_sided_dispatch_x_sf_guard"
    summary = "FlashInfer two-sided dispatch: no scale all-to-all when x_sf is None"
    upstream = "vllm-project/vllm#41299"
    affected = "0.18.0 - 0.21.0 (probe results in docs/patches.md)"
    removable = "0.22.0"
    # in-tree: the scale all-to-all only where there are scales
    source_edits = (
        SourceEdit(
            (
                "vllm/model_executor/layers/fused_moe/prepare_finalize/"
                "flashinfer_nvlink_two_sided.py",
                "vllm/model_executor/layers/fused_moe/"
                "flashinfer_nvlink_two_sided_prepare_finalize.py",
            ),
            ("flashinfer_alltoall_dispatch",),
            SCALE_ALL2ALL,
            tuple(
                "        if x_sf is not None:\n" + textwrap.indent(old, "    ")
                for old in SCALE_ALL2ALL
            ),
        ),
    )
    requires = ("vllm", "flashinfer")
    triggers = tuple(f"{name}:{FUNCTION}" for name in MODULES)

    def bites(self, serving: Serving) -> str:
        if (
            serving.all2all_backend
            in (
                "flashinfer_nvlink_two_sided",
                "flashinfer_all2allv",
            )
            and serving.activation_format == "bf16"
        ):
            return (
                "the first dispatch fails in FlashInfer's MnnvlMoe.mnnvl_moe_alltoallv: "
                "activations without scales send None through the scale all-to-all"
            )
        return ""

    def probe(self) -> tuple[bool, str]:
        payloads = scale_payloads_when_no_scales()
        if "none" in payloads:
            return True, "with no activation scales, None was sent through an all-to-all"
        return False, f"with no activation scales, dispatch sent only {payloads}"

    def apply(self) -> None:
        def guarded(original):
            def dispatch(*args, **kwargs):
                fi = _flashinfer_alltoall_module()
                with swapped(fi, MnnvlMoe=none_passthrough(fi.MnnvlMoe)):
                    return original(*args, **kwargs)

            return dispatch

        wrap(dispatch_module(), FUNCTION, guarded, _PATCHED_ATTR)

    def revert(self) -> None:
        unwrap(dispatch_module(), FUNCTION, _PATCHED_ATTR)


PATCHES = [TwoSidedDispatchXsfGuard()]
