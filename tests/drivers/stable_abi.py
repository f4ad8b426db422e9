"""Do vLLM's compiled extensions load with the torch installed here?

vLLM's release wheels build their kernels against libtorch's stable ABI
(``aoti_torch_*`` / ``torch_*`` C functions) of the torch they pin.  A host
with an older torch (our H200 hosts have 2.11 while vLLM 0.32.0 pins 2.13)
loads such an extension only if every one of those functions exists in its
libtorch.  This module answers that two ways:

* statically: the extension's undefined torch C symbols, minus those the
  local torch libraries define (works on a machine without the extension's
  GPU, and from a symbol list made elsewhere: :func:`write_symbol_list`);
* dynamically: ``torch.ops.load_library`` in a fresh interpreter, whose
  error names the first missing symbol (:func:`try_load`);
* on a GPU host: each library loaded into this process's torch, one of its kernels
  run against torch (:func:`run_library`, the ``run`` command).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# The C entry points of libtorch's stable ABI (torch/csrc/stable, AOTInductor's shim).
STABLE_PREFIXES = ("aoti_torch_", "torch_")


def _dynamic_symbols(path: Path, defined: bool) -> set[str]:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with open(path, "rb") as handle:
        table = ELFFile(handle).get_section_by_name(".dynsym")
        if not isinstance(table, SymbolTableSection):  # None: no dynamic symbols
            return set()
        names = set()
        for sym in table.iter_symbols():
            if not sym.name or sym["st_info"]["bind"] == "STB_LOCAL":
                continue
            if (sym["st_shndx"] != "SHN_UNDEF") == defined:
                names.add(sym.name)
        return names


def stable_abi_imports(extension: Path) -> set[str]:
    """The stable-ABI functions ``extension`` needs from libtorch."""
    return {s for s in _dynamic_symbols(extension, defined=False) if s.startswith(STABLE_PREFIXES)}


def torch_library_dir() -> Path:
    import torch

    return Path(torch.__file__).parent / "lib"


def torch_exports(lib_dir: Path | None = None) -> set[str]:
    """Every symbol the torch libraries here define."""
    names: set[str] = set()
    for lib in sorted((lib_dir or torch_library_dir()).glob("libtorch*.so*")):
        names |= _dynamic_symbols(lib, defined=True)
    return names


@dataclass
class ExtensionVerdict:
    extension: str
    needs: int  # stable-ABI functions it imports
    missing: list[str]  # of those, absent from this torch
    load_error: str | None = None  # from try_load, when it was attempted

    @property
    def loads(self) -> bool:
        return not self.missing and self.load_error is None

    def as_dict(self) -> dict:
        return {**asdict(self), "loads": self.loads}


def write_symbol_list(extension: Path, out: Path) -> Path:
    """Save the imports of ``extension`` as JSON, to check on a host without the file."""
    out.write_text(
        json.dumps(
            {"extension": extension.name, "imports": sorted(stable_abi_imports(extension))},
            indent=0,
        )
    )
    return out


def check_imports(name: str, imports: set[str], exports: set[str]) -> ExtensionVerdict:
    return ExtensionVerdict(extension=name, needs=len(imports), missing=sorted(imports - exports))


def check_extension(
    extension: Path, exports: set[str] | None = None, load: bool = False
) -> ExtensionVerdict:
    verdict = check_imports(
        extension.name,
        stable_abi_imports(extension),
        torch_exports() if exports is None else exports,
    )
    if load:
        verdict.load_error = try_load(extension)
    return verdict


def check_symbol_list(path: Path, exports: set[str] | None = None) -> ExtensionVerdict:
    data = json.loads(path.read_text())
    return check_imports(
        data["extension"], set(data["imports"]), torch_exports() if exports is None else exports
    )


def try_load(extension: Path, timeout_s: float = 120) -> str | None:
    """Load with torch in a fresh interpreter: None, or the loader's last error line.

    ``dlopen`` with immediate binding first (its error names the missing
    symbol; torch's wrapper hides it), then ``torch.ops.load_library``.
    """
    code = (
        "import ctypes, os, sys, torch; ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW); "
        "torch.ops.load_library(sys.argv[1])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(extension)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def vllm_extensions() -> list[Path]:
    """The installed vLLM's stable-ABI extensions (empty when vLLM ships none here)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(root.glob("*stable_libtorch*.so"))


def _registered_ops(namespace: str) -> list[str]:
    import torch

    return sorted(
        n for n in torch._C._dispatch_get_all_op_names() if n.startswith(namespace + "::")
    )


def _run_topk_softmax() -> dict[str, object]:
    """vLLM's fused router top-k vs softmax + topk in fp32."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(64, 16, device="cuda", generator=gen)
    k = 4
    weights = torch.empty(64, k, device="cuda")
    ids = torch.empty(64, k, dtype=torch.int32, device="cuda")
    token_expert = torch.empty(64, k, dtype=torch.int32, device="cuda")
    torch.ops._moe_C.topk_softmax(weights, ids, token_expert, logits, False, None, None)
    want_w, want_ids = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    return {
        "op": "_moe_C.topk_softmax",
        "ids_equal": bool(torch.equal(ids.long(), want_ids)),
        "max_weight_error": float((weights - want_w).abs().max()),
    }


def _run_silu_and_mul() -> dict[str, object]:
    """vLLM's fused SiLU-and-multiply (the MoE experts' activation) vs torch in bf16."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 2 * 512, device="cuda", generator=gen).bfloat16()
    out = torch.empty(64, 512, device="cuda", dtype=torch.bfloat16)
    torch.ops._C.silu_and_mul(out, x)
    want = torch.nn.functional.silu(x[:, :512].float()) * x[:, 512:].float()
    return {"op": "_C.silu_and_mul", "max_error": float((out.float() - want).abs().max())}


KERNEL_RUNS = {"_moe_C": _run_topk_softmax, "_C": _run_silu_and_mul}


def run_library(path: Path) -> dict[str, object]:
    """Load ``path`` into this process's torch (dlopen with immediate binding first, whose
    error names a missing symbol), list the ops it registered and, on a GPU, run one of its
    kernels against torch.  Every failure is part of the answer, as data."""
    import ctypes
    import os

    import torch

    row: dict[str, object] = {
        "library": path.name,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        ctypes.CDLL(str(path), mode=os.RTLD_NOW)
        torch.ops.load_library(str(path))
        namespace = path.name.split("_stable_libtorch")[0]
        row["ops"] = _registered_ops(namespace)
        if namespace in KERNEL_RUNS and torch.cuda.is_available():
            row["kernel"] = KERNEL_RUNS[namespace]()
        row["loaded"] = True
    except Exception as exc:  # noqa: BLE001 (every failure is the answer, reported as data)
        row["loaded"] = row.get("ops") is not None
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.drivers.stable_abi dump OUT_DIR [SO...]`` | ``check FILE...``.

    ``dump`` writes symbol lists (default: the installed vLLM's extensions);
    ``check`` takes extensions or symbol lists and prints one JSON verdict each;
    ``run SO...`` loads each library here and runs one of its kernels (a JSON row each).
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.drivers.stable_abi")
    sub = parser.add_subparsers(dest="cmd", required=True)
    dump = sub.add_parser("dump")
    dump.add_argument("out_dir", type=Path)
    dump.add_argument("extensions", type=Path, nargs="*")
    check = sub.add_parser("check")
    check.add_argument("files", type=Path, nargs="+")
    check.add_argument("--load", action="store_true", help="also load .so files with torch")
    run = sub.add_parser("run")
    run.add_argument("libraries", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        rows = [run_library(path) for path in args.libraries]
        for row in rows:
            print(json.dumps(row))
        return 0 if all("error" not in row for row in rows) else 1
    if args.cmd == "dump":
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for ext in args.extensions or vllm_extensions():
            print(write_symbol_list(ext, args.out_dir / f"{ext.name}.imports.json"))
        return 0
    exports = torch_exports()
    failed = 0
    for path in args.files:
        if not path.is_file():
            parser.error(f"check: {path} is not a file")
        verdict = (
            check_symbol_list(path, exports)
            if path.suffix == ".json"
            else check_extension(path, exports, load=args.load)
        )
        failed += not verdict.loads
        print(json.dumps(verdict.as_dict()))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
