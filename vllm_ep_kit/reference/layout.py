"""Parallel layouts (TP x DP x PCP, EP on or off) and the rules derived from them.

One object answers "how many ranks, how big is each group, is this sequence
parallel" so tests, ``check`` and ``bench`` never re-derive vLLM's rules by hand.
The group arithmetic mirrors vLLM's ``initialize_model_parallel`` order
(ExternalDP x DP x PP x PCP x TP, TP fastest): tests compare these predictions
with the groups vLLM actually builds.
"""

from __future__ import annotations

from dataclasses import dataclass


class LayoutError(ValueError):
    """A layout that cannot exist; the message names the offending argument."""


@dataclass(frozen=True)
class ParallelLayout:
    tp: int = 1
    dp: int = 1
    pcp: int = 1
    enable_ep: bool = True

    def __post_init__(self) -> None:
        for name in ("tp", "dp", "pcp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise LayoutError(f"{name}={value!r}: expected an integer >= 1")

    @classmethod
    def for_world(cls, world_size: int, tp: int, pcp: int = 1, enable_ep: bool = True):
        """The layout with ``world_size`` ranks and the given TP (DP fills the rest)."""
        if world_size < 1:
            raise LayoutError(f"world_size={world_size}: expected an integer >= 1")
        if tp < 1 or world_size % (tp * pcp):
            raise LayoutError(
                f"tp={tp}: world size {world_size} is not divisible by tp*pcp={tp * pcp}"
            )
        return cls(tp=tp, dp=world_size // (tp * pcp), pcp=pcp, enable_ep=enable_ep)

    @property
    def world_size(self) -> int:
        return self.tp * self.dp * self.pcp

    @property
    def ep_size(self) -> int:
        """EP group = DP x PCP x TP when expert parallelism is on (vLLM's rule)."""
        return self.world_size if self.enable_ep else 1

    @property
    def is_sequence_parallel(self) -> bool:
        """vLLM's ``use_sequence_parallel_moe``: EP wider than TP and TP > 1."""
        return self.enable_ep and self.ep_size > self.tp and self.tp > 1

    @property
    def uses_all2all(self) -> bool:
        """vLLM's ``ParallelConfig.use_all2all``: when an all-to-all manager exists."""
        return self.dp > 1 or self.is_sequence_parallel or (self.enable_ep and self.pcp > 1)

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp

    def dp_rank(self, rank: int) -> int:
        return rank // (self.tp * self.pcp)

    def tp_group_ranks(self, rank: int) -> list[int]:
        start = rank - self.tp_rank(rank)
        return list(range(start, start + self.tp))

    def dp_group_ranks(self, rank: int) -> list[int]:
        inner = rank % (self.tp * self.pcp)
        return [inner + d * self.tp * self.pcp for d in range(self.dp)]

    def ep_group_ranks(self, rank: int) -> list[int]:
        return list(range(self.world_size)) if self.enable_ep else [rank]

    def describe(self) -> str:
        parts = [f"tp={self.tp}", f"dp={self.dp}"]
        if self.pcp > 1:
            parts.append(f"pcp={self.pcp}")
        parts.append(f"ep={self.ep_size}" if self.enable_ep else "ep=off")
        if self.is_sequence_parallel:
            parts.append("sp")
        return ",".join(parts)
