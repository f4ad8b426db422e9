"""Hotfix for ``vllm/distributed/device_communicators/cuda_communicator.py``: clear reduce_scatterv asserts.

Symptom: a DP/EP size mismatch in the MoE combine (``reduce_scatterv``) stops
the server with a bare ``AssertionError`` (or ``3 == 2``), saying neither which
sizes disagree nor on which rank.

Root cause: ``CudaCommunicator.reduce_scatterv`` checks ``len(sizes) ==
world_size``, ``rows == sum(sizes)`` and ``rows % world_size == 0`` with asserts
that carry no (or no useful) message.

Upstream: vllm-project/vllm PR 41299 ("reduce_scatterv asserts now say which
sizes disagree").  Still bare in 0.32.0 (probe result in docs/patches.md).

Detection (behavioural): ``reduce_scatterv`` of the installed class runs on a
bare communicator (2 ranks, NCCL replaced by a stub that must not be reached)
with sizes that do not add up; the bug is present if the AssertionError's
message does not name the sizes and the row count.

Fix: the same three checks run first with messages that state the sizes, the
row count, the world size and the rank; then the original method runs.
Still ``AssertionError``, so callers that catch it behave as before.

Proof: ``tests/patches/test_cuda_communicator_asserts.py``.

In-tree: ``patches export`` gives the three asserts their messages (in
``_reduce_scatterv`` from 0.32, ``reduce_scatterv`` before).  Removable: not yet; no
release probed, 0.33.0 included, carries messages that name the sizes.
"""

from __future__ import annotations

import importlib
import inspect
import types

from vllm_ep_kit.patches.base import Patch, UnrecognisedShape, unwrap, wrap
from vllm_ep_kit.patches.source import SourceEdit

MODULE = "vllm.distributed.device_communicators.cuda_communicator"
METHODS = ("reduce_scatterv", "reduce_scatterv_into_output")
_PATCHED_ATTR = "__vllm_ep_kit_rs_asserts__"


def check_reduce_scatterv_sizes(input_, dim: int, sizes, world_size: int, rank: int) -> None:
    """Raise AssertionError naming what disagrees, where vLLM's asserts would fail: sizes
    all equal count as none (vLLM drops them), rows are counted along ``dim``."""
    if dim < 0:
        dim += input_.dim()
    rows = input_.movedim(0, dim).shape[0]  # the row count vLLM's code checks
    where = f"reduce_scatterv on rank {rank} of {world_size} (dim={dim})"
    if sizes is not None and len(set(sizes)) > 1:
        if len(sizes) != world_size:
            raise AssertionError(
                f"{where}: got {len(sizes)} sizes {list(sizes)}, need one per rank ({world_size})"
            )
        if rows != sum(sizes):
            raise AssertionError(
                f"{where}: sizes {list(sizes)} sum to {sum(sizes)} but the input has {rows} rows"
            )
    elif rows % world_size:
        raise AssertionError(
            f"{where}: {rows} input rows do not split evenly over "
            f"{world_size} ranks and no sizes were given"
        )


def _bare_communicator(cls):
    comm = cls.__new__(cls)

    def unreachable(*args, **kwargs):
        raise RuntimeError("probe reached NCCL")

    stub = types.SimpleNamespace(
        disabled=False, reduce_scatter=unreachable, reduce_scatterv=unreachable
    )
    comm.__dict__.update(
        world_size=2,
        rank=0,
        rank_in_group=0,
        pynccl_comm=stub,
        ca_comm=None,
        qr_comm=None,
        symm_mem_comm=None,
        aiter_ar_comm=None,
        use_custom_op_call=False,
    )
    return comm


def assertion_message_for_bad_sizes() -> str:
    import torch

    try:
        cls = importlib.import_module(MODULE).CudaCommunicator
    except Exception as exc:
        raise UnrecognisedShape(f"cannot import {MODULE}: {exc}") from exc
    try:
        cls.reduce_scatterv(_bare_communicator(cls), torch.zeros(12, 4), 0, [3, 8])
    except AssertionError as exc:
        return str(exc)
    except Exception as exc:
        raise UnrecognisedShape(
            f"reduce_scatterv under the probe raised {type(exc).__name__}: {exc}"
        ) from exc
    raise UnrecognisedShape("reduce_scatterv accepted sizes that do not add up")


WRAPPED_PARAMETERS = ("input_", "dim", "sizes")  # what the wrapper reads from each call


def check_signatures(cls) -> None:
    """Raise UnrecognisedShape unless every wrapped method takes ``WRAPPED_PARAMETERS`` by name.

    The wrapper binds each call to the method's signature and reads those
    arguments: a renamed parameter (or ``*args, **kwargs``) would be "applied"
    and then fail every call with a ``KeyError``.
    """
    for name in METHODS:
        method = getattr(cls, name, None)
        if method is None:
            continue
        params = inspect.signature(method).parameters
        named = [
            p
            for p in WRAPPED_PARAMETERS
            if p in params
            and params[p].kind
            in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        if len(named) != len(WRAPPED_PARAMETERS):
            raise UnrecognisedShape(
                f"CudaCommunicator.{name}{inspect.signature(method)} lacks "
                f"the parameters {', '.join(WRAPPED_PARAMETERS)}"
            )


class ReduceScattervAsserts(Patch):
    name = "reduce_scatterv_asserts"
    summary = "reduce_scatterv: assertion messages that state the sizes that disagree"
    upstream = "vllm-project/vllm#41299"
    affected = "every release probed, 0.18.0 - 0.33.0 (docs/patches.md)"
    removable = "not yet: no release probed carries the messages"
    triggers = tuple(f"{MODULE}:CudaCommunicator.{name}" for name in METHODS)
    # in-tree: each of the three size asserts says what disagrees (0.32 moved them into
    # _reduce_scatterv, shared by both public methods)
    source_edits = tuple(
        SourceEdit(
            ("vllm/distributed/device_communicators/cuda_communicator.py",),
            ("CudaCommunicator._reduce_scatterv", "CudaCommunicator.reduce_scatterv"),
            old,
            new,
        )
        for old, new in (
            (
                (
                    'assert len(sizes) == world_size, f"{len(sizes)} == {world_size}"\n',
                    "assert len(sizes) == world_size\n",
                ),
                "assert len(sizes) == world_size, (\n"
                '                f"reduce_scatterv: {len(sizes)} sizes {sizes} for {world_size} ranks"\n'
                "            )\n",
            ),
            (
                ("assert input_tensor.shape[0] == sum(sizes)\n",),
                "assert input_tensor.shape[0] == sum(sizes), (\n"
                '                f"reduce_scatterv: sizes {sizes} sum to {sum(sizes)}, "\n'
                '                f"the input has {input_tensor.shape[0]} rows"\n'
                "            )\n",
            ),
            (
                ("assert input_tensor.shape[0] % world_size == 0\n",),
                "assert input_tensor.shape[0] % world_size == 0, (\n"
                '                f"reduce_scatterv: {input_tensor.shape[0]} rows do not "\n'
                '                f"split evenly over {world_size} ranks"\n'
                "            )\n",
            ),
        )
    )

    def probe(self) -> tuple[bool, str]:
        message = assertion_message_for_bad_sizes()
        check_signatures(importlib.import_module(MODULE).CudaCommunicator)
        if "[3, 8]" in message and "12" in message:
            return False, f"the AssertionError names the sizes: {message!r}"
        return True, f"sizes [3, 8] vs 12 rows gave AssertionError({message!r})"

    def apply(self) -> None:
        def checked(original):
            signature = inspect.signature(original)

            def method(self, *args, **kwargs):
                bound = signature.bind(self, *args, **kwargs)
                bound.apply_defaults()
                check_reduce_scatterv_sizes(
                    bound.arguments["input_"],
                    bound.arguments["dim"],
                    bound.arguments["sizes"],
                    self.world_size,
                    self.rank_in_group,
                )
                return original(self, *args, **kwargs)

            return method

        cls = importlib.import_module(MODULE).CudaCommunicator
        for name in METHODS:
            if hasattr(cls, name):
                wrap(cls, name, checked, _PATCHED_ATTR)

    def revert(self) -> None:
        cls = importlib.import_module(MODULE).CudaCommunicator
        for name in METHODS:
            unwrap(cls, name, _PATCHED_ATTR)


PATCHES = [ReduceScattervAsserts()]
