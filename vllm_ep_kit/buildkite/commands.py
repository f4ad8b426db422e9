"""What a step's shell commands run and which variables they set.

Commands are shell lines; we read them with ``shlex`` (no execution): leading
``NAME=value`` words are environment for that command, ``export NAME=value``
sets it for the following commands, and file-like words (``tests/...``,
``scripts/...``, ``*.py``, ``*.sh``) are the files the step runs.  Buildkite runs
a step's commands in one shell, so a ``cd`` holds for the commands after it; each
file is resolved against the folder it is named in (the step's ``working_dir``
first) to a repository path.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field

from vllm_ep_kit.buildkite import conventions

ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
# Options whose value names a file to leave out or a pattern, not a file that runs.
NOT_RUN_AFTER = frozenset({"-name", "-iname", "-path", "-ipath", "--ignore", "--deselect",
                           "--ignore-glob", "-k", "-m"})
FILE_LIKE = re.compile(r"^(tests|scripts|benchmarks|examples)/|\.(py|sh|yaml|yml)$")


@dataclass
class CommandInfo:
    index: int  # position in the step's commands
    text: str
    env: dict[str, str] = field(default_factory=dict)  # exported before + inline
    files: list[str] = field(default_factory=list)  # as written
    # each file as a repository path ("" when it lies outside the workspace)
    repo_files: list[str] = field(default_factory=list)


def _resolve(cwd: str | None, word: str) -> str | None:
    """``word`` named in image folder ``cwd`` as a repository path (None: outside it)."""
    if word.startswith("/"):
        target = conventions.to_repo_path(word)
        return None if target is None else posixpath.normpath(str(target) or ".")
    if cwd is None:
        return None
    joined = posixpath.normpath(posixpath.join(cwd or ".", word))
    return None if joined.startswith("..") else joined


def parse_commands(commands: list[str], step_env: dict | None = None,
                   working_dir: str = conventions.WORKSPACE) -> list[CommandInfo]:
    exported = {k: str(v) for k, v in (step_env or {}).items()}
    start = conventions.to_repo_path(working_dir)
    cwd: str | None = None if start is None else posixpath.normpath(str(start) or ".")
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
            if pos > 0 and words[pos - 1] == "cd" and (pos < 2 or words[pos - 2] in
                                                       ("&&", "||", ";", "|")):
                cwd = _resolve(cwd, word)
                continue
            inline = False
            if pos > 0 and words[pos - 1] in NOT_RUN_AFTER:
                continue
            path = word.split("::", 1)[0]
            if (FILE_LIKE.search(path) and not path.startswith("-")
                    and not any(c.isspace() for c in path) and len(path) < 256):
                info.files.append(path)
                resolved = _resolve(cwd, path)
                info.repo_files.append("" if resolved is None else resolved)
        parsed.append(info)
    return parsed
