"""``bench``'s arguments and plan: each refused argument is named with its bound, and the
plan holds the runs, their points and what is left out (fast, in process)."""

import dataclasses

import pytest

from vllm_ep_kit import backends as registry
from vllm_ep_kit.backends.spec import Backend
from vllm_ep_kit.commands.bench.plan import (
    BenchArgumentError,
    BenchPoint,
    BenchRun,
    BenchSettings,
    make_bench_plan,
)
from vllm_ep_kit.reference.layout import ParallelLayout

from .conftest import AGRS, ONE, TWO

BENCHABLE = f"{AGRS}, {ONE}, {TWO}"


def plan(**overrides):
    args = {
        "world_size": 2,
        "backends": None,
        "tokens": [1, 8],
        "hiddens": [512],
        "dtypes": ["bf16"],
        "settings": BenchSettings(),
        "gpu_count": 0,
        "usable": [AGRS],
        "unusable": {ONE: "needs CUDA GPUs", TWO: "needs CUDA GPUs"},
    }
    args |= overrides
    return make_bench_plan(
        args["world_size"],
        args["backends"],
        args["tokens"],
        args["hiddens"],
        args["dtypes"],
        args["settings"],
        args["gpu_count"],
        args["usable"],
        args["unusable"],
    )


def refusal(**overrides) -> str:
    with pytest.raises(BenchArgumentError) as caught:
        plan(**overrides)
    return str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"world_size": 1}, "--world-size: 1 is too small; all-to-all needs at least 2 ranks"),
        (
            {"world_size": 3, "gpu_count": 2},
            "--world-size: 3 ranks but only 2 GPUs visible (one rank per GPU)",
        ),
        (
            {"backends": ["nope"]},
            "--backends: unknown backend 'nope'; expected one of "
            + ", ".join(registry.known_names()),
        ),
        (
            {"backends": ["deepep_low_latency"]},
            "--backends: bench cannot drive deepep_low_latency: it has no transport for it yet "
            f"(it drives {BENCHABLE})",
        ),
        (
            {"backends": [AGRS, ONE]},
            f"--backends: {ONE} is not usable on this machine: needs CUDA GPUs",
        ),
        (
            {"backends": [ONE], "unusable": None},
            f"--backends: {ONE} is not usable on this machine: see `vllm-ep-kit doctor`",
        ),
        (
            {"backends": [TWO], "unusable": {ONE: "needs CUDA GPUs"}},
            f"--backends: {TWO} is not usable on this machine: see `vllm-ep-kit doctor`",
        ),
        ({"tokens": [4, 0]}, "--tokens: [4, 0]: expected token counts >= 1 per rank"),
        ({"tokens": []}, "--tokens: []: expected token counts >= 1 per rank"),
        ({"hiddens": [512, 0]}, "--hidden: [512, 0]: expected sizes >= 1"),
        ({"hiddens": []}, "--hidden: []: expected sizes >= 1"),
        ({"dtypes": ["bf16", "int4"]}, "--dtypes: unknown dtype 'int4'; expected one of bf16, fp8"),
        (
            {"dtypes": ["bf16", "fp8"], "hiddens": [512, 768, 1024, 256]},
            "--hidden: [768, 256] with fp8: block scales need hidden to be "
            "a multiple of 512 (16-byte scale rows)",
        ),
        ({"settings": BenchSettings(top_k=0)}, "--top-k: 0: expected 1..--experts (256)"),
        (
            {"settings": BenchSettings(top_k=9, num_experts=8)},
            "--top-k: 9: expected 1..--experts (8)",
        ),
        (
            {"settings": BenchSettings(num_experts=255)},
            "--experts: 255 is not divisible by the world size 2 (experts split evenly over "
            "EP ranks)",
        ),
        (
            {"world_size": 4, "settings": BenchSettings(top_k=1, num_experts=6)},
            "--experts: 6 is not divisible by the world size 4 (experts split evenly over "
            "EP ranks)",
        ),
        (
            {"settings": BenchSettings(repeats=0)},
            "--repeats/--warmup: 0/5: expected repeats >= 1 and warmup >= 0",
        ),
        (
            {"settings": BenchSettings(warmup=-1)},
            "--repeats/--warmup: 20/-1: expected repeats >= 1 and warmup >= 0",
        ),
    ],
)
def test_a_refused_argument_is_named_with_what_it_expects(overrides, message):
    assert refusal(**overrides) == message


@pytest.mark.parametrize(
    "overrides",
    [
        {"world_size": 2, "gpu_count": 2},
        {"world_size": 4, "gpu_count": 0},
        {"world_size": 3, "gpu_count": 4, "settings": BenchSettings(num_experts=255)},
        {"tokens": [1]},
        {"hiddens": [1]},
        {"dtypes": ["fp8"], "hiddens": [512, 1024]},
        {"dtypes": ["bf16"], "hiddens": [256]},
        {"settings": BenchSettings(top_k=1)},
        {"settings": BenchSettings(top_k=8, num_experts=8)},
        {"world_size": 4, "settings": BenchSettings(top_k=1, num_experts=4)},
        {"settings": BenchSettings(repeats=1, warmup=0)},
        {"backends": ["naive"]},
    ],
    ids=[
        "as many ranks as GPUs",
        "any world size on CPU ranks",
        "an odd world size dividing the experts",
        "one token per rank",
        "hidden 1 in bf16",
        "fp8 with multiples of 512",
        "bf16 with a hidden fp8 would refuse",
        "top-k 1",
        "top-k equal to the experts",
        "one expert per rank",
        "one repeat and no warmup",
        "a backend named by its alias",
    ],
)
def test_the_smallest_accepted_values_plan_a_run(overrides):
    got = plan(**overrides)
    assert [run.backend for run in got.runs] == [AGRS]
    assert got.runs[0].points


def test_plan_runs_usable_backends_and_lists_the_rest():
    settings = BenchSettings(top_k=2, num_experts=16, warmup=1, repeats=3, link_mib=8)
    got = plan(
        dtypes=["bf16", "fp8"],
        tokens=[8, 1, 8],
        hiddens=[1024, 512],
        settings=settings,
        unusable={ONE: "needs CUDA GPUs", TWO: "needs 2+ GPUs", "nixl_ep": "needs nixl"},
    )
    assert [run.backend for run in got.runs] == [AGRS]
    run = got.runs[0]
    assert run.layout == ParallelLayout.for_world(2, tp=1)
    assert run.layout.describe() == "tp=1,dp=2,ep=2"
    assert run.spec is registry.get(AGRS)
    assert [p.describe() for p in run.points] == [
        "tokens=1 hidden=1024 bf16",
        "tokens=8 hidden=1024 bf16",
        "tokens=1 hidden=1024 fp8",
        "tokens=8 hidden=1024 fp8",
        "tokens=1 hidden=512 bf16",
        "tokens=8 hidden=512 bf16",
        "tokens=1 hidden=512 fp8",
        "tokens=8 hidden=512 fp8",
    ]
    assert got.skipped == (
        (ONE, "not usable here: needs CUDA GPUs"),
        (TWO, "not usable here: needs 2+ GPUs"),
    )
    assert got.device_backend == "gloo"
    assert got.settings is settings


def test_every_usable_backend_runs_in_registry_order_on_gpus():
    got = plan(world_size=4, gpu_count=8, usable=[TWO, AGRS, ONE, "nixl_ep"], unusable={})
    assert [run.backend for run in got.runs] == [AGRS, ONE, TWO]
    assert [run.spec for run in got.runs] == [registry.get(n) for n in (AGRS, ONE, TWO)]
    assert all(run.layout.describe() == "tp=1,dp=4,ep=4" for run in got.runs)
    assert got.skipped == ()
    assert got.device_backend == "nccl"


def test_no_unusable_list_skips_nothing():
    assert plan(unusable=None).skipped == ()


def test_named_backends_run_once_each_in_the_order_given_and_nothing_is_listed_as_skipped():
    got = plan(
        backends=[TWO, "naive", AGRS, TWO],
        usable=[AGRS, ONE, TWO],
        gpu_count=2,
    )
    assert [run.backend for run in got.runs] == [TWO, AGRS]
    assert got.skipped == ()


def test_an_empty_backend_list_means_every_usable_backend():
    got = plan(backends=[], usable=[AGRS, ONE], unusable={TWO: "needs 2+ GPUs"})
    assert [run.backend for run in got.runs] == [AGRS, ONE]
    assert got.skipped == ((TWO, "not usable here: needs 2+ GPUs"),)


TOY = "toy_bench_bf16_only"
UNDRIVEN = "toy_bench_undriven"
UNBENCHED = "toy_bench_unbenched"


@pytest.fixture
def toys():
    """A driven backend bench times in bf16 only; one with bench dtypes but no transport;
    one with a transport but no bench dtypes."""
    made = [
        Backend(TOY, bench_dtypes=("bf16",), transport="toy.module:Transport"),
        Backend(UNDRIVEN, bench_dtypes=("bf16", "int4")),
        Backend(UNBENCHED, transport="toy.module:Transport"),
    ]
    for backend in made:
        registry.register(backend)
    try:
        yield made
    finally:
        for backend in made:
            registry.unregister(backend.name)


def test_a_backend_runs_only_the_dtypes_it_is_timed_in(toys):
    usable = [AGRS, TOY, UNDRIVEN, UNBENCHED]
    got = plan(dtypes=["fp8", "bf16"], usable=usable, unusable={})
    assert [run.backend for run in got.runs] == [AGRS, TOY]
    assert [p.dtype for p in got.runs[0].points] == ["fp8", "fp8", "bf16", "bf16"]
    assert [p.describe() for p in got.runs[1].points] == [
        "tokens=1 hidden=512 bf16",
        "tokens=8 hidden=512 bf16",
    ]
    assert got.runs[1].spec is toys[0]
    only_fp8 = plan(dtypes=["fp8"], usable=usable, unusable={})
    assert [run.backend for run in only_fp8.runs] == [AGRS]


def test_backends_without_a_transport_or_bench_dtypes_are_not_benchable(toys):
    expected = f"{BENCHABLE}, {TOY}"
    for name, why in (
        (UNDRIVEN, "it has no transport for it yet"),
        (UNBENCHED, "it times no payload through it"),
    ):
        assert refusal(backends=[name], usable=[name]) == (
            f"--backends: bench cannot drive {name}: {why} (it drives {expected})"
        )
    assert refusal(dtypes=["int4"], usable=[UNDRIVEN]) == (
        "--dtypes: unknown dtype 'int4'; expected one of bf16, fp8"
    )
    unusable = {n: "why" for n in (ONE, TWO, TOY, UNDRIVEN, UNBENCHED)}
    assert [name for name, _ in plan(unusable=unusable).skipped] == [ONE, TWO, TOY]


def test_a_run_given_no_spec_takes_the_registry_entry():
    layout = ParallelLayout.for_world(2, tp=1)
    assert BenchRun(AGRS, layout, ()).spec is registry.get(AGRS)
    assert BenchRun("naive", layout, ()).spec is registry.get(AGRS)
    other = dataclasses.replace(registry.get(AGRS), note="given")
    assert BenchRun(AGRS, layout, (), other).spec is other


def test_a_point_describes_itself_in_one_line():
    assert BenchPoint(16, 7168, "fp8").describe() == "tokens=16 hidden=7168 fp8"


def test_a_repeated_value_plans_each_point_once():
    """A point measured twice had twice a point's rows, and the merge over ranks dropped it."""
    got = plan(tokens=[8, 8], hiddens=[512, 1024, 512], dtypes=["bf16", "fp8", "bf16"])
    assert [p.describe() for p in got.runs[0].points] == [
        "tokens=8 hidden=512 bf16",
        "tokens=8 hidden=512 fp8",
        "tokens=8 hidden=1024 bf16",
        "tokens=8 hidden=1024 fp8",
    ]


def test_an_alias_is_planned_as_its_backend():
    got = plan(backends=["flashinfer_all2allv"], usable=[TWO], unusable={})
    assert [run.backend for run in got.runs] == [TWO]
