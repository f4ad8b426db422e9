"""The installed vLLM's own parser and config rules, run for a host that may not be this one.

vLLM decides much of what a serve command may do while it builds its configs: the
argument parser (``vllm serve``'s, with every engine and frontend option), then
``ParallelConfig`` (layout against the node's GPUs, removed backends, DP and
microbatching settings) and ``VllmConfig`` (which all-to-all backends microbatching
takes, MoonEP's rules, a FlashInfer MoE-EP kernel's backend).  Preflight runs those
same classes, so their verdict and message are vLLM's, and the place that raised
(its file and line) is the source a finding cites.

vLLM asks its *platform* about the machine (its kind, GPU count, compute capability)
and, on a CPU-only machine, cannot even build its parser ("Failed to infer device
type"); so while preflight talks to vLLM, the platform is a stand-in for the host being
checked (:func:`standing_in`), as the kit's FlashInfer stand-in answers for FlashInfer.
Nothing here imports a compiled kernel or touches a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import sys
import traceback
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from vllm_ep_kit.commands.preflight.host import AMD, Host

# Where a release keeps the function that builds ``vllm serve``'s parser: 0.33 in
# entrypoints/common, 0.32 in entrypoints/launchers, the releases before in the OpenAI
# server's package.  The first that imports with it is used.
SERVE_PARSER_MODULES = (
    "vllm.entrypoints.common.cli_args",
    "vllm.entrypoints.launchers.cli_args",
    "vllm.entrypoints.openai.cli_args",
)
PROGRAM = "vllm serve"


class ArgumentsRefused(ValueError):
    """vLLM's parser refused the arguments; the message is its own error line."""


@dataclasses.dataclass(frozen=True)
class Refusal:
    """vLLM's configs refused the command: its message and where in vLLM it was raised.
    ``rule``: a rule of vLLM's refused it (a ValueError or an assert); otherwise building
    the config failed on this machine for another reason (a compiled op it lacks), which
    says nothing of the command."""

    message: str
    source: str  # "vllm/config/vllm.py:2198", or the class where no frame says more
    rule: bool = True


def platform_for(host: Host) -> Any:
    """A vLLM ``Platform`` answering for ``host``: CUDA or ROCm, its GPU count, memory
    and compute capability; every other question gets the base class's answer."""
    from vllm.platforms.interface import DeviceCapability, Platform, PlatformEnum

    capability = None
    if host.capability:
        major, minor = (int(part) for part in host.capability.split("."))
        capability = DeviceCapability(major, minor)
    memory = int((host.memory_gib or 0) * (1 << 30))

    class HostStandIn(Platform):
        _enum = PlatformEnum.ROCM if host.vendor == AMD else PlatformEnum.CUDA
        device_name = "cuda"
        device_type = "cuda"
        dispatch_key = "CUDA"
        ray_device_key = "GPU"
        dist_backend = "nccl"

        @classmethod
        def device_count(cls) -> int:
            return host.count

        @classmethod
        def get_device_capability(cls, device_id: int = 0) -> Any:
            return capability

        @classmethod
        def get_device_name(cls, device_id: int = 0) -> str:
            return host.gpu or "GPU"

        @classmethod
        def get_device_total_memory(cls, device_id: int = 0) -> int:
            return memory

    return HostStandIn()


@contextlib.contextmanager
def standing_in(host: Host) -> Iterator[Any]:
    """vLLM's ``current_platform`` is the stand-in for ``host`` until the block ends:
    the platform module's own, and every loaded vLLM module's copy of the name."""
    import vllm.platforms as platforms

    stand_in = platform_for(host)
    previous = platforms._current_platform
    holders = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("vllm.")
        and module is not None
        and "current_platform" in getattr(module, "__dict__", {})
        and module.__dict__["current_platform"] is previous
        and previous is not None
    ]
    platforms._current_platform = stand_in
    for module in holders:
        setattr(module, "current_platform", stand_in)  # noqa: B010 (a name mypy cannot see)
    try:
        yield stand_in
    finally:
        platforms._current_platform = previous
        for module in holders:
            setattr(module, "current_platform", previous)  # noqa: B010 (as above)


@cache
def _parser(vendor: str) -> argparse.ArgumentParser:
    """``vllm serve``'s parser, built once per kind of platform (its defaults may ask
    the platform) while the platform stands in for a host of ``vendor``."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    for module_name in SERVE_PARSER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, "make_arg_parser"):
            parser = module.make_arg_parser(FlexibleArgumentParser(prog=PROGRAM))
            return parser
    raise ImportError(
        "the installed vLLM keeps make_arg_parser in none of " + ", ".join(SERVE_PARSER_MODULES)
    )


def parse(argv: list[str], host: Host) -> Any:
    """``vllm serve``'s engine arguments for ``argv`` (the model first, as ``vllm serve``
    takes it), parsed by the installed vLLM; raises :class:`ArgumentsRefused` with vLLM's
    own error line."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    with standing_in(host):
        parser = _parser(host.vendor)
        err, out = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                namespace = parser.parse_args(argv)
        except SystemExit as exc:
            if exc.code == 0:  # --help and the like: vLLM's, not a check
                raise ArgumentsRefused(
                    "that asks vLLM for its help, not a check: run `vllm serve --help`"
                ) from None
            raise ArgumentsRefused(
                parser_error(err.getvalue()) or f"vLLM's parser exited with {exc.code}"
            ) from None
        if getattr(namespace, "model_tag", None):
            namespace.model = namespace.model_tag
        try:
            return AsyncEngineArgs.from_cli_args(namespace)
        except Exception as exc:
            # vLLM refusing a value (its message, one line): nothing else is raised here
            raise ArgumentsRefused(_one_line(exc)) from exc


def parser_error(stderr: str) -> str:
    """vLLM's parser error as one line: from its ``error:`` line on, without the usage
    text before it or pydantic's links to its documentation."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "error:" in line), 0)
    kept = [line for line in lines[start:] if not line.startswith("For further information")]
    return " ".join(kept)


def build(engine_args: Any, host: Host, is_moe: bool) -> tuple[Any, Any] | Refusal:
    """vLLM's ``ParallelConfig`` and ``VllmConfig`` for the command on ``host``, or what
    vLLM refused.  The model's own config is not built (it would load the model's code):
    the rules that read it are the kit's checks."""
    from vllm.config import ParallelConfig, VllmConfig

    with standing_in(host):
        given = {
            f.name: getattr(engine_args, f.name)
            for f in dataclasses.fields(ParallelConfig)
            if hasattr(engine_args, f.name) and getattr(engine_args, f.name) is not None
        }
        given["is_moe_model"] = is_moe
        if host.nodes > 1:  # the node count the command's other nodes will bring
            given.setdefault("nnodes", host.nodes)
        try:
            parallel = ParallelConfig(**given)
            extra = {}
            if getattr(engine_args, "moe_backend", "auto") not in (None, "auto"):
                extra["kernel_config"] = _kernel_config(engine_args)
            # CUDA graphs are asked apart (graphs_kept); compilation's passes would
            # load compiled ops this machine may not have, and no rule here reads them
            extra["compilation_config"] = _eager()
            config = VllmConfig(parallel_config=parallel, **extra)
        except Exception as exc:  # noqa: BLE001 (vLLM's refusal is the verdict)
            return refusal(exc)
    return parallel, config


def _eager() -> Any:
    from vllm.config import CompilationConfig
    from vllm.config.compilation import CompilationMode, CUDAGraphMode, PassConfig

    return CompilationConfig(
        mode=CompilationMode.NONE,
        cudagraph_mode=CUDAGraphMode.NONE,
        # its size table imports the fusion passes, which need vLLM's compiled ops
        pass_config=PassConfig(fuse_allreduce_rms=False),
    )


def _kernel_config(engine_args: Any) -> Any:
    from vllm.config import KernelConfig

    return KernelConfig(moe_backend=engine_args.moe_backend)


def refusal(exc: BaseException) -> Refusal:
    """vLLM's error as a :class:`Refusal`: pydantic's wrapper taken off, the source the
    deepest frame inside vLLM that raised it."""
    inner: BaseException = exc
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            found = errors()[0].get("ctx", {}).get("error")
        except Exception:  # noqa: BLE001 (not pydantic's shape: keep the outer error)
            found = None
        if isinstance(found, BaseException):
            inner = found
    return Refusal(
        _one_line(inner),
        vllm_frame(inner) or f"vllm ({type(exc).__name__})",
        rule=isinstance(inner, ValueError | AssertionError),
    )


def vllm_frame(exc: BaseException) -> str:
    """``vllm/<path>:<line>`` of the deepest frame inside the vllm package, or ""."""
    import vllm

    root = Path(vllm.__file__).resolve().parent
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(root):
            found = f"vllm/{path.relative_to(root).as_posix()}:{frame.lineno}"
    return found


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text.removeprefix("Assertion failed, ") or type(exc).__name__


def graphs_kept(all2all_backend: str, data_parallel_size: int) -> bool:
    """Whether vLLM's ``CompilationConfig`` keeps CUDA graphs for this backend and DP size
    (it turns them off itself for some: DeepEP high throughput with DP > 1)."""
    from vllm.config import CompilationConfig
    from vllm.config.compilation import CompilationMode, CUDAGraphMode

    config = CompilationConfig(
        mode=CompilationMode.VLLM_COMPILE, cudagraph_mode=CUDAGraphMode.FULL_AND_PIECEWISE
    )
    config.set_splitting_ops_for_v1(
        all2all_backend=all2all_backend, data_parallel_size=data_parallel_size
    )
    return bool(config.cudagraph_mode != CUDAGraphMode.NONE)


def expert_shard_refusal(intermediate_per_rank: int, block: list[int], tp: int) -> Refusal | None:
    """What vLLM's fused-MoE fp8 block check says of an expert shard of
    ``intermediate_per_rank`` columns under MoE tensor parallelism ``tp``, or None."""
    import vllm.distributed as distributed
    from vllm.model_executor.layers.quantization.utils import fp8_utils

    from vllm_ep_kit.patches.base import swapped

    try:
        with swapped(distributed, get_tensor_model_parallel_world_size=lambda: tp):
            fp8_utils.validate_fp8_block_shape_moe(intermediate_per_rank, list(block))
    except ValueError as exc:
        return refusal(exc)
    return None


def batched_tokens(engine_args: Any, host: Host) -> int:
    """``max_num_batched_tokens`` as ``vllm serve`` sets it on ``host``: the argument, or
    vLLM's default for the host's GPU (larger on H100/H200 and 160 GiB GPUs)."""
    given = getattr(engine_args, "max_num_batched_tokens", None)
    if given:
        return int(given)
    from vllm.usage.usage_lib import UsageContext

    with standing_in(host):
        defaults, _ = type(engine_args).get_batch_defaults(
            world_size=int(engine_args.tensor_parallel_size)
            * int(engine_args.pipeline_parallel_size)
        )
    return int(defaults[UsageContext.OPENAI_API_SERVER])


# The host the per-backend rules are read for: a CUDA node of 8 GPUs (the rules read
# no more of it than that it is CUDA and has the GPUs).
RULES_HOST = Host(count=8, gpu="H100", capability="9.0", memory_gib=80)


def takes_microbatching(all2all_backend: str) -> bool | None:
    """Whether vLLM's config takes ``all2all_backend`` with ``--enable-dbo`` on a CUDA host
    (EP, DP 2); None when it refuses the backend without DBO already (passthrough)."""
    from vllm.engine.arg_utils import EngineArgs

    verdicts = []
    for dbo in (False, True):
        args = EngineArgs(
            data_parallel_size=2,
            enable_expert_parallel=True,
            all2all_backend=all2all_backend,  # type: ignore[arg-type]  # any accepted name
            enable_dbo=dbo,
        )
        verdicts.append(not isinstance(build(args, RULES_HOST, is_moe=True), Refusal))
    return verdicts[1] if verdicts[0] else None
