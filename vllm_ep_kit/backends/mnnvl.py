"""What the two FlashInfer NVLink backends share: vLLM's manager on the EP group.

The manager is the one vLLM's EP-group ``CudaCommunicator`` created for the
configured ``all2all_backend`` when there is one, otherwise the same class
built on the EP group's CPU group (as vLLM does).  Its workspaces are real
FlashInfer MNNVL allocations.  The ``Direct*`` transports of the two backend
modules build FlashInfer's objects on the harness's world group instead (no
vLLM), for the kernel tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vllm_ep_kit.backends import registry
from vllm_ep_kit.backends.spec import Backend, Needs
from vllm_ep_kit.backends.transport import Transport
from vllm_ep_kit.patches.flashinfer_managers import WorkspaceShape
from vllm_ep_kit.reference.moe import RoutingCase

if TYPE_CHECKING:
    from flashinfer.comm import Mapping
    from flashinfer.comm.mnnvl import CommBackend, MnnvlConfig
    from torch.distributed import ProcessGroup

    from vllm_ep_kit.harness.rank import RankContext

# vLLM's all-to-all manager objects are Any here: their attributes differ between the
# vLLM releases this kit drives (e.g. 0.33's one-sided manager wraps flashinfer.moe_ep).

NVLINK_NEEDS = Needs(min_gpus=2, nvlink=True, mnnvl_handles=True, modules=("flashinfer.comm",))


def build_manager(class_name: str, cpu_group: ProcessGroup | None = None) -> Any:
    """vLLM's manager ``class_name`` on ``cpu_group`` (default: the EP group's)."""
    from vllm.distributed import parallel_state as ps
    from vllm.distributed.device_communicators import all2all

    cls = getattr(all2all, class_name)
    return cls(cpu_group if cpu_group is not None else ps.get_ep_group().cpu_group)


def vllm_manager(class_name: str) -> tuple[Any, str]:
    """(manager, origin): vLLM's own EP-group manager when it made one of ``class_name``."""
    from vllm.distributed import parallel_state as ps

    comm = getattr(ps.get_ep_group(), "device_communicator", None)
    manager = getattr(comm, "all2all_manager", None)
    if type(manager).__name__ == class_name:
        return manager, "created by vLLM's EP-group CudaCommunicator"
    return build_manager(class_name), "built on the EP group's CPU group"


class ManagerTransport(Transport):
    """A transport over vLLM's manager ``MANAGER_CLASS`` on the EP group's GPUs.

    The class also carries what the lifecycle tests need to know about that manager
    (its entry point, its workspace, whether a wider initialise re-allocates), so a
    manager is named by its backend everywhere, never by a second vocabulary.
    """

    MANAGER_CLASS = ""
    # vLLM's prepare/finalize over this manager, "module:Class" (prepare_finalize_check)
    PREPARE_FINALIZE = ""
    # whether its received rows come in one block of the step's token bound per source
    # rank (one-sided) or packed from row 0 in source order (two-sided alltoallv)
    RECEIVES_IN_SOURCE_BLOCKS = False
    # whether a received row's ids of experts this rank lacks arrive as an invalid id
    # (two-sided: the sender writes slot_count over them) or as they were (one-sided)
    RECEIVES_LOCAL_IDS_ONLY = False
    GROWS_ON_INITIALIZE = False  # a larger initialise re-allocates (one-sided)
    COMBINE_DTYPES: tuple[torch.dtype, ...] | None = None  # None: any the kernels take

    @staticmethod
    def ensure(manager: Any, shape: WorkspaceShape = WorkspaceShape()) -> bool:
        """Make sure the manager's workspace exists, through its own entry point."""
        raise NotImplementedError

    @staticmethod
    def workspace(manager: Any) -> torch.Tensor | None:
        """The manager's (main) workspace tensor, None before it is initialised."""
        raise NotImplementedError

    def __init__(self, ctx: RankContext, backend: Backend) -> None:
        super().__init__(ctx, backend)
        from vllm.distributed import parallel_state as ps

        self.ep = ps.get_ep_group()
        self.rank, self.world = self.ep.rank_in_group, self.ep.world_size
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.manager: Any
        self.origin: str
        self.manager, self.origin = vllm_manager(self.MANAGER_CLASS)
        self.name = f"vllm {self.MANAGER_CLASS}"

    def after_case(self) -> None:
        self.ep.barrier()

    def close(self) -> None:
        self.manager.cleanup()


def _manager_transport_of(backend: Backend) -> type[ManagerTransport] | None:
    cls = backend.transport_class() if backend.driven else None
    return cls if isinstance(cls, type) and issubclass(cls, ManagerTransport) else None


def manager_backend_names() -> list[str]:
    """Registered backends driven through one of vLLM's managers, in registry order."""
    return [b.name for b in registry.all_backends() if _manager_transport_of(b)]


def manager_transport(backend_name: str) -> type[ManagerTransport]:
    """The transport class of a backend driven through a vLLM manager (ValueError if not)."""
    backend = registry.get(backend_name)
    cls = _manager_transport_of(backend)
    if cls is None:
        raise ValueError(
            f"backend {backend.name!r}: not driven through a vLLM manager; "
            f"expected one of {manager_backend_names()}"
        )
    return cls


class DirectTransport(Transport):
    """A transport over FlashInfer's objects built on the harness's world group (no vLLM).

    Ranks may share a GPU (``device_index = rank % device_count``): then the
    NVLink path degenerates to one device, which still exercises FlashInfer's
    handle exchange, workspace layout, routing and combine.  ``layers``: other
    layers' cases the buffers must also carry (sized buffers grow to their union).
    """

    def __init__(self, ctx: RankContext, backend: Backend) -> None:
        super().__init__(ctx, backend)
        self.layers: tuple[RoutingCase, ...] = ()
        self.rank, self.world = ctx.rank, ctx.world_size
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            raise RuntimeError(
                f"{backend.name}: FlashInfer's NVLink kernels need a CUDA GPU, none is visible"
            )
        self.device = torch.device("cuda", ctx.rank % torch.cuda.device_count())
        torch.cuda.set_device(self.device)

    def after_case(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def mapping(self, **kwargs: Any) -> Mapping:
        from flashinfer.comm import Mapping

        return Mapping(
            self.world, self.rank, torch.cuda.device_count(), tp_size=self.world, **kwargs
        )

    def mnnvl_config(self, **kwargs: Any) -> MnnvlConfig:
        """FlashInfer's MNNVL config whose CommBackend is the harness's gloo world group."""
        from flashinfer.comm.mnnvl import MnnvlConfig

        return MnnvlConfig(comm_backend=self.comm_backend(), **kwargs)

    @staticmethod
    def comm_backend() -> CommBackend:
        """FlashInfer's ``CommBackend`` over the harness's gloo world group (the handle
        exchange vLLM runs over the EP group's CPU group)."""
        import torch.distributed as dist
        from flashinfer.comm.mnnvl import CommBackend

        group = dist.group.WORLD

        class GlooCommBackend(CommBackend):
            def Get_rank(self) -> int:
                return dist.get_rank(group)

            def Get_size(self) -> int:
                return dist.get_world_size(group)

            def allgather(self, data: Any) -> list[Any]:  # type: ignore[override]  # tuple in FlashInfer's protocol; mpi4py's is a list
                out: list[Any] = [None] * self.Get_size()
                dist.all_gather_object(out, data, group=group)
                return out

            def bcast(self, data: Any, root: int) -> Any:
                box = [data]
                dist.broadcast_object_list(box, src=root, group=group)
                return box[0]

            def barrier(self) -> None:
                dist.barrier(group=group)

            def Split(self, color: int, key: int) -> CommBackend:
                return self

        return GlooCommBackend()
