"""How vLLM's pipeline generator reads the test-area files: each convention once, with its source.

Read from vllm-project/ci-infra ``buildkite/pipeline_generator`` (``step.py``: the step
model and the files it walks; ``buildkite_step.py``: queues and devices), 2026-08.  Every
rule asks these functions instead of assuming; fixtures in tests/buildkite reproduce each.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import yaml

# step.py: the step model (a pydantic model: keys it does not declare are dropped silently).
STEP_KEYS = frozenset(
    {
        "label",
        "group",
        "working_dir",
        "key",
        "depends_on",
        "commands",
        "device",
        "agent_tags",
        "num_devices",
        "num_nodes",
        "source_file_dependencies",
        "soft_fail",
        "parallelism",
        "timeout_in_minutes",
        "mount_buildkite_agent",
        "env",
        "retry",
        "optional",
        "no_plugin",
        "mirror",
        "concurrency",
        "concurrency_group",
        "no_gpu",
        "dind",
    }
)
# A mirror block (``mirror: {amd: {...}}``) is a step of its own on that hardware.
MIRROR_KEYS = STEP_KEYS - {"mirror"}

# The image: the repository is checked out at /vllm-workspace.
WORKSPACE = "/vllm-workspace"
# step.py: in vLLM's own repository, a step of a file with a group-level depends_on and no
# working_dir runs in /vllm-workspace/tests.  Elsewhere (this kit) the repository root.
VLLM_DEFAULT_WORKING_DIR = "/vllm-workspace/tests"

# buildkite_step.py get_agent_queue: CPU queues.  No device means a GPU pool
# (gpu_1_queue; gpu_4_queue when num_devices is 2 or 4); no num_devices means 1.
CPU_DEVICES = frozenset(
    {"cpu", "cpu-small", "cpu-medium", "intel_cpu", "arm_cpu", "amd_cpu", "amd_zen5_cpu"}
)
# h200_18gb / h200_35gb are slices of one H200; they hold one GPU each.
ONE_GPU_SLICES = frozenset({"h200_18gb", "h200_35gb"})

# ci_config*.yaml ``job_dirs``: the folders whose YAML files the generator walks.
DEFAULT_JOB_DIRS = (".buildkite/test_areas",)

# Variables the CI image or agent sets for every command (a script's branch on them is
# opened by the environment, not by a step): the ROCm image's ROCM_PATH, Buildkite's own.
IMAGE_VARIABLES = frozenset(
    {
        "ROCM_PATH",
        "CI",
        "HOME",
        "PATH",
        "HF_TOKEN",
        "BUILDKITE",
        # bash's own
        "BASH_SOURCE",
        "BASH_VERSION",
        "LINENO",
        "RANDOM",
        "PWD",
        "OLDPWD",
        "UID",
        "EUID",
        "HOSTNAME",
        "SECONDS",
        "PIPESTATUS",
        "FUNCNAME",
    }
)
AGENT_PREFIXES = ("BUILDKITE_",)  # every job's environment: the agent's own variables


def set_by_environment(name: str) -> bool:
    return name in IMAGE_VARIABLES or name.startswith(AGENT_PREFIXES)


def is_vllm_tree(root: Path) -> bool:
    """vLLM's own repository (its defaults differ from other users of the generator)."""
    return (root / "vllm" / "__init__.py").is_file() or (root / "vllm" / "version.py").is_file()


def pipeline_configs(root: Path) -> dict[str, dict]:
    """Each readable ``.buildkite/ci_config*.yaml`` (one pipeline each), by file name."""
    configs = {}
    for config in sorted((root / ".buildkite").glob("ci_config*.yaml")):
        try:
            data = yaml.safe_load(config.read_text())
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue
        if isinstance(data, dict):
            configs[config.name] = data
    return configs


def _strings(config: dict, key: str) -> list[str]:
    value = config.get(key)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def job_dirs(root: Path) -> list[str]:
    """Every ``job_dirs`` entry of the pipelines, else the test-area folder."""
    found = [d for config in pipeline_configs(root).values() for d in _strings(config, "job_dirs")]
    return list(dict.fromkeys(found)) or list(DEFAULT_JOB_DIRS)


def pipeline_members(root: Path, displays: list[str]) -> dict[str, set[str]]:
    """Which of the area files (repository paths) each pipeline reads ('' when none is set)."""
    result = {
        name: {
            d
            for d in displays
            for folder in _strings(config, "job_dirs")
            if d.startswith(folder.rstrip("/") + "/")
        }
        for name, config in pipeline_configs(root).items()
    }
    return result or {"": set(displays)}


def run_all_patterns(root: Path) -> tuple[list[str], list[str]]:
    """``run_all_patterns`` / ``run_all_exclude_patterns`` of every pipeline: a change to a
    matching path (``re.match``) runs every step of that pipeline."""
    configs = pipeline_configs(root).values()
    return (
        [p for c in configs for p in _strings(c, "run_all_patterns")],
        [p for c in configs for p in _strings(c, "run_all_exclude_patterns")],
    )


def runs_everything(path: str, patterns: tuple[list[str], list[str]]) -> bool:
    import re

    include, exclude = patterns

    def matches(pattern: str) -> bool:
        try:
            return re.match(pattern, path) is not None
        except re.error:
            return False

    return any(matches(p) for p in include) and not any(matches(p) for p in exclude)


def commands_folder(step: dict, working_dir: str) -> str:
    """Where a step's commands start: a multi-node step (``num_nodes`` >= 2) runs them on the
    agent, from the checkout's root (they launch the containers); others in working_dir."""
    nodes = step.get("num_nodes")
    return WORKSPACE if isinstance(nodes, int) and nodes >= 2 else working_dir


def default_working_dir(root: Path, has_group_depends_on: bool) -> str:
    if is_vllm_tree(root) and has_group_depends_on:
        return VLLM_DEFAULT_WORKING_DIR
    return WORKSPACE


def to_repo_path(directory: str) -> PurePosixPath | None:
    """A folder inside the image as a repository path ('' for the root), or None outside it."""
    path = PurePosixPath(directory)
    if not path.is_absolute():
        return path
    try:
        return path.relative_to(WORKSPACE)
    except ValueError:
        return None


def gpus_of(device: str | None, num_devices: int | None) -> int:
    """GPUs a step's job gets."""
    if device in CPU_DEVICES:
        return 0
    if device in ONE_GPU_SLICES:
        return 1
    return num_devices if num_devices else 1


def dependency_matches(entry: str, path: str) -> bool:
    """A ``source_file_dependencies`` entry (without ``!``) matches a changed path exactly or
    as a prefix ending at a folder boundary; ``tests/distributed/test_pynccl`` (no ``.py``)
    matches nothing that exists."""
    entry = entry.rstrip("/")
    return path == entry or path.startswith(entry + "/")


def covered(path: str, entries: list[str]) -> bool:
    """Whether a change to ``path`` triggers a step with these dependency entries."""
    included = [e for e in entries if not e.startswith("!")]
    excluded = [e[1:] for e in entries if e.startswith("!")]
    return any(dependency_matches(e, path) for e in included) and not any(
        dependency_matches(e, path) for e in excluded
    )
