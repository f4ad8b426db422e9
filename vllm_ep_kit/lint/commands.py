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

from vllm_ep_kit.lint import conventions

ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
# Options whose value names a file to leave out or a pattern, not a file that runs.
NOT_RUN_AFTER = frozenset(
    {"-name", "-iname", "-path", "-ipath", "--ignore", "--deselect", "--ignore-glob", "-k", "-m"}
)
# pytest's options that leave a path out of what its other operands collect.
LEAVE_OUT = frozenset({"--ignore", "--ignore-glob", "--deselect"})
DESELECT = frozenset({"--deselect"})
RUNNERS = frozenset({"pytest", "find"})  # their operands are test paths
OPERAND = re.compile(r"[\w.*/-]*[A-Za-z_][\w.*/-]*")
FILE_LIKE = re.compile(r"^(tests|scripts|benchmarks|examples)/|\.(py|sh|yaml|yml)$")


@dataclass
class CommandInfo:
    index: int  # position in the step's commands
    text: str
    env: dict[str, str] = field(default_factory=dict)  # exported before + inline
    files: list[str] = field(default_factory=list)  # as written
    # each file as a repository path ("" when it lies outside the workspace)
    repo_files: list[str] = field(default_factory=list)
    selectors: list[str] = field(default_factory=list)  # pytest's ``::name`` part, or ''
    # other operands of ``pytest`` / ``find`` (folders such as ``model_executor``), as
    # repository paths: what the command runs, but not certain enough to call missing
    run_paths: list[str] = field(default_factory=list)
    # what ``--ignore`` / ``--ignore-glob`` / ``--deselect`` leave out, as repository paths
    ignored: list[str] = field(default_factory=list)
    # each ``--deselect`` value as written, with the folder it was named in (a repository
    # path; None outside the workspace): pytest matches it as a prefix of test ids
    deselected: list[tuple[str, str | None]] = field(default_factory=list)
    # the ``-k`` expression of the command that names each path (files and run paths)
    keyword_of: dict[str, str] = field(default_factory=dict)

    def keyword(self, path: str) -> str:
        """The ``-k`` the command gives ``path`` ('' for none: every test of it runs)."""
        return self.keyword_of.get(path, "")


def _resolve(cwd: str | None, word: str) -> str | None:
    """``word`` named in image folder ``cwd`` as a repository path (None: outside it)."""
    if word.startswith("/"):
        target = conventions.to_repo_path(word)
        return None if target is None else posixpath.normpath(str(target) or ".")
    if cwd is None:
        return None
    joined = posixpath.normpath(posixpath.join(cwd or ".", word))
    return None if joined.startswith("..") else joined


def _option_value(words: list[str], pos: int, options: frozenset[str]) -> str | None:
    """The value ``words[pos]`` gives one of ``options`` (``--opt=V``, or ``V`` after
    ``--opt``), else None."""
    option, equals, value = words[pos].partition("=")
    if option in options and equals:
        return value
    if pos > 0 and words[pos - 1] in options:
        return words[pos]
    return None


def _left_out(words: list[str], pos: int) -> str | None:
    """The path ``words[pos]`` leaves out (``--ignore=P``, or ``P`` after ``--ignore``); ''
    for a test id (``--deselect f.py::t`` leaves the rest of the file in); None otherwise."""
    path = _option_value(words, pos, LEAVE_OUT)
    if path is None:
        return None
    return "" if "::" in path else path.rstrip("/")


def parse_commands(
    commands: list[str],
    step_env: dict | None = None,
    working_dir: str = conventions.WORKSPACE,
    depth: int = 0,
) -> list[CommandInfo]:
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
        runner = ""
        named: list[str] = []  # what this command of the line names, for its -k
        keyword = ""
        for pos, word in enumerate([*words, ";"]):  # a last separator ends the last command
            if word in ("&&", "||", ";", "|"):
                for path in named:  # a path also run without -k ("") runs whole
                    if info.keyword_of.get(path) != "":
                        info.keyword_of[path] = keyword
                inline, runner, named, keyword = True, "", [], ""
                continue
            if pos > 0 and words[pos - 1] == "-k":
                keyword = word
            if posixpath.basename(word) in RUNNERS:
                runner = posixpath.basename(word)
                inline = False
                continue
            match = ASSIGNMENT.match(word)
            if match and (inline or (pos > 0 and words[pos - 1] == "export")):
                info.env[match.group(1)] = match.group(2)
                if pos > 0 and words[pos - 1] == "export":
                    exported[match.group(1)] = match.group(2)
                continue
            if word == "export":
                continue
            if (
                pos > 0
                and words[pos - 1] == "cd"
                and (pos < 2 or words[pos - 2] in ("&&", "||", ";", "|"))
            ):
                cwd = _resolve(cwd, word)
                continue
            inline = False
            deselect = _option_value(words, pos, DESELECT)
            if deselect:
                info.deselected.append((deselect, cwd))
            left_out = _left_out(words, pos)
            if left_out is not None:
                resolved = _resolve(cwd, left_out) if left_out else None
                if resolved:
                    info.ignored.append(resolved)
                continue
            if pos > 0 and words[pos - 1] in NOT_RUN_AFTER:
                continue
            if any(c.isspace() for c in word):
                if any(FILE_LIKE.search(token) for token in word.split()):
                    # a runner script's argument holding command lines; a folder of the
                    # image named before it (run-multi-node-test.sh's first argument) is
                    # where they run, else the checkout's root
                    folder = next(
                        (w for w in reversed(words[:pos]) if w.startswith(conventions.WORKSPACE)),
                        conventions.WORKSPACE,
                    )
                    _embedded(info, word, folder, depth)
                continue
            path, _, selector = word.partition("::")
            if FILE_LIKE.search(path) and not path.startswith("-") and len(path) < 256:
                info.files.append(path)
                info.selectors.append(selector)
                resolved = _resolve(cwd, path)
                info.repo_files.append("" if resolved is None else resolved)
                named.append(info.repo_files[-1])
            elif runner and not path.startswith("-") and OPERAND.fullmatch(path):
                resolved = _resolve(cwd, path)
                if resolved:
                    info.run_paths.append(resolved)
                    named.append(resolved)
        parsed.append(info)
    return parsed


def _embedded(info: CommandInfo, text: str, folder: str, depth: int) -> None:
    """Files named by command lines handed to a runner script as one argument
    (``bash run-cpu-test.sh 30m "pytest tests/a.py ..."``), read from ``folder``
    (a ``cd`` among them holds for the lines after it)."""
    if depth >= 2:
        return
    lines = [
        line for line in text.replace("&&", "\n").replace(";", "\n").splitlines() if line.strip()
    ]
    for inner in parse_commands(lines, None, folder, depth=depth + 1):
        info.files.extend(inner.files)
        info.selectors.extend(inner.selectors)
        info.repo_files.extend(inner.repo_files)
        info.run_paths.extend(inner.run_paths)
        info.ignored.extend(inner.ignored)
        info.deselected.extend(inner.deselected)
        info.keyword_of.update(inner.keyword_of)
