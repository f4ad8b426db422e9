"""Hotfixes for ``vllm/distributed/device_communicators/all2all.py``.

1. ``mnnvl_workspace_ep_group``: MNNVL workspace on the EP group.

Symptom: ``vllm serve --enable-expert-parallel --all2all-backend
flashinfer_nvlink_one_sided`` (or ``_two_sided``) with TP>1 and DP>1 dies at
the first MoE dispatch: FlashInfer's kernel asserts
``workspace.size(0) == moe_ep_size``.

Root cause: ``FlashInferNVLinkTwoSidedManager.initialize`` and
``FlashInferNVLinkOneSidedManager.initialize`` build the MNNVL communicator as
``CustomCommunicator(get_dp_group().cpu_group)``.  The manager itself serves
the EP group (DP x PCP x TP), so with TP>1 the workspace gets one row per DP
rank instead of one per EP rank.  Invisible with TP=1, where DP == EP.

Upstream: vllm-project/vllm PR 40893 (use the manager's own group).
Affected releases (read from PyPI wheels): 0.18.0, 0.19.0, 0.19.1; fixed from 0.20.0.

Detection (behavioural): each manager's ``initialize`` runs on a bare
instance whose own group is a sentinel, with vLLM's ``get_dp_group`` answering
a second sentinel and FlashInfer's allocation layer, ``Mapping`` and the
communicator class replaced by recorders; the sentinel the communicator
receives says which group the installed code uses.  No process group, GPU or
kernel is touched.  The stand-ins go where the installed code looks FlashInfer
up: vLLM's module (up to 0.32) or FlashInfer's own modules, including
``flashinfer.moe_ep.create_communication`` for 0.33's one-sided manager.

Fix: during ``initialize`` only, ``get_dp_group`` as seen by this module
answers the manager's own group, which is the one line that differs.

Proof: ``tests/patches/test_all2all_ep_group.py`` (runs vLLM 0.19.1's sources
over gloo: the EP-group check fails without the patch and passes with it).

In-tree: ``patches export`` writes the fix into a vLLM source tree (both managers'
communicator on ``self.cpu_group``).  Removable: once the oldest vLLM served is 0.20.0,
the first release probed with the fix.

2. ``nixl_ep_tcp_store_group``: a clear error when the NIXL EP manager has no TCP store.

Symptom: ``--all2all-backend nixl_ep`` without elastic EP dies at the first MoE
layer with ``AttributeError: 'NoneType' object has no attribute 'store'``,
which names neither the manager nor what is missing.

Root cause: ``NixlEPAll2AllManager`` hands ``self.tcp_store_group.store`` to
NIXL's ``Buffer`` (``_init_buffer`` / ``_update_buffer``), but vLLM passes a
``tcp_store_group`` only for stateless (elastic EP) groups; otherwise it is None.

Upstream: vllm-project/vllm PR 41299 (the manager asserts it is given, 0.22.0);
from 0.24.0 it builds a ``StatelessProcessGroup`` from the CPU group's store instead.
Affected releases (probed on each release's sources): 0.18.0 - 0.21.0.

Detection (behavioural): the manager is constructed with a stand-in CPU group
and ``tcp_store_group=None`` (vLLM's group getters and any
``StatelessProcessGroup`` replaced by recorders); if it keeps None, its
``_init_buffer`` runs against a recording ``nixl_ep.Buffer`` stand-in: an
``AttributeError`` on None is the bug, an error naming ``tcp_store_group`` or a
store of its own means no bug.

Fix: ``__init__`` raises a ``ValueError`` naming the manager, the missing
``tcp_store_group`` and what provides it, before any buffer is touched.

Proof: ``tests/patches/test_all2all_nixl_ep.py`` (vLLM 0.19.1's sources: the
unpatched manager fails with the AttributeError, the patched one with the
clear error; the pinned vLLM is left untouched).

In-tree: ``patches export`` writes the check at the top of ``__init__``.  Removable:
once the oldest vLLM served is 0.22.0 (upstream's assert; 0.24.0 makes its own store).
"""

from __future__ import annotations

import contextlib
import importlib
import types
from typing import Any, ClassVar

from vllm_ep_kit.patches.base import (
    Patch,
    Serving,
    UnrecognisedShape,
    swapped,
    unwrap,
    wrap,
)
from vllm_ep_kit.patches.flashinfer_managers import (
    ALL2ALL,
    MANAGER_CLASSES,
    TWO_SIDED_MANAGER,
    FlashInferStandIn,
    WorkspaceShape,
    one_sided_initialize_kwargs,
)
from vllm_ep_kit.patches.source import SourceEdit

_PATCHED_ATTR = "__vllm_ep_kit_ep_group__"
FLASHINFER_NVLINK_BACKENDS = (
    "flashinfer_nvlink_one_sided",
    "flashinfer_nvlink_two_sided",
    "flashinfer_all2allv",
)


class _GroupRecorder(FlashInferStandIn):
    """The FlashInfer stand-in, with a communicator class that records the group each
    MNNVL communicator is built on, and ``Mapping`` / ``MnnvlConfig`` that keep their
    arguments (nothing of FlashInfer's or torch.distributed's runs)."""

    def __init__(self) -> None:
        self.comm_groups: list[Any] = []  # the groups vLLM built communicators on
        recorder = self

        class Communicator:
            def __init__(self, group):
                recorder.comm_groups.append(group)

        class Config:
            def __init__(self, comm_backend=None, **kwargs):
                self.comm_backend = comm_backend

        class Mapping:
            def __init__(self, *args, **kwargs):
                self.args, self.kwargs = args, kwargs

        self.Communicator, self.Config, self.Mapping = Communicator, Config, Mapping

    def config_places(self) -> list[tuple[object, dict]]:
        """FlashInfer's ``Mapping`` and ``MnnvlConfig`` where 0.33's ``initialize`` imports
        them (FlashInfer's own modules)."""
        places: list[tuple[object, dict[str, Any]]] = []
        for module_name, names in (
            ("flashinfer.comm", {"Mapping": self.Mapping}),
            ("flashinfer.comm.mnnvl", {"MnnvlConfig": self.Config}),
        ):
            try:
                module = importlib.import_module(module_name)
            except Exception:  # noqa: BLE001 (a FlashInfer without it: nothing to replace)
                continue
            places.append((module, {n: v for n, v in names.items() if hasattr(module, n)}))
        return places


def _bare_manager(cls, group):
    manager = cls.__new__(cls)
    fields = dict(
        cpu_group=group,
        rank=0,
        world_size=2,
        initialized=False,
        mapping=None,
        workspace_tensor=None,
        prepare_workspace_tensor=None,
        moe_alltoall=None,
        workspace_size=0,
        max_num_tokens=0,
        top_k=0,
        num_experts=0,
        communication=None,
        gpus_per_node=2,
        _combine_supports_output=False,
        low_precision_combine=False,
        alltoall_info=None,
    )
    manager.__dict__.update(fields)
    return manager


def observed_mnnvl_group(class_name: str) -> str:
    """'own' if ``initialize`` of vLLM's manager ``class_name`` builds the MNNVL
    communicator on the manager's group, 'dp' if on the DP group.  Raises
    UnrecognisedShape for anything else."""
    try:
        from vllm.distributed.device_communicators import all2all, mnnvl_compat
    except Exception as exc:
        raise UnrecognisedShape(f"cannot import vLLM's FlashInfer all2all modules: {exc}") from exc
    cls = getattr(all2all, class_name, None)
    if cls is None:
        raise UnrecognisedShape(f"vLLM has no {class_name}")
    own, dp = object(), object()
    rec = _GroupRecorder()
    manager = _bare_manager(cls, own)
    fake_dist = types.SimpleNamespace(barrier=lambda *a, **k: None)
    module_names = dict(
        get_dp_group=lambda: types.SimpleNamespace(cpu_group=dp),
        Mapping=rec.Mapping,
        MnnvlConfig=rec.Config,
        dist=fake_dist,
    )
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(rec.installed(accelerator=False))
            stack.enter_context(swapped(all2all, **module_names))
            for module, names in rec.config_places():
                stack.enter_context(swapped(module, **names))
            stack.enter_context(swapped(mnnvl_compat, CustomCommunicator=rec.Communicator))
            if class_name == TWO_SIDED_MANAGER:
                manager.initialize(world_size=2, rank=0, gpus_per_node=2)
            else:
                manager.initialize(**one_sided_initialize_kwargs(manager, WorkspaceShape()))
    except Exception as exc:
        raise UnrecognisedShape(
            f"{cls.__name__}.initialize failed under the probe: {type(exc).__name__}: {exc}"
        ) from exc
    if rec.comm_groups == [own]:
        return "own"
    if rec.comm_groups == [dp]:
        return "dp"
    raise UnrecognisedShape(
        f"{cls.__name__}.initialize built {len(rec.comm_groups)} MNNVL "
        "communicators on unexpected groups"
    )


ALL2ALL_FILE = "vllm/distributed/device_communicators/all2all.py"


class MnnvlWorkspaceOnEpGroup(Patch):
    name = "mnnvl_workspace_ep_group"
    summary = "FlashInfer NVLink managers: MNNVL communicator and workspace on the EP group"
    upstream = "vllm-project/vllm#40893"
    affected = "0.18.0, 0.19.0, 0.19.1"
    removable = "0.20.0"
    requires = ("vllm", "flashinfer")
    triggers = tuple(f"{ALL2ALL}:{cls}.initialize" for cls in MANAGER_CLASSES)
    # in-tree: the MNNVL communicator of each manager on the manager's own group
    source_edits = tuple(
        SourceEdit(
            (ALL2ALL_FILE,),
            (f"{cls}.initialize",),
            ("CustomCommunicator(get_dp_group().cpu_group)",),
            "CustomCommunicator(self.cpu_group)",
        )
        for cls in MANAGER_CLASSES
    )

    def bites(self, serving: Serving) -> str:
        if (
            serving.all2all_backend in FLASHINFER_NVLINK_BACKENDS
            and serving.expert_parallel
            and serving.tensor_parallel_size > 1
            and serving.data_parallel_size > 1
        ):
            return (
                "dies at the first MoE dispatch: the MNNVL workspace spans the DP group, "
                "not the EP group (FlashInfer asserts workspace.size(0) == moe_ep_size)"
            )
        return ""

    def probe(self) -> tuple[bool, str]:
        seen = {name: observed_mnnvl_group(name) for name in MANAGER_CLASSES}
        buggy = sorted(name for name, group in seen.items() if group == "dp")
        if buggy:
            return True, f"MNNVL communicator on the DP group in: {', '.join(buggy)}"
        return False, "both managers build the MNNVL communicator on their own (EP) group"

    def apply(self) -> None:
        from vllm.distributed.device_communicators import all2all

        def own_group_initialize(original):
            def initialize(self, *args, **kwargs):
                own = types.SimpleNamespace(cpu_group=self.cpu_group)
                with swapped(all2all, get_dp_group=lambda: own):
                    return original(self, *args, **kwargs)

            return initialize

        for cls_name in MANAGER_CLASSES:
            wrap(getattr(all2all, cls_name), "initialize", own_group_initialize, _PATCHED_ATTR)

    def revert(self) -> None:
        from vllm.distributed.device_communicators import all2all

        for cls_name in MANAGER_CLASSES:
            unwrap(getattr(all2all, cls_name), "initialize", _PATCHED_ATTR)


_NIXL_ATTR = "__vllm_ep_kit_nixl_tcp_store__"
NIXL_MISSING_STORE = (
    "NixlEPAll2AllManager needs tcp_store_group (a StatelessProcessGroup whose TCP store "
    "NIXL's Buffer uses to exchange connection metadata) but got None: this vLLM passes one "
    "only for stateless (elastic EP) process groups. Enable elastic EP, or use a vLLM "
    "release whose NIXL EP manager creates its own store (0.32.0 does)."
)


class _FakeCpuGroup:
    """Enough of a ProcessGroup for ``All2AllManagerBase.__init__``."""

    def rank(self) -> int:
        return 0

    def size(self) -> int:
        return 2

    def get_group_store(self):
        return object()


class _RecordingBuffer:
    """Stands in for ``nixl_ep.Buffer``: accepts everything, records the store it got."""

    stores: ClassVar[list] = []

    def __init__(self, rank=0, tcp_store_group=None, **kwargs):
        _RecordingBuffer.stores.append(tcp_store_group)

    @staticmethod
    def get_rdma_size_hint(**kwargs) -> int:
        return 0

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _names_tcp_store_group(exc: BaseException) -> bool:
    """The error, or the source line that raised it (a bare ``assert tcp_store_group ...``
    as upstream's fix has), names ``tcp_store_group``."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return "tcp_store_group" in str(exc) or bool(
        frames and "tcp_store_group" in (frames[-1].line or "")
    )


def observed_nixl_store_handling() -> str:
    """'own' (the manager makes a store), 'clear' (it says tcp_store_group is missing),
    or 'attribute-error' (the bug).  Raises UnrecognisedShape otherwise."""
    import sys

    try:
        from vllm.distributed import parallel_state
        from vllm.distributed.device_communicators import all2all
    except Exception as exc:
        raise UnrecognisedShape(f"cannot import vLLM's all2all module: {exc}") from exc
    cls = getattr(all2all, "NixlEPAll2AllManager", None)
    if cls is None:
        raise UnrecognisedShape("vLLM has no NixlEPAll2AllManager")
    group = types.SimpleNamespace(rank_in_group=0, world_size=1, cpu_group=None)
    made = []

    class RecordingStatelessGroup:
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            self.store = object()

    module_names: dict[str, object] = {}
    if hasattr(all2all, "StatelessProcessGroup"):
        module_names["StatelessProcessGroup"] = RecordingStatelessGroup
    if hasattr(all2all, "dist"):  # PrefixStore over the stand-in group's store
        module_names["dist"] = types.SimpleNamespace(
            PrefixStore=lambda prefix, store: object(), barrier=lambda *a, **k: None
        )
    fake_module = types.ModuleType("nixl_ep")
    fake_module.Buffer = _RecordingBuffer  # type: ignore[attr-defined]  # a module made at run time
    saved_module = sys.modules.get("nixl_ep")
    sys.modules["nixl_ep"] = fake_module
    try:
        with (
            swapped(
                parallel_state,
                get_dp_group=lambda: group,
                get_tp_group=lambda: group,
                in_the_same_node_as=lambda *a, **k: [True, True],
            ),
            swapped(all2all, **module_names),
        ):
            try:
                manager = cls(_FakeCpuGroup(), None)
            except (ValueError, AssertionError) as exc:
                if _names_tcp_store_group(exc):
                    return "clear"
                raise UnrecognisedShape(f"constructor failed: {type(exc).__name__}: {exc}") from exc
            if getattr(manager, "tcp_store_group", None) is not None:
                return "own"
            manager.__dict__.setdefault("max_num_ep_ranks", 2)
            try:
                manager._init_buffer(
                    max_num_tokens_per_dp_rank=1, token_hidden_size=8, num_experts_per_rank=1
                )
            except AttributeError as exc:
                if "NoneType" in str(exc) and "store" in str(exc):
                    return "attribute-error"
                raise UnrecognisedShape(f"_init_buffer: {exc}") from exc
            except (ValueError, AssertionError) as exc:
                if _names_tcp_store_group(exc):
                    return "clear"
                raise UnrecognisedShape(f"_init_buffer: {type(exc).__name__}: {exc}") from exc
            raise UnrecognisedShape("_init_buffer ran without a tcp_store_group")
    except UnrecognisedShape:
        raise
    except Exception as exc:
        raise UnrecognisedShape(
            f"NixlEPAll2AllManager under the probe: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        cls._buffer = None
        if saved_module is None:
            sys.modules.pop("nixl_ep", None)
        else:
            sys.modules["nixl_ep"] = saved_module


class NixlEpTcpStoreGroupRequired(Patch):
    name = "nixl_ep_tcp_store_group"
    summary = "NIXL EP manager: clear error when tcp_store_group is missing"
    upstream = "vllm-project/vllm#41299"
    affected = "0.18.0 - 0.21.0 (fixed in 0.22.0)"
    removable = "0.22.0"
    triggers = (f"{ALL2ALL}:NixlEPAll2AllManager.__init__",)
    # in-tree: the manager refuses a missing store before anything uses it
    source_edits = (
        SourceEdit(
            (ALL2ALL_FILE,),
            ("NixlEPAll2AllManager.__init__",),
            ("    def __init__(self, cpu_group, tcp_store_group=None):\n",),
            "    def __init__(self, cpu_group, tcp_store_group=None):\n"
            "        if tcp_store_group is None:\n"
            "            raise ValueError(\n"
            '                "NixlEPAll2AllManager needs tcp_store_group (a "\n'
            '                "StatelessProcessGroup whose TCP store NIXL\'s Buffer uses to "\n'
            '                "exchange connection metadata); vLLM passes one only for "\n'
            '                "elastic EP process groups."\n'
            "            )\n",
        ),
    )

    def bites(self, serving: Serving) -> str:
        if serving.all2all_backend == "nixl_ep" and not serving.elastic_ep:
            return (
                "dies at the first MoE layer with AttributeError: 'NoneType' object has no "
                "attribute 'store' (no tcp_store_group without elastic EP)"
            )
        return ""

    def probe(self) -> tuple[bool, str]:
        seen = observed_nixl_store_handling()
        if seen == "attribute-error":
            return True, (
                "without tcp_store_group the manager fails at its first buffer with "
                "AttributeError on None"
            )
        if seen == "clear":
            return False, "the manager reports a missing tcp_store_group clearly"
        return False, "the manager creates its own TCP store when none is given"

    def apply(self) -> None:
        from vllm.distributed.device_communicators import all2all

        def checked_init(original):
            def __init__(self, cpu_group, tcp_store_group=None, *args, **kwargs):
                if tcp_store_group is None:
                    raise ValueError(NIXL_MISSING_STORE)
                original(self, cpu_group, tcp_store_group, *args, **kwargs)

            return __init__

        wrap(all2all.NixlEPAll2AllManager, "__init__", checked_init, _NIXL_ATTR)

    def revert(self) -> None:
        from vllm.distributed.device_communicators import all2all

        unwrap(all2all.NixlEPAll2AllManager, "__init__", _NIXL_ATTR)


PATCHES = [MnnvlWorkspaceOnEpGroup(), NixlEpTcpStoreGroupRequired()]
