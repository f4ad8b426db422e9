"""What ``bench`` runs: validated arguments, one run per backend, and what is left out."""

from __future__ import annotations

from dataclasses import dataclass

from vllm_ep_kit import backends as registry
from vllm_ep_kit.backends.spec import Backend
from vllm_ep_kit.reference.layout import ParallelLayout
from vllm_ep_kit.reference.moe import FP8_GROUP

BASELINE = "torch_all_to_all"  # all_to_all_single over the world group (NCCL on GPUs)
DEFAULT_TOKENS = tuple(2**i for i in range(14))  # 1 .. 8192 per rank
DEFAULT_HIDDEN = (2048, 7168)
# CPU-only machines (gloo, wall clock): a smoke run, not a measurement.
CPU_DEFAULT_TOKENS = (1, 16, 256)
CPU_DEFAULT_HIDDEN = (2048,)
DEFAULT_DTYPES = ("bf16", "fp8")
DEFAULT_TOP_K = 8
DEFAULT_EXPERTS = 256


class BenchArgumentError(ValueError):
    """A bad ``bench`` argument; the message names it."""


@dataclass(frozen=True)
class BenchPoint:
    tokens: int  # per rank
    hidden: int
    dtype: str

    def describe(self) -> str:
        return f"tokens={self.tokens} hidden={self.hidden} {self.dtype}"


@dataclass(frozen=True)
class BenchSettings:
    top_k: int = DEFAULT_TOP_K
    num_experts: int = DEFAULT_EXPERTS
    warmup: int = 5
    repeats: int = 20
    link_mib: int = 256  # peer-copy buffer for the link limit


@dataclass(frozen=True)
class BenchRun:
    """One set of ranks: a backend's sweep, each point beside the baseline."""

    backend: str
    layout: ParallelLayout
    points: tuple[BenchPoint, ...]
    # the registry's entry (ranks receive it with the run)
    spec: Backend = None  # type: ignore[assignment]  # None: the registry's, set in __post_init__

    def __post_init__(self) -> None:
        if self.spec is None:
            object.__setattr__(self, "spec", registry.get(self.backend))


@dataclass(frozen=True)
class BenchPlan:
    runs: tuple[BenchRun, ...]
    skipped: tuple[tuple[str, str], ...]  # (what, why) not run
    device_backend: str  # "nccl" or "gloo"
    settings: BenchSettings


def make_bench_plan(
    world_size: int,
    backends: list[str] | None,
    tokens: list[int],
    hiddens: list[int],
    dtypes: list[str],
    settings: BenchSettings,
    gpu_count: int,
    usable: list[str],
    unusable: dict[str, str] | None = None,
) -> BenchPlan:
    """Validate ``bench``'s arguments (errors name the argument) and plan the runs.

    The backends bench can drive, and the payload dtypes it times them with,
    come from the registry (``Backend.bench_dtypes``).
    """
    benchable = {b.name: b for b in registry.all_backends() if b.bench_dtypes and b.driven}
    if world_size < 2:
        raise BenchArgumentError(
            f"--world-size: {world_size} is too small; all-to-all needs at least 2 ranks"
        )
    if gpu_count and world_size > gpu_count:
        raise BenchArgumentError(
            f"--world-size: {world_size} ranks but only {gpu_count} GPUs visible (one rank per GPU)"
        )
    names = {n: registry.canonical(n) for n in registry.known_names()}  # aliases too
    given = []
    for asked in backends or []:
        name = names.get(asked)
        if name is None:
            raise BenchArgumentError(
                f"--backends: unknown backend {asked!r}; expected one of {', '.join(names)}"
            )
        if name not in benchable:
            why = (
                "it times no payload through it"
                if registry.get(name).driven
                else "it has no transport for it yet"
            )
            raise BenchArgumentError(
                f"--backends: bench cannot drive {name}: {why} (it drives {', '.join(benchable)})"
            )
        given.append(name)
        if name not in usable:
            raise BenchArgumentError(
                f"--backends: {name} is not usable on this machine: "
                f"{(unusable or {}).get(name, 'see `vllm-ep-kit doctor`')}"
            )
    if not tokens or any(n < 1 for n in tokens):
        raise BenchArgumentError(f"--tokens: {tokens}: expected token counts >= 1 per rank")
    if not hiddens or any(h < 1 for h in hiddens):
        raise BenchArgumentError(f"--hidden: {hiddens}: expected sizes >= 1")
    known = sorted({d for b in benchable.values() for d in b.bench_dtypes})
    for dtype in dtypes:
        if dtype not in known:
            raise BenchArgumentError(
                f"--dtypes: unknown dtype {dtype!r}; expected one of {', '.join(known)}"
            )
    if "fp8" in dtypes:
        bad = [h for h in hiddens if h % (4 * FP8_GROUP)]
        if bad:
            raise BenchArgumentError(
                f"--hidden: {bad} with fp8: block scales need hidden to be "
                f"a multiple of {4 * FP8_GROUP} (16-byte scale rows)"
            )
    if not 1 <= settings.top_k <= settings.num_experts:
        raise BenchArgumentError(
            f"--top-k: {settings.top_k}: expected 1..--experts ({settings.num_experts})"
        )
    if settings.num_experts % world_size:
        raise BenchArgumentError(
            f"--experts: {settings.num_experts} is not divisible by the "
            f"world size {world_size} (experts split evenly over EP ranks)"
        )
    if settings.repeats < 1 or settings.warmup < 0:
        raise BenchArgumentError(
            f"--repeats/--warmup: {settings.repeats}/{settings.warmup}: "
            "expected repeats >= 1 and warmup >= 0"
        )
    chosen = list(dict.fromkeys(given)) if backends else [b for b in benchable if b in usable]
    skipped = (
        []
        if backends
        else [
            (name, f"not usable here: {why}")
            for name, why in (unusable or {}).items()
            if name in benchable
        ]
    )
    layout = ParallelLayout.for_world(world_size, tp=1)  # DP mode: EP group = every rank
    runs = []
    for name in chosen:
        # each point once: a point measured twice has twice the rows of a point and is
        # dropped by the merge over ranks (a repeated --hidden or --dtypes value)
        taken = [d for d in dict.fromkeys(dtypes) if d in benchable[name].bench_dtypes]
        points = tuple(
            BenchPoint(n, h, d)
            for h in dict.fromkeys(hiddens)
            for d in taken
            for n in sorted(set(tokens))
        )
        if points:
            runs.append(BenchRun(name, layout, points))  # spec: the registry's entry
    return BenchPlan(
        runs=tuple(runs),
        skipped=tuple(skipped),
        device_backend="nccl" if gpu_count else "gloo",
        settings=settings,
    )
