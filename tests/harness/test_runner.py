"""The rank runner on CPU (gloo): every failure mode is reported, nothing is left behind.

Rank functions live at module level so spawned ranks can import them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist

from vllm_ep_kit.harness import RankFailures, run_ranks
from vllm_ep_kit.harness.ports import PortInUseError
from vllm_ep_kit.harness.skips import NotRunnableHere

from .conftest import OWN_PROCESSES, new_processes

pytestmark = OWN_PROCESSES

WORLD_SIZES = [2, 4]


# ----------------------------------------------------------------- rank functions


def rank_all_reduce(ctx, scale):
    t = torch.tensor([float(ctx.rank + 1)], device=ctx.device)
    dist.all_reduce(t)
    return {"rank": ctx.rank, "sum": t.item() * scale, "pgid": os.getpgid(0)}


def rank_raises_on(ctx, bad_rank):
    if ctx.rank == bad_rank:
        raise ValueError(f"planted failure on rank {ctx.rank}")
    dist.barrier()  # the others wait for the failed rank, forever without a watchdog


def rank_exits_3(ctx, bad_rank):
    if ctx.rank == bad_rank:
        sys.stdout.flush()
        os._exit(3)
    dist.barrier()


def rank_sys_exit_3(ctx, bad_rank):
    if ctx.rank == bad_rank:
        sys.exit(3)
    dist.barrier()


def rank_segfaults(ctx, bad_rank):
    if ctx.rank == bad_rank:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    dist.barrier()


def stuck_in_all_reduce(ctx):
    """Marker name searched for in the dumped stacks."""
    t = torch.ones(1)
    dist.all_reduce(t)  # the finished ranks never join this one


def rank_hangs_on(ctx, bad_rank, stamp_dir):
    if ctx.rank != bad_rank:
        return "finished"
    Path(stamp_dir, "hang_started").write_text(str(time.time()))
    stuck_in_all_reduce(ctx)


def rank_spawns_children_then_fails(ctx, pid_dir):
    # One grandchild stays in the rank's process group, one escapes with setsid.
    inside = subprocess.Popen(["sleep", "300"])
    escaped = subprocess.Popen(["sleep", "301"], start_new_session=True)
    Path(pid_dir, f"rank{ctx.rank}").write_text(f"{inside.pid} {escaped.pid}")
    time.sleep(0.5)  # let the supervisor see the escaped child once
    if ctx.rank == 0:
        raise RuntimeError("failing with grandchildren alive")
    dist.barrier()


def rank_with_heartbeats(ctx, steps, step_s):
    for _ in range(steps):
        time.sleep(step_s)
        ctx.heartbeat()
    return ctx.rank


def rank_skips(ctx):
    pytest.skip("planted skip: capability missing on this rank")


# ----------------------------------------------------------------- helpers


def test_leftover_check_sees_a_leftover():
    """The orphan check used by every test above can fail."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert [p.pid for p in new_processes(before)] == [sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert new_processes(before) == []


def _section(message: str, rank: int) -> str:
    """The part of a RankFailures message about one rank."""
    start = message.index(f"--- rank {rank}:")
    nxt = message.find("--- rank ", start + 1)
    return message[start:] if nxt < 0 else message[start:nxt]


# ----------------------------------------------------------------- tests


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_success_returns_every_rank_value(world_size, no_leftovers):
    values = run_ranks(rank_all_reduce, world_size, 2.0, backend="gloo", timeout_s=60)
    expected = sum(range(1, world_size + 1)) * 2.0
    assert [v["rank"] for v in values] == list(range(world_size))
    assert all(v["sum"] == expected for v in values)
    assert len({v["pgid"] for v in values}) == world_size  # each rank leads its own group
    assert os.getpgid(0) not in {v["pgid"] for v in values}


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_exception_in_one_rank_is_reported_with_traceback(world_size, no_leftovers):
    bad = world_size - 1
    with pytest.raises(RankFailures) as info:
        run_ranks(rank_raises_on, world_size, bad, backend="gloo", timeout_s=60, failure_grace_s=2)
    message = str(info.value)
    section = _section(message, bad)
    assert "raised ValueError: planted failure on rank" in section
    assert "Traceback (most recent call last)" in section
    assert "rank_raises_on" in section
    # The failing rank is named first; the ranks it left in the barrier are
    # reported after it: as stuck, or with gloo's "connection closed" error.
    assert info.value.failed_ranks[0] == bad
    assert f"first to fail: rank {bad}" in message.splitlines()[0]
    for other in range(world_size - 1):
        section = _section(message, other)
        assert f"after rank {bad} failed" in section


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_exit_code_is_reported(world_size, no_leftovers):
    with pytest.raises(RankFailures) as info:
        run_ranks(rank_exits_3, world_size, 1, backend="gloo", timeout_s=60, failure_grace_s=2)
    assert "exited with code 3" in _section(str(info.value), 1)
    assert info.value.failed_ranks[0] == 1


def test_sys_exit_code_is_reported(no_leftovers):
    with pytest.raises(RankFailures) as info:
        run_ranks(rank_sys_exit_3, 2, 0, backend="gloo", timeout_s=60, failure_grace_s=2)
    section = _section(str(info.value), 0)
    assert "raised SystemExit: 3" in section and "exited with code 3" in section


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_segfault_names_the_signal_and_shows_the_crash_trace(world_size, no_leftovers):
    with pytest.raises(RankFailures) as info:
        run_ranks(rank_segfaults, world_size, 0, backend="gloo", timeout_s=60, failure_grace_s=2)
    section = _section(str(info.value), 0)
    assert "killed by signal SIGSEGV" in section
    assert "Segmentation fault" in section  # faulthandler's trace from the rank's log
    assert "rank_segfaults" in section


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_watchdog_stops_a_rank_hung_in_a_collective(world_size, tmp_path, no_leftovers, deadline):
    timeout_s = 8
    bad = world_size - 1
    with deadline(timeout_s + 60), pytest.raises(RankFailures) as info:
        run_ranks(
            rank_hangs_on, world_size, bad, str(tmp_path), backend="gloo", timeout_s=timeout_s
        )
    stamp = tmp_path / "hang_started"
    assert stamp.exists(), f"rank {bad} never reached its hang: {info.value}"
    fired_after = time.time() - float(stamp.read_text())
    assert fired_after < timeout_s + 10, f"watchdog took {fired_after:.1f} s"
    assert info.value.failed_ranks == [bad]  # the finished ranks are not blamed
    section = _section(str(info.value), bad)
    assert f"stopped by watchdog: no progress for {timeout_s} s" in section
    assert "stuck_in_all_reduce" in section  # its Python stack was dumped
    assert "all_reduce" in section
    finished = ", ".join(f"rank {r}" for r in range(world_size) if r != bad)
    assert f"finished while the others were stuck: {finished}" in str(info.value)


def test_heartbeats_keep_a_long_rank_alive(no_leftovers):
    # 6 s of work with a 3 s watchdog: only the heartbeats keep it running.
    assert run_ranks(rank_with_heartbeats, 2, 12, 0.5, backend="gloo", timeout_s=3) == [0, 1]


def test_grandchildren_are_killed_even_if_they_escape_the_group(tmp_path, no_leftovers):
    with pytest.raises(RankFailures) as info:
        run_ranks(
            rank_spawns_children_then_fails,
            2,
            str(tmp_path),
            backend="gloo",
            timeout_s=60,
            failure_grace_s=2,
        )
    assert "failing with grandchildren alive" in str(info.value)
    pids = [int(p) for f in tmp_path.iterdir() for p in f.read_text().split()]
    assert len(pids) == 4
    time.sleep(0.2)
    alive = [
        p
        for p in pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert not alive, f"grandchildren left alive: {alive}"


def test_taken_port_fails_fast_with_its_number(no_leftovers):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(PortInUseError, match=f"master_port={port}"):
            run_ranks(rank_all_reduce, 2, 1.0, backend="gloo", master_port=port)
        assert time.monotonic() - start < 5
        # With the default (port 0) the run succeeds while that port stays taken.
        assert len(run_ranks(rank_all_reduce, 2, 1.0, backend="gloo")) == 2


def test_all_ranks_skipping_skips_the_test(no_leftovers, monkeypatch):
    monkeypatch.delenv("VLLM_EP_KIT_STRICT", raising=False)
    with pytest.raises(NotRunnableHere, match="planted skip"):
        run_ranks(rank_skips, 2, backend="gloo", timeout_s=60)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"world_size": 0}, "world_size=0: expected an integer >= 1"),
        ({"world_size": 2, "backend": "mpi"}, "backend='mpi'"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_ranks(rank_all_reduce, **kwargs)


def test_nccl_without_gpus_skips_with_reason(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs; the no-GPU path cannot be exercised")
    monkeypatch.delenv("VLLM_EP_KIT_STRICT", raising=False)
    with pytest.raises(NotRunnableHere, match="needs 2 CUDA GPUs, 0 visible"):
        run_ranks(rank_all_reduce, 2, 1.0, backend="nccl")


@pytest.mark.parametrize(
    "world_size", [pytest.param(n, marks=pytest.mark.gpus(n), id=f"{n}gpu") for n in (1, 2, 4)]
)
def test_nccl_ranks_on_gpus(world_size, no_leftovers):
    values = run_ranks(rank_all_reduce, world_size, 1.0, backend="nccl", timeout_s=120)
    assert [v["sum"] for v in values] == [sum(range(1, world_size + 1))] * world_size


def test_signal_names_are_readable():
    from vllm_ep_kit.harness.runner import signal_name

    assert signal_name(signal.SIGSEGV) == "SIGSEGV"
    assert signal_name(200) == "signal 200"


def rank_fails_its_own_way(ctx):
    if ctx.rank == 1:
        raise ValueError("rank one's own problem")
    if ctx.rank == 2:
        {}["rank two's missing key"]
    return ctx.rank


def test_each_failing_rank_shows_its_own_exception_and_traceback(no_leftovers):
    """Every failing rank's section is checked, not only the first one's: the others'
    tracebacks cannot be dropped unseen."""
    with pytest.raises(RankFailures) as info:
        run_ranks(rank_fails_its_own_way, 3, backend="gloo", timeout_s=60, failure_grace_s=5)
    assert sorted(info.value.failed_ranks) == [1, 2]
    one, two = _section(str(info.value), 1), _section(str(info.value), 2)
    assert "raised ValueError: rank one's own problem" in one
    assert 'raise ValueError("rank one\'s own problem")' in one  # its traceback
    assert "KeyError" in two and "rank two's missing key" in two
    assert '{}["rank two\'s missing key"]' in two
    assert "ValueError" not in two and "KeyError" not in one


def rank_binds_vllm_ipc_and_dies(ctx, out: Path):
    """Binds a zmq socket where vLLM puts its IPC endpoints, says where, and rank 1 is
    killed: nothing unlinks its socket file (nor rank 0's, stopped at teardown)."""
    import zmq
    from vllm.utils.network_utils import get_open_zmq_ipc_path

    path = get_open_zmq_ipc_path().removeprefix("ipc://")
    zmq.Context().socket(zmq.PULL).bind(f"ipc://{path}")
    assert Path(path).is_socket()
    (out / f"ipc{ctx.rank}").write_text(path)
    dist.barrier()
    if ctx.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()


@pytest.mark.vllm
def test_vllm_ipc_sockets_of_killed_ranks_are_removed_with_the_run(tmp_path, monkeypatch):
    """vLLM puts zmq ``ipc://`` files in VLLM_RPC_BASE_PATH (the system's temp folder by
    default), and a killed rank leaves them there; the runner points it at the run's own
    folder, removed with the run."""
    monkeypatch.delenv("VLLM_RPC_BASE_PATH", raising=False)
    with pytest.raises(RankFailures) as failure:
        run_ranks(rank_binds_vllm_ipc_and_dies, 2, tmp_path, timeout_s=60)
    assert 1 in failure.value.failed_ranks
    paths = [Path((tmp_path / f"ipc{rank}").read_text()) for rank in range(2)]
    assert [p for p in paths if p.exists()] == []
