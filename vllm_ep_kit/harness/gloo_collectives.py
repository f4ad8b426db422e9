"""Variable-size all-gather and reduce-scatter over gloo, for vLLM groups on CPU.

vLLM's AGRS all-to-all manager calls ``all_gatherv`` / ``reduce_scatterv`` on
its group coordinator.  Only GPU communicators implement them (through
pynccl); on a CPU-only machine vLLM's platform is "unspecified" and its base
communicator raises ``NotImplementedError``.  Installing this communicator on
the groups lets the manager's real logic (which group, which sizes, what
order) run in CI.  It is test scaffolding, used only where vLLM has nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _sizes_or_equal(total: int, world: int, sizes: list[int] | None) -> list[int]:
    if sizes is not None:
        if len(sizes) != world or sum(sizes) != total:
            raise ValueError(f"sizes={sizes} do not split {total} rows over {world} ranks")
        return list(sizes)
    if total % world:
        raise ValueError(f"{total} rows do not split evenly over {world} ranks")
    return [total // world] * world


def make_gloo_communicator(group):
    """A vLLM DeviceCommunicator for ``group`` with gloo v-collectives."""
    from vllm.distributed.device_communicators.base_device_communicator import (
        DeviceCommunicatorBase,
    )

    class GlooVCommunicator(DeviceCommunicatorBase):
        def all_gatherv(self, input_, dim=0, sizes=None):
            if dim != 0:
                raise NotImplementedError("only dim 0 all_gatherv")
            if isinstance(input_, (list, tuple)):
                return [self._gatherv_one(t, sizes) for t in input_]
            return self._gatherv_one(input_, sizes)

        def _gatherv_one(self, tensor, sizes):
            world = self.world_size
            if sizes is None:
                sizes = [tensor.shape[0]] * world
            biggest = max(sizes) if sizes else 0
            padded = torch.zeros((biggest,) + tuple(tensor.shape[1:]), dtype=tensor.dtype)
            padded[: tensor.shape[0]] = tensor
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded, group=self.device_group)
            return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

        def reduce_scatterv(self, input_, dim=-1, sizes=None):
            if dim < 0:
                dim += input_.dim()
            if dim != 0:
                raise NotImplementedError("only dim 0 reduce_scatterv")
            sizes = _sizes_or_equal(input_.shape[0], self.world_size, sizes)
            # gloo has no reduce_scatter: all-reduce, then keep this rank's rows.
            total = input_.float().clone() if input_.dtype == torch.bfloat16 else input_.clone()
            dist.all_reduce(total, group=self.device_group)
            start = sum(sizes[: self.rank_in_group])
            return total[start : start + sizes[self.rank_in_group]].to(input_.dtype)

    return GlooVCommunicator(
        cpu_group=group.cpu_group,
        device=torch.device("cpu"),
        device_group=group.device_group,
        unique_name=group.unique_name,
    )


def ensure_v_collectives(group) -> bool:
    """Install the gloo communicator where vLLM's lacks v-collectives; True if installed."""
    from vllm.distributed.device_communicators.base_device_communicator import (
        DeviceCommunicatorBase,
    )

    comm = group.device_communicator
    if comm is not None and type(comm).all_gatherv is not DeviceCommunicatorBase.all_gatherv:
        return False
    if group.world_size > 1:
        group.device_communicator = make_gloo_communicator(group)
    return True
