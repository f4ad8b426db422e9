"""What a step's shell commands run and which variables they set.

Commands are shell lines; we read them with ``shlex`` (no execution): leading
``NAME=value`` words are environment for that command, ``export NAME=value``
sets it for the following commands, and file-like words (``tests/...``,
``scripts/...``, ``*.py``, ``*.sh``) are the files the step runs.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
FILE_LIKE = re.compile(r"^(tests|scripts|benchmarks|examples)/|\.(py|sh|yaml|yml)$")


@dataclass
class CommandInfo:
    index: int  # position in the step's commands
    text: str
    env: dict[str, str] = field(default_factory=dict)  # exported before + inline
    files: list[str] = field(default_factory=list)


def parse_commands(commands: list[str], step_env: dict | None = None) -> list[CommandInfo]:
    exported = {k: str(v) for k, v in (step_env or {}).items()}
    parsed = []
    for index, text in enumerate(commands):
        try:
            words = shlex.split(text, comments=True)
        except ValueError:
            words = text.split()
        info = CommandInfo(index=index, text=text, env=dict(exported))
        inline = True
        for pos, word in enumerate(words):
            if word in ("&&", "||", ";", "|"):
                inline = True
                continue
            match = ASSIGNMENT.match(word)
            if match and (inline or (pos > 0 and words[pos - 1] == "export")):
                info.env[match.group(1)] = match.group(2)
                if pos > 0 and words[pos - 1] == "export":
                    exported[match.group(1)] = match.group(2)
                continue
            if word == "export":
                continue
            inline = False
            path = word.split("::", 1)[0]
            if FILE_LIKE.search(path) and not path.startswith("-"):
                info.files.append(path)
        parsed.append(info)
    return parsed
