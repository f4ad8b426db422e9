"""What preflight reads of the model: its ``config.json``, from a folder or the local HF cache.

Never downloads: a model neither on disk nor in the Hugging Face cache is reported as
not read, and the checks that need it say so.  Only the fields the checks use are
kept (MoE shape, dtype, quantisation); a multimodal model's language part is read
from its ``text_config``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the names models give their routed-expert count and top-k, in the order looked up
EXPERT_COUNT_KEYS = ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")
TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "num_activated_experts", "top_k")


class ModelFolderError(ValueError):
    """A local model folder preflight cannot read (one line; a usage error)."""


@dataclass(frozen=True)
class ModelFacts:
    where: str  # the config.json read
    architectures: tuple[str, ...] = ()
    hidden_size: int | None = None
    num_experts: int | None = None
    top_k: int | None = None
    num_layers: int | None = None
    dtype: str | None = None  # the checkpoint's (torch_dtype / dtype)
    quantization: str | None = None  # quantization_config.quant_method
    quant_format: str | None = None  # what its activations are: fp8-block, fp8, nvfp4, ...
    expert_intermediate: int | None = None  # one expert's FFN width (moe_intermediate_size)
    weight_block: tuple[int, ...] | None = None  # fp8 block quantisation's [n, k]

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts and self.num_experts > 1)


def read(model: str, revision: str | None = None) -> ModelFacts | str:
    """The facts of ``model`` (a folder or a Hugging Face id), or why they were not read."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            raise ModelFolderError(f"model folder {model} has no config.json")
        return facts(_load(config), str(config))
    if folder.exists():
        return f"{model} is a file, not a model folder: not read"
    cached = _from_hf_cache(model, revision)
    if not cached:
        return (
            f"{model}: no config.json on disk or in the local Hugging Face cache (never downloaded)"
        )
    return facts(_load(Path(cached)), cached)


def _from_hf_cache(repo_id: str, revision: str | None) -> str:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return ""
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 (not a repository id: nothing cached under it)
        return ""
    return found if isinstance(found, str) else ""


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{path}: not a readable JSON config ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: a model config is a JSON object")
    return data


def facts(config: dict[str, Any], where: str) -> ModelFacts:
    """The fields the checks read, from a model's ``config.json`` mapping."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else None
    layer = text if text and "hidden_size" in text else config
    quant = config.get("quantization_config") or (text or {}).get("quantization_config")
    if not isinstance(quant, dict):
        quant = None
    method = str(quant.get("quant_method", "")).lower() or None if quant else None
    return ModelFacts(
        where=where,
        architectures=tuple(config.get("architectures") or ()),
        hidden_size=_int(layer.get("hidden_size")),
        num_experts=_first_int(layer, EXPERT_COUNT_KEYS),
        top_k=_first_int(layer, TOP_K_KEYS),
        num_layers=_int(layer.get("num_hidden_layers")),
        dtype=_dtype(layer.get("torch_dtype") or layer.get("dtype") or config.get("torch_dtype")),
        quantization=method,
        quant_format=quant_format(quant) if quant else None,
        expert_intermediate=_int(layer.get("moe_intermediate_size"))
        or _int(layer.get("intermediate_size")),
        weight_block=_block(quant),
    )


def _block(quant: dict[str, Any] | None) -> tuple[int, ...] | None:
    block = (quant or {}).get("weight_block_size")
    if isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) for b in block):
        return tuple(block)
    return None


def quant_format(quant: dict[str, Any]) -> str | None:
    """What a quantised checkpoint's MoE activations are, as the all-to-all sees them:
    "fp8-block" (1x128 scales, DeepSeek style), "fp8", "nvfp4", "mxfp4", or None for
    weight-only schemes (AWQ, GPTQ: bf16 activations)."""
    method = str(quant.get("quant_method", "")).lower()
    algo = str(quant.get("quant_algo", "")).lower()
    if method in ("fp8", "fbgemm_fp8"):
        return "fp8-block" if quant.get("weight_block_size") else "fp8"
    if method in ("modelopt_fp4", "nvfp4") or algo == "nvfp4":
        return "nvfp4"
    if method == "modelopt":
        return "fp8" if algo.startswith("fp8") else algo or None
    if method in ("mxfp4", "quark"):
        return "mxfp4"
    if method == "compressed-tensors":
        return _compressed_tensors_format(quant)
    return None


def _compressed_tensors_format(quant: dict[str, Any]) -> str | None:
    groups = quant.get("config_groups") or {}
    for group in groups.values() if isinstance(groups, dict) else ():
        acts = group.get("input_activations") if isinstance(group, dict) else None
        if not isinstance(acts, dict):
            continue
        kind, bits = str(acts.get("type", "")), acts.get("num_bits")
        if kind == "float" and bits == 8:
            return "fp8-block" if acts.get("strategy") == "group" else "fp8"
        if kind == "float" and bits == 4:
            return "nvfp4"
    return None


def _dtype(value: Any) -> str | None:
    return str(value).removeprefix("torch.") if value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _first_int(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        found = _int(config.get(key))
        if found is not None:
            return found
    return None
