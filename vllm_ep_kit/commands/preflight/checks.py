"""Each check of a serve command: a verdict, why, and where that knowledge comes from.

A check says "will fail" only on what it knows for this host; what it cannot know (a
field the host file leaves out, a model config not on disk) makes it "risky" with
the reason, never a guess either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vllm_ep_kit.backends.spec import Backend
from vllm_ep_kit.commands.preflight import vllm_side
from vllm_ep_kit.commands.preflight.host import AMD, Host
from vllm_ep_kit.commands.preflight.model import ModelFacts

OK, RISKY, WILL_FAIL = "ok", "risky", "will fail"
ORDER = (OK, RISKY, WILL_FAIL)


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str
    reason: str
    source: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def worst(checks: list[Check]) -> str:
    return max((c.verdict for c in checks), key=ORDER.index, default=OK)


@dataclass(frozen=True)
class Command:
    """The serve command as the checks read it (from vLLM's parsed engine arguments)."""

    backend: str  # the --all2all-backend vLLM builds (fallbacks and aliases resolved)
    given_backend: str  # as given (or vLLM's default)
    tensor_parallel: int
    data_parallel: int
    pipeline_parallel: int
    data_parallel_local: int | None
    nnodes: int
    expert_parallel: bool
    elastic_ep: bool
    enforce_eager: bool
    dbo: bool
    quantization: str | None  # --quantization (None: not given)
    dtype: str  # --dtype ("auto": the checkpoint's)

    @classmethod
    def from_engine_args(cls, args: Any, runs_as: str) -> Command:
        return cls(
            backend=runs_as,
            given_backend=str(args.all2all_backend),
            tensor_parallel=int(args.tensor_parallel_size),
            data_parallel=int(args.data_parallel_size),
            pipeline_parallel=int(args.pipeline_parallel_size),
            data_parallel_local=args.data_parallel_size_local,
            nnodes=int(getattr(args, "nnodes", 1) or 1),
            expert_parallel=bool(args.enable_expert_parallel),
            elastic_ep=bool(getattr(args, "enable_elastic_ep", False)),
            enforce_eager=bool(args.enforce_eager),
            dbo=bool(getattr(args, "enable_dbo", False)),
            quantization=None if args.quantization in (None, "None") else args.quantization,
            dtype=str(args.dtype),
        )

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def ep_size(self) -> int:
        return self.tensor_parallel * self.data_parallel if self.expert_parallel else 1

    def gpus_per_node(self) -> int:
        """The GPUs this command's ranks take on one node."""
        if self.data_parallel_local is not None:
            return self.world_size * self.data_parallel_local
        if self.nnodes > 1:  # the ranks spread over --nnodes nodes
            whole = self.world_size * self.data_parallel
            return -(-whole // self.nnodes)
        return self.world_size * self.data_parallel


def activation_format(command: Command, model: ModelFacts | None) -> str | None:
    """What the MoE activations are, as the all-to-all moves them; None: not known."""
    if command.quantization in ("fp8", "ptpc_fp8"):
        return "fp8"  # online fp8: per-tensor (or per-token) scales
    if command.quantization is not None:
        return model.quant_format if model and model.quant_format else None
    if model is None:
        return None
    # unquantised, or a weight-only scheme: activations in the model's dtype
    return model.quant_format or _float_format(command.dtype, model.dtype)


def _float_format(dtype: str, checkpoint: str | None) -> str:
    chosen = checkpoint if dtype == "auto" else dtype
    return {"float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}.get(
        chosen or "bfloat16", "bf16"
    )


def layout(command: Command, host: Host) -> Check:
    need = command.gpus_per_node()
    shape = (
        f"TP {command.tensor_parallel} x PP {command.pipeline_parallel} x DP "
        f"{command.data_parallel}"
        + (f" ({command.data_parallel_local} on this node)" if command.data_parallel_local else "")
    )
    if host.count == 0:
        return Check("layout", WILL_FAIL, f"{shape} needs GPUs; {host.source} has none")
    if need > host.count:
        return Check(
            "layout",
            WILL_FAIL,
            f"{shape} puts {need} ranks on a node of {host.count} GPUs ({host.source})",
            "vllm/v1/engine/utils.py (each DP engine takes TP x PP devices of its node)",
        )
    total = command.world_size * command.data_parallel
    if total > host.count * max(host.nodes, command.nnodes):
        return Check(
            "layout",
            WILL_FAIL,
            f"{shape} needs {total} GPUs; {host.describe()}",
        )
    ep = f"; EP group of {command.ep_size}" if command.expert_parallel else ""
    return Check("layout", OK, f"{shape}: {need} of {host.count} GPUs per node{ep}")


def expert_parallel(command: Command, model: ModelFacts | None, uses_all2all: bool) -> Check:
    if model is not None and not model.is_moe:
        if command.expert_parallel:
            return Check(
                "expert parallel", RISKY, "the model has no routed experts: EP settings unused"
            )
        return Check("expert parallel", OK, "not an MoE model")
    if not command.expert_parallel:
        why = "experts are sharded by TP, no all-to-all"
        if command.given_backend != "allgather_reducescatter":
            return Check(
                "expert parallel",
                RISKY,
                f"--all2all-backend {command.given_backend} is unused without "
                "--enable-expert-parallel: " + why,
            )
        return Check("expert parallel", OK, why)
    if not uses_all2all:
        return Check(
            "expert parallel",
            OK,
            f"EP over {command.ep_size} ranks without DP: vLLM builds no all-to-all",
            "vllm/config/parallel.py (ParallelConfig.use_all2all)",
        )
    return Check("expert parallel", OK, f"EP over {command.ep_size} ranks with all-to-all")


def backend_needs(backend: Backend, command: Command, host: Host) -> Check:
    """The backend's needs (registry) against the host."""
    needs, name = backend.needs, backend.name
    where = backend.source
    if needs.rocm and host.vendor != AMD:
        return Check("backend", WILL_FAIL, f"{name} runs on AMD GPUs under ROCm only", where)
    if needs.nvlink and host.vendor == AMD:
        return Check("backend", WILL_FAIL, f"{name} needs NVIDIA NVLink", where)
    risky: list[str] = []
    for module in needs.modules:
        has = host.has_package(module)
        if has is False:
            return Check(
                "backend",
                WILL_FAIL,
                f"{name} needs {module.split('.')[0]}, not installed on {host.source}",
                where,
            )
        if has is None:
            risky.append(f"whether {module.split('.')[0]} is installed there")
    if needs.nvlink:
        if host.nvlink is False:
            return Check("backend", WILL_FAIL, f"{name} needs NVLink between the GPUs", where)
        if host.nvlink is None and command.ep_size > 1:
            risky.append("whether the GPUs share NVLink")
    if needs.multicast:
        if host.multicast is False:
            return Check(
                "backend",
                WILL_FAIL,
                f"{name} needs NVSwitch multicast (vLLM: 'MoonEP requires NVSwitch multicast "
                "(SHARP) support')",
                where,
            )
        if host.multicast is None:
            risky.append("whether the GPUs have NVSwitch multicast")
    if needs.nccl:
        if host.nccl and _release(host.nccl) < _release(needs.nccl):
            return Check(
                "backend",
                WILL_FAIL,
                f"{name} needs NCCL >= {needs.nccl}; {host.source} has {host.nccl}",
                where,
            )
        if not host.nccl:
            risky.append(f"whether NCCL is >= {needs.nccl}")
    if risky:
        return Check("backend", RISKY, f"{name}: not known " + ", ".join(risky), where)
    return Check("backend", OK, f"{name}: what it needs is there ({needs.describe()})", where)


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def formats(backend: Backend, command: Command, model: ModelFacts | None, fmt: str | None) -> Check:
    """The MoE activations against what vLLM moves through the backend."""
    name = backend.name
    quantized = bool(command.quantization or (model and model.quantization))
    if "quantized" in backend.refuses and quantized:
        method = command.quantization or (model.quantization if model else "")
        return Check(
            "quantisation",
            WILL_FAIL,
            f"{name} takes unquantised models only; this one is {method}",
            backend.formats_source,
        )
    if fmt is None:
        if backend.refuses:
            return Check(
                "quantisation",
                RISKY,
                f"the model's activation format is not known; {name} refuses "
                + ", ".join(backend.refuses),
                backend.formats_source,
            )
        return Check("quantisation", OK, f"{name} takes any activation format")
    if fmt in backend.refuses:
        return Check(
            "quantisation",
            WILL_FAIL,
            f"{name} cannot dispatch {fmt} activations (it takes "
            + ", ".join(backend.formats)
            + ")",
            backend.formats_source,
        )
    how = "as they are" if fmt in backend.formats else "in bf16, quantised after the dispatch"
    return Check("quantisation", OK, f"{fmt} activations go through {name} {how}")


def graphs(backend: Backend, command: Command, kept: bool) -> Check:
    if command.enforce_eager:
        return Check("cuda graphs", OK, "--enforce-eager: no CUDA graphs asked for")
    if backend.graphs:
        return Check("cuda graphs", RISKY, backend.graphs, backend.formats_source)
    if not kept:
        return Check(
            "cuda graphs",
            RISKY,
            f"vLLM turns CUDA graphs off for {backend.name} with DP {command.data_parallel}: "
            "every step runs eager (decode is slower)",
            "vllm/config/compilation.py (CompilationConfig.set_splitting_ops_for_v1)",
        )
    return Check("cuda graphs", OK, f"vLLM keeps CUDA graphs with {backend.name}")


def moe_tensor_parallel(command: Command) -> int:
    """How many ranks split each expert: one with EP (experts whole, spread over TP x DP),
    else TP x DP (vLLM's fused MoE flattens DP into its TP)."""
    return 1 if command.expert_parallel else command.tensor_parallel * command.data_parallel


def expert_shards(command: Command, model: ModelFacts | None) -> Check | None:
    """vLLM's own fp8 block rule for the experts' shards (None: not a block-fp8 MoE)."""
    if model is None or not model.is_moe or model.quant_format != "fp8-block":
        return None
    if not model.weight_block or not model.expert_intermediate:
        return None
    tp = moe_tensor_parallel(command)
    per_rank = model.expert_intermediate // tp
    refused = vllm_side.expert_shard_refusal(per_rank, list(model.weight_block), tp)
    split = "whole (EP)" if tp == 1 else f"split {tp} ways"
    if refused is not None:
        return Check(
            "expert shards",
            WILL_FAIL,
            f"experts {split}: {refused.message}"
            + ("" if command.expert_parallel else " (--enable-expert-parallel keeps them whole)"),
            refused.source,
        )
    return Check(
        "expert shards",
        OK,
        f"experts {split}: {per_rank} columns per rank fit fp8 blocks of {list(model.weight_block)}",
    )
