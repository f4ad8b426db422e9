"""``patches export``: each hotfix a vLLM source tree needs, written into it as its change.

For a tree (a git checkout, or a release's unpacked sources: a folder holding the
``vllm`` package, or its ``src/`` with ``deps/`` beside it, as ``make test-releases``
fetches them), each hotfix's probe runs against the tree's own code in a fresh
interpreter, the detection the plugin uses.  A hotfix whose bug is there has its source
edits (``Patch.source_edits``) made on the files, and the probes run again on the
edited tree: a fix that does not verify, or any edit that cannot be made, leaves every
file as it was.  ``--format patch`` makes the same change, prints it as unified diffs
and puts the files back; ``--check`` only probes.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vllm_ep_kit.harness.fresh_python import FreshPythonError, run_json
from vllm_ep_kit.patches import all_patches
from vllm_ep_kit.patches.base import Patch
from vllm_ep_kit.patches.source import CannotApply, apply

WRITTEN, PRINTED, NOT_NEEDED, NEEDED, CANNOT = (
    "needed and written",
    "needed (diff printed)",
    "not needed",
    "needed",
    "cannot apply",
)
PROBE_CODE = """
import json, sys
from vllm_ep_kit import patches
from vllm_ep_kit.patches.base import UnrecognisedShape, quiet_vllm_logs
import vllm
wanted = set(json.loads(sys.argv[1]))
seen = {"vllm_file": vllm.__file__, "patches": {}}
for patch in patches.all_patches():
    if patch.name not in wanted:
        continue
    try:
        with quiet_vllm_logs():
            present, observed = patch.probe()
        seen["patches"][patch.name] = ["present" if present else "absent", observed]
    except UnrecognisedShape as exc:
        seen["patches"][patch.name] = ["unrecognised", str(exc)]
    except Exception as exc:
        seen["patches"][patch.name] = ["unrecognised", f"{type(exc).__name__}: {exc}"]
print(json.dumps(seen))
"""


class NotATree(ValueError):
    """The folder holds no vLLM package Python can import and probe (one line)."""


def _last_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


@dataclass(frozen=True)
class Tree:
    root: Path  # the folder holding the vllm package
    deps: Path | None  # a release's extra packages, put after it on the path

    @classmethod
    def find(cls, folder: str | Path) -> Tree:
        base = Path(folder)
        for root in (base, base / "src"):
            if (root / "vllm" / "__init__.py").is_file():
                deps = base / "deps"
                return cls(root, deps if deps.is_dir() else None)
        raise NotATree(f"{folder} holds no vllm package (looked in it and in its src/)")

    def python_path(self) -> list[str]:
        return [str(self.root)] + ([str(self.deps)] if self.deps else [])


@dataclass
class Row:
    patch: str
    status: str
    why: str
    upstream: str
    removable: str
    files: list[str]


def row_line(row: dict) -> str:
    """One report row (a :class:`Row` as data) as the line the command prints."""
    files = f" [{', '.join(row['files'])}]" if row["files"] else ""
    return f"{row['patch']}: {row['status']}{files}: {row['why']}"


def probe(tree: Tree, patches: list[Patch]) -> dict[str, tuple[str, str]]:
    """Each patch's verdict on the tree's code: (present | absent | unrecognised, detail)."""
    names = json.dumps([p.name for p in patches])
    seen = run_json(
        f"import sys; sys.argv = ['probe', {names!r}]\n{PROBE_CODE}",
        python_path=tree.python_path(),
        env={"VLLM_EP_KIT_PATCHES_DISABLE": "all"},
    )
    vllm_file = Path(seen["vllm_file"]).resolve()
    if not vllm_file.is_relative_to(tree.root.resolve()):
        raise NotATree(f"{tree.root}'s vllm package is not the one Python imports ({vllm_file})")
    return {name: (verdict[0], verdict[1]) for name, verdict in seen["patches"].items()}


def edited(tree: Tree, patch: Patch, texts: dict[Path, str]) -> dict[Path, str]:
    """``texts`` (the files as edited so far) with ``patch``'s edits made too."""
    result = dict(texts)
    for edit in patch.source_edits:
        path = edit.path_in(tree.root)
        where = str(path.relative_to(tree.root))
        result[path] = apply(result.get(path, path.read_text(encoding="utf-8")), edit, where)
    return result


def export(folder: str | Path, fmt: str = "write", check: bool = False) -> dict:
    """Probe, edit, verify: the report as data (rows, and the diffs for ``fmt="patch"``)."""
    tree = Tree.find(folder)
    patches = all_patches()
    try:
        before = probe(tree, patches)
    except FreshPythonError as exc:
        raise NotATree(f"{tree.root}'s vllm package does not import: {_last_line(exc)}") from exc
    rows: dict[str, Row] = {}
    texts: dict[Path, str] = {}
    for patch in patches:
        verdict, detail = before[patch.name]
        row = Row(patch.name, NOT_NEEDED, detail, patch.upstream, patch.removable, [])
        rows[patch.name] = row
        if verdict == "unrecognised":
            row.status, row.why = CANNOT, f"the probe does not know this code: {detail}"
        elif verdict == "present" and check:
            row.status = NEEDED
        elif verdict == "present" and not patch.source_edits:
            row.status, row.why = CANNOT, "this hotfix has no source change"
        elif verdict == "present":
            try:
                texts = edited(tree, patch, texts)
            except CannotApply as exc:
                row.status, row.why = CANNOT, str(exc)
                continue
            row.status = WRITTEN if fmt == "write" else PRINTED
            row.files = sorted(
                {str(e.path_in(tree.root).relative_to(tree.root)) for e in patch.source_edits}
            )
    diffs = _write_and_verify(tree, patches, rows, texts, keep=fmt == "write")
    return {
        "tree": str(tree.root),
        "rows": [asdict(r) for r in rows.values()],
        "diffs": diffs if fmt == "patch" else [],
    }


def _write_and_verify(
    tree: Tree, patches: list[Patch], rows: dict[str, Row], texts: dict[Path, str], keep: bool
) -> list[dict]:
    """Write ``texts``, re-probe the patches that wrote, and put every file back unless
    all verified and ``keep``.  The diffs, one per file, named by the upstream changes."""
    if not texts:
        return []
    originals = {path: path.read_text(encoding="utf-8") for path in texts}
    written = [p for p in patches if rows[p.name].status in (WRITTEN, PRINTED)]
    restore = True
    try:
        for path, text in texts.items():
            path.write_text(text, encoding="utf-8")
        try:
            after = probe(tree, written)
        except FreshPythonError as exc:
            after = {
                p.name: ("unrecognised", f"the edited tree does not import: {exc}") for p in written
            }
        failed = {name: v for name, v in after.items() if v[0] != "absent"}
        for name, (verdict, detail) in failed.items():
            rows[name].status, rows[name].why = (
                CANNOT,
                f"the fix did not verify ({verdict}: {detail})",
            )
        if failed:
            for patch in written:
                if patch.name not in failed:
                    rows[patch.name].status = CANNOT
                    rows[patch.name].why = "not written: another fix in the same run did not verify"
        else:
            for patch in written:
                rows[patch.name].why = f"fixed; the probe now says: {after[patch.name][1]}"
        restore = bool(failed) or not keep
    finally:
        if restore:
            for path, text in originals.items():
                path.write_text(text, encoding="utf-8")
    return [
        _diff(
            tree, path, originals[path], texts[path], [p for p in written if _edits(p, tree, path)]
        )
        for path in sorted(texts)
    ]


def _edits(patch: Patch, tree: Tree, path: Path) -> bool:
    return any(e.path_in(tree.root) == path for e in patch.source_edits)


def _diff(tree: Tree, path: Path, old: str, new: str, patches: list[Patch]) -> dict:
    relative = str(path.relative_to(tree.root))
    header = "".join(f"# {p.upstream}: {p.summary} ({p.name})\n" for p in patches)
    body = "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            f"a/{relative}",
            f"b/{relative}",
        )
    )
    return {"file": relative, "text": header + body}
