"""The steps of a repository's CI, read as vLLM's pipeline generator reads them.

One walk of the tree: the YAML files under every ``job_dirs`` folder that hold
``steps``; each step (and each ``mirror:`` block, a step of its own on other
hardware) becomes a :class:`Step` with the generator's defaults applied
(conventions.py).  Steps whose fields break the schema's types are left out (the
schema rule reports them), so no rule meets a ``commands: 5``.
"""

from __future__ import annotations

import bisect
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from vllm_ep_kit.lint import conventions
from vllm_ep_kit.lint.area import Area, Finding


@dataclass
class Step:
    area: Area
    keys: tuple  # where the step is in its file: ("steps", i) or ("steps", i, "mirror", name)
    raw: dict
    working_dir: str
    mirror: str = ""  # "" for the step itself, else the mirror's name (amd)
    parent: Step | None = None
    generator: conventions.Generator = conventions.NEWEST_GENERATOR
    _parsed: list | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        name = str(self.raw.get("label") or (self.parent.label if self.parent else "?"))
        return f"{name} [mirror {self.mirror}]" if self.mirror else name

    @property
    def commands(self) -> list[str]:
        return list(self.raw.get("commands") or [])

    @property
    def env(self) -> dict:
        return dict(self.raw.get("env") or {})

    @property
    def device(self) -> str | None:
        return self.raw.get("device")

    @property
    def gpus(self) -> int:
        """GPUs the step asks for (its pool is chosen by them)."""
        return self.generator.gpus_of(self.device, self.raw.get(self.generator.gpu_key))

    @property
    def visible_gpus(self) -> int | None:
        """GPUs its job sees (None: the whole runner, whose size the tree does not say)."""
        return self.generator.visible_gpus(self.raw)

    @property
    def optional(self) -> bool:
        return bool(self.raw.get("optional"))

    @property
    def dependencies(self) -> list[str]:
        return list(self.raw.get("source_file_dependencies") or [])

    def parsed(self) -> list:
        """Its commands as ``commands.CommandInfo`` (files resolved from working_dir and cd)."""
        if self._parsed is None:
            from vllm_ep_kit.lint.commands import parse_commands

            self._parsed = parse_commands(
                self.commands, self.env, conventions.commands_folder(self.raw, self.working_dir)
            )
        return self._parsed

    def line(self, *more) -> int:
        return self.area.line(*self.keys, *more)

    def at(self, more: tuple[str | int, ...], word: str = "") -> Finding:
        """A place under this step (a finding yet to be said), as :meth:`finding` chooses it."""
        return self.finding(more, "", "", "", word)

    def finding(
        self, more: tuple[str | int, ...], rule: str, message: str, hint: str = "", word: str = ""
    ) -> Finding:
        """A finding at ``more`` under this step (at the line of ``word`` in a multi-line
        value); a mirror's finding on a value it inherits points at the step's own line
        (lint folds the two into one)."""
        if self.parent and more and more[0] not in self.parent.raw["mirror"][self.keys[-1]]:
            return self.area.finding(self.parent.keys + more, rule, message, hint, word)
        return self.area.finding(self.keys + more, rule, message, hint, word)


@dataclass
class Pipeline:
    """What every rule reads: the tree, its area files and their steps."""

    root: Path
    areas: list[Area]
    steps: list[Step] = field(default_factory=list)
    vllm_tree: bool = False
    pipelines: dict[str, set[str]] = field(default_factory=dict)  # ci_config -> area paths
    _files: list[str] | None = field(default=None, repr=False)

    def tree_files(self) -> list[str]:
        """Every file of the tree as a repository path (version control's own folder left
        out), listed once."""
        if self._files is None:
            self._files = []
            for folder, dirs, files in os.walk(self.root):
                dirs[:] = [d for d in dirs if d not in (".git", ".hg")]
                base = os.path.relpath(folder, self.root).replace(os.sep, "/")
                prefix = "" if base == "." else base + "/"
                self._files.extend(prefix + name for name in files)
        return self._files

    @functools.cached_property
    def _sorted_files(self) -> list[str]:
        return sorted(self.tree_files())

    @functools.cached_property
    def _joined_files(self) -> str:
        return "\n".join(self.tree_files())

    def has_path_starting(self, part: str) -> bool:
        """Whether a file of the tree starts with ``part``: a sorted list, built once, so each
        of a vLLM tree's thousand entries costs a lookup, not a walk of its files."""
        files = self._sorted_files
        at = bisect.bisect_left(files, part)
        return bool(part) and at < len(files) and files[at].startswith(part)

    def has_path_holding(self, part: str) -> bool:
        """Whether a file of the tree holds ``part`` (one joined text, built once)."""
        return bool(part) and "\n" not in part and part in self._joined_files


def consulted_entries(steps: list[Step]):
    """(step, index, entry) of every dependency entry the generator consults: those of
    non-optional steps (an optional step runs only when asked for)."""
    for step in steps:
        if not step.optional:
            for index, entry in enumerate(step.dependencies):
                yield step, index, entry


def _mirror_step(step: Step, name: object, block: dict) -> Step:
    """A mirror block inherits what it does not say (commands, dependencies, working_dir).
    ``name`` is the block's key as YAML read it (``1:`` is an int); ``mirror`` its text."""
    merged = {k: v for k, v in step.raw.items() if k != "mirror"}
    merged.update(block)
    # its own entries add to its step's (buildkite_step.py _get_amd_mirror_effective_step)
    own = block.get("source_file_dependencies")
    if isinstance(own, list):
        merged["source_file_dependencies"] = list(dict.fromkeys([*own, *step.dependencies]))
    return Step(
        area=step.area,
        keys=step.keys + ("mirror", name),
        raw=merged,
        working_dir=str(block.get("working_dir") or step.working_dir),
        mirror=str(name),
        parent=step,
        generator=step.generator,
    )


def read_steps(
    root: Path, areas: list[Area], generator: conventions.Generator = conventions.NEWEST_GENERATOR
) -> Pipeline:
    pipeline = Pipeline(
        root=root,
        areas=areas,
        vllm_tree=conventions.is_vllm_tree(root),
        pipelines=conventions.pipeline_members(root, [a.display for a in areas]),
    )
    amd = conventions.amd_template(generator.as_of or None)
    for area in areas:
        group_depends = isinstance(area.data, dict) and bool(area.data.get("depends_on"))
        default_dir = conventions.default_working_dir(root, group_depends)
        reader = generator
        if area.display == conventions.AMD_PIPELINE:
            reader, default_dir = amd, conventions.VLLM_DEFAULT_WORKING_DIR
        for index, raw in area.indexed_steps():
            step = Step(
                area=area,
                keys=("steps", index),
                raw=raw,
                working_dir=str(raw.get("working_dir") or default_dir),
                generator=reader,
            )
            pipeline.steps.append(step)
            mirrors = raw.get("mirror") if reader is generator else None
            for name, block in (mirrors or {}).items():
                if isinstance(block, dict) and area.shape_ok(block):
                    pipeline.steps.append(_mirror_step(step, name, block))
    return pipeline


def area_files(root: Path) -> list[Path]:
    """The YAML files the generators read: every ``job_dirs`` folder, walked, and the AMD
    template's test-amd.yaml."""
    files: list[Path] = []
    for folder in conventions.job_dirs(root):
        base = root / folder
        if base.is_dir():
            files.extend(sorted(p for p in base.rglob("*.yaml") if p.is_file()))
    if (root / conventions.AMD_PIPELINE).is_file():
        files.append(root / conventions.AMD_PIPELINE)
    return files
