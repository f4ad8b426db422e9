"""A test-area file loaded with the line of every value, so findings point at lines.

vLLM's test-area format: ``group``, ``depends_on`` and ``steps``; each step has
``label``, ``commands`` and optional ``device``, ``num_devices``,
``working_dir``, ``source_file_dependencies``, ``optional``, ``mirror``, ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_NODES = 200_000  # a test-area file far beyond any real one: aliases that expand forever


class AreaError(ValueError):
    """A file that cannot be read as a test area at all (what, and on which line)."""

    def __init__(self, line: int, rule: str, message: str):
        super().__init__(message)
        self.line, self.rule = line, rule


def load_schema() -> dict:
    return json.loads(resources.files("vllm_ep_kit.lint").joinpath("schema.json").read_text())


def _step_shape() -> jsonschema.Draft202012Validator:
    """The types of a step's fields, from the schema: a step that breaks them is reported
    by the schema rule and skipped by every other rule (which read those fields)."""
    step = load_schema()["$defs"]["step"]
    return jsonschema.Draft202012Validator({"type": "object", "properties": step["properties"]})


_SHAPE = _step_shape()


def decode(raw: bytes) -> str:
    if b"\0" in raw:
        raise AreaError(1, "encoding", "binary file (NUL bytes), not YAML text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise AreaError(
            line, "encoding", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        ) from None


def expanded_size(root: yaml.Node | None, limit: int = MAX_NODES) -> int:
    """Nodes the document has once every alias is expanded (shared nodes counted each time)."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = limit + 1  # a cycle counts as too big
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in node.value)
        else:
            total = 1
        sizes[id(node)] = min(total, limit + 1)
        return sizes[id(node)]

    return 0 if root is None else size(root)


@dataclass
class Finding:
    path: str
    line: int
    rule: str
    message: str
    hint: str = ""
    # other places of the same cause, folded into this finding (``mirror amd``, ``f.yaml:12``)
    also: tuple[str, ...] = ()
    # what the finding is about, where one cause shows in several places (a stale entry
    # repeated in six steps): findings of one rule and cause are folded into the first
    cause: str = field(default="", compare=False)

    SHOWN = 4  # places of ``also`` a line shows; JSON has them all

    def text(self) -> str:
        """The message, the places folded into it and the fix."""
        text = self.message
        if self.also:
            shown = ", ".join(self.also[: self.SHOWN])
            more = len(self.also) - self.SHOWN
            text += f" (also {shown}{f' and {more} more' if more > 0 else ''})"
        return text + (f" (fix: {self.hint})" if self.hint else "")

    def format(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.text()}"


@dataclass
class Area:
    path: Path
    data: Any
    root: yaml.Node | None
    display: str = ""
    text: list[str] = field(default_factory=list, repr=False)  # the file's lines

    @classmethod
    def load(cls, path: Path, display: str | None = None) -> Area:
        """Raises :class:`AreaError` (encoding, size) or ``yaml.YAMLError``."""
        text = decode(path.read_bytes())
        root = yaml.compose(text, Loader=_FAST_LOADER)  # parsed once, by libyaml if present
        if expanded_size(root) > MAX_NODES:
            raise AreaError(
                1,
                "yaml",
                f"expands to more than {MAX_NODES:,} YAML nodes (aliases of aliases?): not read",
            )
        data = None if root is None else yaml.SafeLoader("").construct_document(root)
        return cls(
            path=path, data=data, root=root, display=display or str(path), text=text.splitlines()
        )

    @staticmethod
    def shape_ok(step) -> bool:
        return isinstance(step, dict) and _SHAPE.is_valid(step)

    @property
    def holds_steps(self) -> bool:
        return isinstance(self.data, dict) and "steps" in self.data

    def indexed_steps(self) -> list[tuple[int, dict]]:
        """(index, step) of each step whose fields have the schema's types."""
        steps = self.data.get("steps") if isinstance(self.data, dict) else None
        if not isinstance(steps, list):
            return []
        return [(i, s) for i, s in enumerate(steps) if self.shape_ok(s)]

    def _reached(self, keys: tuple) -> list[yaml.Node]:
        """The nodes from the root along ``keys`` (dict keys / list indexes), as far as the
        path leads."""
        node = self.root
        reached = [] if node is None else [node]
        for key in keys:
            if isinstance(node, yaml.MappingNode):
                # a node's key is its text (``1:`` reads as the int 1, written "1")
                node = next((v for k, v in node.value if k.value == str(key)), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
                node = node.value[key] if key < len(node.value) else None
            else:
                node = None
            if node is None:
                break
            reached.append(node)
        return reached

    def line(self, *keys) -> int:
        """1-based line of the value at ``keys``; best effort (where the path stops)."""
        reached = self._reached(keys)
        return reached[-1].start_mark.line + 1 if reached else 1

    def word_line(self, keys: tuple, word: str) -> int:
        """The line of ``word`` in the multi-line value at ``keys`` (a folded command),
        trying shorter tails of a path (``v1/core`` for ``tests/v1/core``); else the value's
        first line (:meth:`line`)."""
        reached = self._reached(keys)
        if not reached:
            return 1
        node = reached[-1]
        line = node.start_mark.line + 1
        whole = len(reached) == len(keys) + 1
        if not whole or not isinstance(node, yaml.ScalarNode):
            return line
        span = self.text[node.start_mark.line : node.end_mark.line + 1]
        if len(span) < 2:
            return line
        parts = word.split("/")
        for tail in ("/".join(parts[n:]) for n in range(len(parts))):
            found = next((n for n, text in enumerate(span) if tail in text), None)
            if tail and found is not None:
                return line + found
        return line

    def finding(
        self, keys: tuple, rule: str, message: str, hint: str = "", word: str = ""
    ) -> Finding:
        """A finding at the value at ``keys`` (at the line holding ``word`` in it, if given)."""
        line = self.word_line(keys, word) if word else self.line(*keys)
        return Finding(self.display, line, rule, message, hint)
