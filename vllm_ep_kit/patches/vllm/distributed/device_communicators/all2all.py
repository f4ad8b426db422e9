"""Hotfix for ``vllm/distributed/device_communicators/all2all.py``: MNNVL workspace on the EP group.

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
kernel is touched.

Fix: during ``initialize`` only, ``get_dp_group`` as seen by this module
answers the manager's own group, which is the one line that differs.

Proof: ``tests/patches/test_all2all_ep_group.py`` (runs vLLM 0.19.1's sources
over gloo: the EP-group check fails without the patch and passes with it).
"""

from __future__ import annotations

import types

from vllm_ep_kit.mnnvl_managers import MANAGER_CLASSES, WorkspaceShape, one_sided_initialize_kwargs
from vllm_ep_kit.patches.base import (
    Patch,
    UnrecognisedShape,
    swapped,
    unwrap,
    wrap,
)

_PATCHED_ATTR = "__vllm_ep_kit_ep_group__"


class _Recorder:
    """Everything ``initialize`` reaches outside vLLM, answering harmlessly."""

    def __init__(self):
        self.comm_groups = []
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

        class MnnvlMoe:
            @staticmethod
            def get_moe_workspaces(mapping, config):
                return None

            @staticmethod
            def get_moe_prepare_workspace(mapping, config):
                return None

        class MoeAlltoAll:
            def __init__(self, *args, **kwargs):
                pass

            def combine(self, payload, runtime_max_tokens_per_rank, output=None,
                        use_low_precision=False):
                return None

        self.Communicator, self.Config, self.Mapping = Communicator, Config, Mapping
        self.MnnvlMoe, self.MoeAlltoAll = MnnvlMoe, MoeAlltoAll


def _bare_manager(cls, group):
    manager = cls.__new__(cls)
    fields = dict(cpu_group=group, rank=0, world_size=2, initialized=False, mapping=None,
                  workspace_tensor=None, prepare_workspace_tensor=None, moe_alltoall=None,
                  workspace_size=0, max_num_tokens=0, top_k=0, num_experts=0,
                  gpus_per_node=2, _combine_supports_output=False,
                  low_precision_combine=False, alltoall_info=None)
    manager.__dict__.update(fields)
    return manager


def observed_mnnvl_group(kind: str) -> str:
    """'own' if ``initialize`` builds the MNNVL communicator on the manager's group,
    'dp' if on the DP group.  Raises UnrecognisedShape for anything else."""
    import torch

    try:
        from vllm.distributed.device_communicators import all2all, mnnvl_compat
    except Exception as exc:  # noqa: BLE001 (flashinfer missing raises AssertionError)
        raise UnrecognisedShape(f"cannot import vLLM's FlashInfer all2all modules: {exc}")
    cls = getattr(all2all, MANAGER_CLASSES[kind], None)
    if cls is None:
        raise UnrecognisedShape(f"vLLM has no {MANAGER_CLASSES[kind]}")
    own, dp = object(), object()
    rec = _Recorder()
    manager = _bare_manager(cls, own)
    fake_dist = types.SimpleNamespace(barrier=lambda *a, **k: None)
    module_names = dict(get_dp_group=lambda: types.SimpleNamespace(cpu_group=dp),
                        Mapping=rec.Mapping, MnnvlConfig=rec.Config, MnnvlMoe=rec.MnnvlMoe,
                        MoeAlltoAll=rec.MoeAlltoAll, dist=fake_dist,
                        moe_a2a_get_workspace_size_per_rank=lambda *a, **k: 0)
    try:
        with swapped(all2all, **module_names), \
                swapped(mnnvl_compat, CustomCommunicator=rec.Communicator), \
                swapped(torch.accelerator, empty_cache=lambda: None):
            if kind == "two_sided":
                manager.initialize(world_size=2, rank=0, gpus_per_node=2)
            else:
                manager.initialize(**one_sided_initialize_kwargs(manager, WorkspaceShape()))
    except Exception as exc:  # noqa: BLE001 (any surprise means: unknown code)
        raise UnrecognisedShape(f"{cls.__name__}.initialize failed under the probe: "
                                f"{type(exc).__name__}: {exc}") from exc
    if rec.comm_groups == [own]:
        return "own"
    if rec.comm_groups == [dp]:
        return "dp"
    raise UnrecognisedShape(f"{cls.__name__}.initialize built {len(rec.comm_groups)} MNNVL "
                            "communicators on unexpected groups")


class MnnvlWorkspaceOnEpGroup(Patch):
    name = "mnnvl_workspace_ep_group"
    summary = "FlashInfer NVLink managers: MNNVL communicator and workspace on the EP group"
    upstream = "vllm-project/vllm#40893"
    affected = "0.18.0, 0.19.0, 0.19.1"
    requires = ("vllm", "flashinfer")

    def probe(self) -> tuple[bool, str]:
        seen = {kind: observed_mnnvl_group(kind) for kind in MANAGER_CLASSES}
        buggy = sorted(kind for kind, group in seen.items() if group == "dp")
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

        for cls_name in MANAGER_CLASSES.values():
            wrap(getattr(all2all, cls_name), "initialize", own_group_initialize, _PATCHED_ATTR)

    def revert(self) -> None:
        from vllm.distributed.device_communicators import all2all

        for cls_name in MANAGER_CLASSES.values():
            unwrap(getattr(all2all, cls_name), "initialize", _PATCHED_ATTR)


PATCHES = [MnnvlWorkspaceOnEpGroup()]
