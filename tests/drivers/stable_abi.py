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
  error names the first missing symbol (:func:`try_load`).
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


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.drivers.stable_abi dump OUT_DIR [SO...]`` | ``check FILE...``.

    ``dump`` writes symbol lists (default: the installed vLLM's extensions);
    ``check`` takes extensions or symbol lists and prints one JSON verdict each.
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
    args = parser.parse_args(argv)
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
