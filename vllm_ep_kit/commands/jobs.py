"""What every command that starts ranks checks before any work: the world it may use
(this host's, or a torchrun job's) and the folder its results go to.

Each check returns the one-line error naming the argument ('' when fine), or raises
:class:`JobArgumentError` with it; the CLI prints it and exits 2.
"""

from __future__ import annotations

from pathlib import Path

# At most this many gloo ranks on a CPU-only machine: each is a process holding
# torch and vLLM (about 1 GiB each).
CPU_MAX_RANKS = 16


class JobArgumentError(ValueError):
    """An argument the job cannot take; the message names it."""


def cpu_rank_limit(flag: str, sizes: list[int], gpu_count: int) -> str:
    """The error for a CPU-only world larger than ``CPU_MAX_RANKS``, or ''."""
    big = [n for n in sizes if n > CPU_MAX_RANKS]
    if gpu_count or not big:
        return ""
    return (
        f"{flag}: {big[0]} ranks on a CPU-only machine (gloo): at most {CPU_MAX_RANKS} "
        "(each rank is a process holding torch and vLLM)"
    )


def world_for_job(
    flag: str, given: list[int] | None, default: list[int], local_gpus: int
) -> tuple[list[int], int]:
    """(world sizes to run, GPU count the plan may assume) for this process.

    Outside torchrun: ``given`` or ``default``, and this host's GPUs.  Under
    torchrun every run uses the whole job (its ranks may span nodes), so the
    world size is the job's and the GPU check is per node (one rank per GPU).
    """
    from vllm_ep_kit.harness import torchrun

    job = torchrun.job_world_size()
    if job is None:
        return list(given or default), local_gpus
    if given and given != [job]:
        raise JobArgumentError(
            f"{flag}: this torchrun job has {job} ranks and every run uses all of "
            f"them; got {','.join(map(str, given))} (omit {flag}, or launch "
            "torchrun with that many processes)"
        )
    return [job], torchrun.gpus_for_job(local_gpus)


def unusable_out_dir(out: Path) -> str:
    """Why ``out`` cannot take the results (checked before any work), or ''.

    A folder that does not exist yet is created and removed again: the only
    reliable test that it can be (permission bits do not tell root's story).
    """
    if out.exists() and not out.is_dir():
        return "exists and is not a folder"
    if out.is_dir():
        return "exists and is not empty" if any(out.iterdir()) else ""
    made = []
    try:
        for folder in reversed([out, *out.parents]):
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
    except OSError as exc:
        return f"cannot be created: {exc.strerror or exc}"
    finally:
        for folder in reversed(made):
            folder.rmdir()
    return ""
