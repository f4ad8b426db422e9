"""Which distributions an import *needs* on a target that has only some of them.

Tracing ``sys.modules`` after an import over-counts: libraries import optional
packages when they happen to be installed (torch._dynamo loads pandas and
scikit-learn, transformers loads scipy), and the target will simply not have
them.  So we simulate the target instead: a folder of symlinks exposing only
the distributions it has (plus those found necessary so far), a fresh
interpreter that sees only that folder, and one more distribution added per
``ModuleNotFoundError`` until the import succeeds.  What code tolerates missing
stays missing; what it cannot do without is found, with the importer recorded.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

PROBE = r"""
import importlib, importlib.metadata as md, json, re, sys, traceback, types
for name in STUBS:
    sys.modules[name] = types.ModuleType(name)
try:
    for name in MODULES:
        importlib.import_module(name)
except ModuleNotFoundError as exc:
    missing = exc.name or "unnamed:" + str(exc)
    if isinstance(exc, md.PackageNotFoundError):  # a version check on distribution metadata
        quoted = re.findall(r"'([A-Za-z0-9_.-]+)", str(exc))
        missing = "dist:" + (quoted[0] if quoted else str(exc.args[0]))
    frames = [f"{f.filename}:{f.lineno}" for f in traceback.extract_tb(exc.__traceback__)
              if "<frozen" not in f.filename]
    print(json.dumps({"missing": missing, "importer": frames[-1:] }))
    raise SystemExit(0)
tops = {n.split(".")[0] for n in sys.modules}
print(json.dumps({"ok": True, "tops": sorted(tops)}))
"""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Closure:
    """The result: distributions to ship, and why each one is needed."""

    needed: dict[str, str] = field(default_factory=dict)  # name -> version
    reasons: dict[str, str] = field(default_factory=dict)  # name -> missing module, importer
    rounds: int = 0


class SiteIndex:
    """Every installed distribution's top-level paths, to build partial sites from."""

    def __init__(self, paths: list[str] | None = None) -> None:
        self.owners: dict[PurePosixPath, set[str]] = {}
        self.versions: dict[str, str] = {}
        self.roots: dict[str, Path] = {}
        for dist in md.distributions(path=paths) if paths else md.distributions():
            name = normalise(dist.metadata["Name"] or "")
            if not name or name in self.versions or not dist.files:
                continue
            self.versions[name] = dist.version
            self.roots[name] = Path(str(dist.locate_file("")))
            for entry in dist.files:
                parts = PurePosixPath(entry).parts
                if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
                    continue
                for depth in range(1, len(parts) + 1):
                    self.owners.setdefault(PurePosixPath(*parts[:depth]), set()).add(name)

    def owner_of_module(self, module: str) -> str | None:
        if module.startswith("unnamed:"):
            return None
        if module.startswith("dist:"):
            name = normalise(module[5:])
            return name if name in self.versions else None
        top = module.split(".")[0]
        for candidate in (PurePosixPath(top), PurePosixPath(top + ".py")):
            owners = self.owners.get(candidate)
            if owners:
                return sorted(owners)[0]
        for path, owners in self.owners.items():  # compiled top-level modules
            if len(path.parts) == 1 and path.name.startswith(top + ".") and path.suffix == ".so":
                return sorted(owners)[0]
        return None

    def link_site(self, folder: Path, allowed: set[str]) -> None:
        """Symlink the paths of ``allowed`` distributions into ``folder``.

        A path owned only by allowed distributions is linked whole; a shared
        folder (``nvidia/``, ``cuda/``) is created and its children decided
        one level down.
        """

        def visit(path: PurePosixPath) -> None:
            owners = self.owners[path]
            if not owners & allowed:
                return
            target = folder / path
            if owners <= allowed:
                root = self.roots[sorted(owners)[0]]
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    os.symlink(root / path, target)
                return
            target.mkdir(parents=True, exist_ok=True)
            for child in self.owners:
                if child.parent == path and child != path:
                    visit(child)

        for path in [p for p in self.owners if len(p.parts) == 1]:
            visit(path)


def with_requirements(names: set[str], paths: list[str] | None = None) -> set[str]:
    """``names`` plus what they require (transitively, unconditional requirements only).

    A target that has torch installed by pip has sympy, networkx, ... too.
    """
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found = list(md.distributions(name=name, path=paths)) if paths else []
        try:
            requires = (found[0].requires if found else md.requires(name)) or []
        except md.PackageNotFoundError:
            continue
        for req in requires:
            if ";" in req and "extra ==" in req.split(";", 1)[1]:
                continue
            todo.append(normalise(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]))
    return seen


def minimal_distributions(
    modules: tuple[str, ...],
    have: set[str],
    always: AbstractSet[str] = frozenset(),
    extra_path: tuple[str, ...] = (),
    stubs: tuple[str, ...] = (),
    max_rounds: int = 80,
    progress=lambda message: None,
    site_paths: list[str] | None = None,
    skip: AbstractSet[str] = frozenset(),
) -> Closure:
    """Distributions beyond ``have`` that importing ``modules`` cannot do without.

    ``always`` are present on the target in another form (shipped as sources);
    ``stubs`` are module names replaced by empty modules (compiled kernels not
    shipped); ``extra_path`` goes first on the interpreter's path (this checkout);
    ``site_paths`` replaces this interpreter's site-packages as the source;
    ``skip`` are absent on the target and must not be shipped: an error if needed.
    """
    index = SiteIndex(site_paths)
    skip = {normalise(n) for n in skip}
    present = (
        (
            with_requirements({normalise(n) for n in have}, site_paths)
            | {normalise(n) for n in always}
        )
        - skip
    ) & set(index.versions)
    closure = Closure()
    pruned = False
    code = PROBE.replace("STUBS", repr(list(stubs))).replace("MODULES", repr(list(modules)))
    while closure.rounds < max_rounds:
        closure.rounds += 1
        with tempfile.TemporaryDirectory(prefix="vllm-ep-kit-site-") as tmp:
            index.link_site(Path(tmp), present | set(closure.needed))
            boot = f"import sys; sys.path[:0] = {[*extra_path, tmp]!r}\n"
            result = subprocess.run(
                [sys.executable, "-S", "-E", "-c", boot + code],
                capture_output=True,
                text=True,
                timeout=600,
            )
        lines = result.stdout.strip().splitlines()
        if result.returncode or not lines:
            raise RuntimeError(
                f"import probe failed (exit {result.returncode}): {result.stderr[-2000:]}"
            )
        outcome = json.loads(lines[-1])
        if outcome.get("ok"):
            imported = {index.owner_of_module(top) for top in outcome["tops"]}
            unused = [
                name
                for name, why in closure.reasons.items()
                if why.startswith("required by") and name not in imported
            ]
            if pruned or not unused:
                return closure
            # Declared but never imported: drop them once; the loop re-adds any that
            # turn out to be needed after all (e.g. for a version check).
            pruned = True
            for name in unused:
                del closure.needed[name], closure.reasons[name]
            progress(
                f"import closure: - {len(unused)} declared but not imported: "
                f"{', '.join(sorted(unused))}"
            )
            continue
        missing = outcome["missing"]
        owner = index.owner_of_module(missing)
        if owner in skip:
            raise RuntimeError(
                f"{owner} is needed ({missing} imported at "
                f"{', '.join(outcome['importer'])}) but is skipped"
            )
        if owner is None or owner in present or owner in closure.needed:
            raise RuntimeError(
                f"{missing!r} is imported ({outcome['importer']}) but no "
                "installed distribution provides it here"
            )
        # The owner and what it declares it requires (pip would install those too).
        extra = {owner} if pruned else with_requirements({owner}, site_paths)
        for name in sorted((extra - skip) & set(index.versions)):
            if name in present or name in closure.needed:
                continue
            closure.needed[name] = index.versions[name]
            closure.reasons[name] = (
                f"{missing} (imported at {', '.join(outcome['importer'])})"
                if name == owner
                else f"required by {owner}"
            )
            progress(f"import closure: + {name}=={index.versions[name]} ({closure.reasons[name]})")
    raise RuntimeError(f"import closure did not converge in {max_rounds} rounds")
