"""A test-area file loaded with the line of every value, so findings point at lines.

vLLM's test-area format: ``group``, ``depends_on`` and ``steps``; each step has
``label``, ``commands`` and optional ``device``, ``num_devices``,
``working_dir``, ``source_file_dependencies``, ``optional``, ``mirror``, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Finding:
    path: str
    line: int
    rule: str
    message: str
    hint: str = ""

    def format(self) -> str:
        text = f"{self.path}:{self.line}: {self.rule}: {self.message}"
        return text + (f" (fix: {self.hint})" if self.hint else "")


def _plain(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node)) if node is not None else None


@dataclass
class Area:
    path: Path
    data: Any
    root: yaml.Node | None
    display: str = ""
    _lines: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, display: str | None = None) -> "Area":
        text = path.read_text()
        root = yaml.compose(text)
        return cls(path=path, data=yaml.safe_load(text), root=root,
                   display=display or str(path))

    @property
    def steps(self) -> list[dict]:
        steps = self.data.get("steps") if isinstance(self.data, dict) else None
        return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []

    def line(self, *keys) -> int:
        """1-based line of the value at ``keys`` (dict keys / list indexes); best effort."""
        node = self.root
        line = 1 if node is None else node.start_mark.line + 1
        for key in keys:
            if isinstance(node, yaml.MappingNode):
                match = next((v for k, v in node.value if k.value == key), None)
                if match is None:
                    return line
                node = match
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
                if key >= len(node.value):
                    return line
                node = node.value[key]
            else:
                return line
            line = node.start_mark.line + 1
        return line

    def finding(self, keys: tuple, rule: str, message: str, hint: str = "") -> Finding:
        return Finding(self.display, self.line(*keys), rule, message, hint)
