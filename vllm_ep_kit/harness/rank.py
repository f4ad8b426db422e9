"""What runs inside one rank: set-up, the test function, and its report.

A rank reports through files in the run's work directory rather than a
multiprocessing queue: a rank killed mid-write (SIGSEGV, the watchdog) cannot
corrupt a file the parent reads after it died, and no semaphore-backed queue
leaves a resource-tracker process behind.

Files per rank ``r``: ``rank{r}.log`` (stdout+stderr, including faulthandler's
crash trace), ``rank{r}.beat`` (created by the parent at spawn, touched on
progress; its mtime is the heartbeat), ``rank{r}.armed`` (the stack-dump
handler is installed: before it, SIGUSR1 would kill the rank),
``rank{r}.stacks`` (all-thread stacks written on SIGUSR1 when the watchdog
fires) and ``rank{r}.result`` (pickled outcome, written last).

A rank dies with its parent: a thread notices when the rank is re-parented
(the parent was killed, even by SIGKILL) and kills every process of the run.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vllm_ep_kit.harness import proctree
from vllm_ep_kit.harness.skips import NotRunnableHere
from vllm_ep_kit.reference.layout import ParallelLayout

if TYPE_CHECKING:
    import torch
    import torch.distributed
    from vllm.config import VllmConfig

STACK_DUMP_SIGNAL = signal.SIGUSR1
PARENT_POLL_S = 0.2


def child_environment(env: dict[str, str] | None, workdir: str | Path) -> dict[str, str]:
    """What a run's rank processes set over the environment they inherit: ``env``, NVLink
    multicast off, and vLLM's IPC sockets (``VLLM_RPC_BASE_PATH``: zmq ``ipc://`` files
    that a killed rank never unlinks) in the run's folder, removed with it, unless the
    caller's environment chose a place for them."""
    child = dict(env or {})
    child.setdefault("NCCL_NVLS_ENABLE", "0")
    if "VLLM_RPC_BASE_PATH" not in os.environ:
        child.setdefault("VLLM_RPC_BASE_PATH", str(workdir))
    return child


@dataclass
class RankSpec:
    """Everything a spawned rank needs, picklable."""

    fn: Callable[..., Any] | None  # None: a pooled rank, which gets its tasks over a pipe
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    rank: int
    world_size: int
    workdir: str
    backend: str  # "gloo" or "nccl"
    master_addr: str
    master_port: int
    timeout_s: float
    layout: ParallelLayout | None = None  # set: bring up vLLM's parallel state
    all2all_backend: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    python_path: tuple[str, ...] = ()  # put first on sys.path (e.g. another vLLM's sources)
    # The environment a spawned rank would have inherited, for a rank forked from a fork
    # server (which holds the environment it was started with); None: keep what it has.
    inherit_env: dict[str, str] | None = None
    run_id: str = ""  # proctree.RUN_ENV of this run's processes
    parent_pid: int = 0  # the supervising process: the rank dies when it does


@dataclass
class RankOutcome:
    status: str  # "ok" | "error" | "skip"
    value: Any = None
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    exit_code: int = 0
    at: float = field(default_factory=time.time)  # wall-clock time of the outcome


class RankContext:
    """Handed to the test function as its first argument."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        local_rank: int,
        backend: str,
        workdir: str | None,
        layout: ParallelLayout | None,
    ):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.backend = backend
        self.layout = layout
        self.vllm_config: VllmConfig | None = None  # set inside vLLM's parallel state
        self._beat = Path(workdir, f"rank{rank}.beat") if workdir else None
        self._on_beat: Callable[[], None] | None = None

    @property
    def device(self) -> torch.device:
        import torch

        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def heartbeat(self) -> None:
        """Tell the watchdog this rank is making progress (call between cases)."""
        if self._beat is not None:
            os.utime(self._beat)
        if self._on_beat is not None:
            self._on_beat()


def _is_skip(exc: BaseException) -> bool:
    """The rank cannot run here: the harness's own error, or a test's ``pytest.skip()``
    (pytest stays optional for the command line)."""
    if isinstance(exc, NotRunnableHere):
        return True
    try:
        from _pytest.outcomes import Skipped
    except ImportError:
        return False
    return isinstance(exc, Skipped)


def outcome_from_exception(exc: BaseException) -> RankOutcome:
    if _is_skip(exc):
        return RankOutcome(status="skip", message=str(getattr(exc, "msg", exc)))
    code = 1
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else 1
    return RankOutcome(
        status="error",
        error_type=type(exc).__name__,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        exit_code=code,
    )


def init_world(
    backend: str,
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    timeout_s: float,
    local_rank: int,
) -> torch.distributed.TCPStore:
    """Join the parent's rendezvous store, create the default process group, return the store."""
    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    store = dist.TCPStore(master_addr, master_port, is_master=False, timeout=timeout)
    dist.init_process_group(
        backend,
        store=dist.PrefixStore("world", store),
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )
    return store


def join_world(spec: RankSpec, ctx: RankContext) -> torch.distributed.TCPStore:
    """:func:`init_world` with what ``spec`` and ``ctx`` say of this rank and its world."""
    return init_world(
        spec.backend,
        spec.rank,
        spec.world_size,
        spec.master_addr,
        spec.master_port,
        spec.timeout_s,
        ctx.local_rank,
    )


def wait_for_all_outcomes(store: torch.distributed.Store, world_size: int) -> None:
    """Exit barrier: a rank that finished stays alive until every rank has an outcome.

    Tearing down a process group while peers still use it turns their hang or
    failure into a misleading "connection closed" error; the parent kills
    ranks still waiting here if another rank never finishes.
    """
    store.add("finished", 1)
    while store.add("finished", 0) < world_size:
        time.sleep(0.05)


def run_in_context(
    spec_fn: Callable[..., Any],
    ctx: RankContext,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    layout: ParallelLayout | None,
    all2all_backend: str | None,
) -> Any:
    """Run the test function, inside vLLM's parallel state when a layout is given."""
    if layout is None:
        return spec_fn(ctx, *args, **kwargs)
    from vllm_ep_kit.harness.vllm_state import Device, vllm_parallel_state

    device: Device = "cuda" if ctx.backend == "nccl" else "cpu"
    with vllm_parallel_state(
        layout, ctx.rank, ctx.local_rank, ctx.backend, device, all2all_backend
    ) as config:
        ctx.vllm_config = config
        ctx.heartbeat()
        return spec_fn(ctx, *args, **kwargs)


def _redirect_output(log_path: Path) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def die_with_parent(parent_pid: int, run_id: str) -> None:
    """Kill every process of the run, this one last, once ``parent_pid`` is gone.

    The parent may die without a chance to tear down (SIGKILL, a CI cancel):
    the rank is then re-parented, which a daemon thread notices within
    ``PARENT_POLL_S``.  (``PR_SET_PDEATHSIG`` alone would kill only the rank and
    orphan its descendants.)  A rank forked by a fork server is not
    ``parent_pid``'s child, and the server outlives ``parent_pid`` while its
    children hold it open: that rank watches ``parent_pid`` itself.
    """
    if not parent_pid:
        return
    import psutil

    spawned = os.getppid() == parent_pid
    parent: psutil.Process | None = None
    if not spawned:
        with contextlib.suppress(psutil.Error):  # gone already: the watch ends at once
            parent = psutil.Process(parent_pid)

    def parent_alive() -> bool:
        if spawned:  # re-parented: the parent died
            return os.getppid() == parent_pid
        try:
            return (
                parent is not None
                and parent.is_running()
                and parent.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False

    def watch() -> None:
        while parent_alive():
            time.sleep(PARENT_POLL_S)
        for proc in proctree.processes_of_run(run_id):
            with contextlib.suppress(Exception):  # gone already
                proc.kill()
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="vllm-ep-kit-parent-watch", daemon=True).start()


def armed_file(workdir: str | Path, rank: int) -> Path:
    return Path(workdir, f"rank{rank}.armed")


def prepare_rank_process(spec: RankSpec) -> RankContext:
    """Set up a spawned rank process (also a pooled one) and return its context.

    Own process group (teardown reaches every descendant), the run's id in the
    environment (inherited by every descendant), death with the parent, output
    to the rank's log, crash traces and on-demand stacks through faulthandler,
    the spec's environment and import path, and a first heartbeat.
    """
    os.setpgid(0, 0)
    if spec.inherit_env is not None:
        os.environ.clear()
        os.environ.update(spec.inherit_env)
    if spec.run_id:
        os.environ[proctree.RUN_ENV] = spec.run_id
    die_with_parent(spec.parent_pid, spec.run_id)
    work = Path(spec.workdir)
    _redirect_output(work / f"rank{spec.rank}.log")
    faulthandler.enable(file=sys.stderr, all_threads=True)
    stacks = open(work / f"rank{spec.rank}.stacks", "w")  # noqa: SIM115 (kept open for the handler)
    faulthandler.register(STACK_DUMP_SIGNAL, file=stacks, all_threads=True, chain=False)
    armed_file(work, spec.rank).touch()
    os.environ.update(spec.env)
    if spec.python_path:
        sys.path[:0] = list(spec.python_path)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [*spec.python_path, *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    (work / f"rank{spec.rank}.beat").touch()
    return RankContext(
        spec.rank, spec.world_size, spec.rank, spec.backend, spec.workdir, spec.layout
    )


def rank_main(spec: RankSpec) -> None:
    """Entry point of a spawned rank.  Always ends in ``os._exit``."""
    from vllm_ep_kit.harness.torch_logs import quiet_opaque_type_deprecations

    quiet_opaque_type_deprecations()
    ctx = prepare_rank_process(spec)
    work = Path(spec.workdir)
    store = None
    try:
        store = join_world(spec, ctx)
        ctx.heartbeat()
        if spec.fn is None:
            raise TypeError("rank_main runs a function: this spec has none (a pooled rank's)")
        value = run_in_context(
            spec.fn, ctx, spec.args, spec.kwargs, spec.layout, spec.all2all_backend
        )
        outcome = RankOutcome(status="ok", value=value)
    except BaseException as exc:  # noqa: BLE001 (report everything, SystemExit included)
        outcome = outcome_from_exception(exc)
        traceback.print_exc()
    _write_outcome(work / f"rank{spec.rank}.result", outcome)
    if outcome.status != "error" and store is not None:
        wait_for_all_outcomes(store, spec.world_size)
        _destroy_world_quietly()
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: interpreter shutdown can block in NCCL/gloo destructors when a
    # peer is gone; the outcome is already on disk.
    os._exit(outcome.exit_code if outcome.status == "error" else 0)


def outcome_bytes(outcome: RankOutcome) -> bytes:
    """The pickled outcome, or a pickled error outcome saying why it could not be pickled."""
    try:
        return pickle.dumps(outcome)
    except Exception as exc:  # noqa: BLE001 (an unpicklable value or exception detail)
        return pickle.dumps(
            RankOutcome(
                status="error",
                error_type=type(exc).__name__,
                message=f"rank outcome could not be pickled: {exc}",
                traceback=outcome.traceback,
                exit_code=1,
            )
        )


def _write_outcome(path: Path, outcome: RankOutcome) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(outcome_bytes(outcome))
    os.replace(tmp, path)


def _destroy_world_quietly() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):  # already reported; exiting anyway
            dist.destroy_process_group()
