"""The persistent rank pool: reuse, isolation, teardown after a failure or a hang, no orphans.

All on CPU over gloo with real processes; each check looks at the processes
themselves (pids, psutil), not at the pool's own bookkeeping alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from vllm_ep_kit.harness import RankFailures, run_ranks
from vllm_ep_kit.harness import pool as pool_module
from vllm_ep_kit.harness.pool import POOL_ENV, PoolKey, RankPool, pooled_run
from vllm_ep_kit.reference.layout import ParallelLayout

KEY = PoolKey(world_size=2, backend="gloo")


@pytest.fixture(autouse=True)
def pool_off_unless_set_here(monkeypatch):
    """These tests drive pools themselves; where one tests run_ranks' routing, it sets
    the variable itself (``make test`` runs with ``--ep-pool``)."""
    monkeypatch.delenv(POOL_ENV, raising=False)


def whoami(ctx):
    return os.getpid(), ctx.rank


def set_env_and_report(ctx, name):
    before = os.environ.get(name)
    os.environ[name] = "leaked"
    return before


def fail_on_rank(ctx, bad_rank):
    if ctx.rank == bad_rank:
        raise ValueError(f"rank {ctx.rank} was told to fail")
    return ctx.rank


def hang_on_rank(ctx, bad_rank):
    if ctx.rank == bad_rank:
        time.sleep(3600)  # a hang: no heartbeat
    return ctx.rank


def destroy_world(ctx):
    import torch.distributed as dist

    dist.destroy_process_group()


def spawn_grandchild(ctx):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    return child.pid


def vllm_group_sizes(ctx):
    from vllm.distributed import parallel_state as ps

    return os.getpid(), ps.get_dp_group().world_size, ps.get_ep_group().world_size


def gone(pids) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [
            p
            for p in pids
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def pool():
    pool = RankPool(KEY)
    yield pool
    pool.close()
    assert gone(pool.pids)


def test_pool_reuses_its_processes(pool):
    first = pool.run(whoami)
    second = pool.run(whoami)
    assert first == second and [rank for _, rank in first] == [0, 1]
    assert {pid for pid, _ in first} == set(pool.pids) and os.getpid() not in pool.pids
    assert pool.tasks_run == 2


def test_environment_changes_do_not_leak_into_the_next_task(pool):
    assert pool.run(set_env_and_report, "EP_KIT_POOL_PROBE") == [None, None]
    assert pool.run(set_env_and_report, "EP_KIT_POOL_PROBE") == [None, None]


def read_env(ctx, name):
    return os.environ.get(name)


def test_a_task_sees_the_parents_environment_of_now_as_a_fresh_rank_would(pool, monkeypatch):
    monkeypatch.setenv("EP_KIT_POOL_SET_LATER", "now")
    assert pool.run(read_env, "EP_KIT_POOL_SET_LATER") == ["now", "now"]
    monkeypatch.setenv("EP_KIT_POOL_SET_LATER", "changed")
    assert pool.run(read_env, "EP_KIT_POOL_SET_LATER") == ["changed", "changed"]
    monkeypatch.delenv("EP_KIT_POOL_SET_LATER")
    assert pool.run(read_env, "EP_KIT_POOL_SET_LATER") == [None, None]
    home = os.environ["HOME"]
    monkeypatch.delenv("HOME")  # set when the ranks started, unset for this task only
    assert pool.run(read_env, "HOME") == [None, None]
    monkeypatch.setenv("HOME", home)
    assert pool.run(read_env, "HOME") == [home, home]


def where_started(ctx, name):
    preloaded = "vllm_ep_kit.harness.rank_imports" in sys.modules  # before this task imports
    from vllm_ep_kit.harness.rank_imports import VLLM_MODULES

    every = all(m in sys.modules for m in VLLM_MODULES)
    return os.getppid(), os.environ.get(name), os.environ.get("HOME"), preloaded, every


@pytest.mark.vllm
def test_ranks_fork_from_a_server_that_imported_vllm_and_take_the_environment_of_now(
    monkeypatch,
):
    """One vLLM import for the whole pool: both ranks come from one fork server (a child
    of this process) with torch and vLLM imported; they still start with this process's
    environment as it is when the pool starts, not the server's."""
    monkeypatch.setenv("EP_KIT_POOL_SET_BEFORE_START", "yes")
    monkeypatch.delenv("HOME")
    pool = RankPool(KEY)
    try:
        seen = pool.run(where_started, "EP_KIT_POOL_SET_BEFORE_START")
    finally:
        pool.close()
    assert gone(pool.pids)
    (server,) = {parent for parent, *_ in seen}
    assert server != os.getpid() and psutil.Process(server).ppid() == os.getpid()
    assert [(env, home) for _, env, home, _, _ in seen] == [("yes", None), ("yes", None)]
    assert [(preloaded, every) for *_, preloaded, every in seen] == [(True, True)] * 2


def test_failure_tears_the_pool_down_with_the_rank_error(pool):
    pids = pool.pids
    with pytest.raises(RankFailures) as info:
        pool.run(fail_on_rank, 1, failure_grace_s=5)
    text = str(info.value)
    assert "rank 1: raised ValueError: rank 1 was told to fail" in text
    assert "the rank pool for 2 ranks, gloo" in text and "torn down" in text
    assert info.value.failed_ranks == [1]  # rank 0 finished its task: not blamed
    assert pool.closed and gone(pids)


def test_hang_is_stopped_with_stacks_and_the_next_run_gets_a_fresh_pool():
    first = pooled_run(whoami, KEY, (), {}, timeout_s=60, failure_grace_s=5)
    started = time.monotonic()
    with pytest.raises(RankFailures) as info:
        pooled_run(hang_on_rank, KEY, (0,), {}, timeout_s=3, failure_grace_s=60)
    assert time.monotonic() - started < 30
    text = str(info.value)
    assert "rank 0: stopped by watchdog: no progress for 3 s" in text
    assert "hang_on_rank" in text  # the stuck rank's Python stack
    assert gone([pid for pid, _ in first])
    fresh = pooled_run(whoami, KEY, (), {}, timeout_s=60, failure_grace_s=5)
    assert not {pid for pid, _ in fresh} & {pid for pid, _ in first}
    pooled_run(whoami, KEY, (), {}, timeout_s=60, failure_grace_s=5)


def test_a_task_that_breaks_the_world_group_fails_the_isolation_check(pool):
    with pytest.raises(RankFailures) as info:
        pool.run(destroy_world, failure_grace_s=5)
    assert "destroyed or replaced the world process group" in str(info.value)
    assert pool.closed


def test_closing_leaves_no_orphans(pool):
    grandchildren = pool.run(spawn_grandchild)
    assert all(psutil.pid_exists(pid) for pid in grandchildren)
    pool.close()
    assert gone(grandchildren) and gone(pool.pids)


def test_run_ranks_goes_through_the_pool_when_asked(monkeypatch):
    monkeypatch.setenv(POOL_ENV, "1")
    first = run_ranks(whoami, 2, backend="gloo")
    second = run_ranks(whoami, 2, backend="gloo")
    assert first == second
    monkeypatch.delenv(POOL_ENV)
    third = run_ranks(whoami, 2, backend="gloo")  # a process per call again
    assert not {pid for pid, _ in third} & {pid for pid, _ in first}


def test_fresh_ranks_takes_processes_of_its_own_and_gives_the_pool_back(monkeypatch):
    monkeypatch.setenv(POOL_ENV, "1")
    pooled = run_ranks(whoami, 2, backend="gloo")
    with pool_module.fresh_ranks("measures process-wide state"):
        assert POOL_ENV not in os.environ  # processes started here do not pool either
        own = run_ranks(whoami, 2, backend="gloo")
    assert os.environ[POOL_ENV] == "1"
    again = run_ranks(whoami, 2, backend="gloo")
    assert again == pooled  # the same pooled processes serve after the block
    assert not {pid for pid, _ in own} & {pid for pid, _ in pooled}
    with pytest.raises(ValueError, match="say why"), pool_module.fresh_ranks("  "):
        pass


def vllm_state_left(ctx):
    """Whether vLLM's parallel state is built when a task without a layout runs."""
    if "vllm.distributed.parallel_state" not in sys.modules:
        return False
    from vllm.distributed import parallel_state as ps

    return ps.model_parallel_is_initialized()


def leave_vllm_state_built(ctx):
    from vllm.distributed import parallel_state as ps

    from vllm_ep_kit.harness.vllm_state import build_vllm_config

    with set_config(build_vllm_config(ParallelLayout(dp=2), ctx.rank, "cpu", None)):
        ps.init_distributed_environment(
            world_size=2, rank=ctx.rank, local_rank=ctx.rank, backend="gloo"
        )
        ps.initialize_model_parallel(tensor_model_parallel_size=1)


def set_config(config):
    from vllm.config import set_current_vllm_config

    return set_current_vllm_config(config)


@pytest.mark.vllm
def test_pool_builds_each_tasks_vllm_layout_in_the_same_processes():
    """One pool per (world size, backend): layouts come and go with their tasks."""
    pool = RankPool(PoolKey(2, "gloo"))
    try:
        dp = pool.run(
            vllm_group_sizes,
            layout=ParallelLayout(tp=1, dp=2),
            all2all_backend="allgather_reducescatter",
            timeout_s=120,
        )
        tp = pool.run(vllm_group_sizes, layout=ParallelLayout(tp=2, dp=1), timeout_s=120)
        assert [pid for pid, *_ in dp] == [pid for pid, *_ in tp]  # the same processes
        assert [sizes for _, *sizes in dp] == [[2, 2]] * 2  # DP=2, EP=2
        assert [sizes for _, *sizes in tp] == [[1, 2]] * 2  # DP=1, EP=2 (= TP)
        assert pool.run(vllm_state_left, timeout_s=60) == [False, False]
        with pytest.raises(ValueError, match="needs 4 ranks, this pool has 2"):
            pool.run(vllm_group_sizes, layout=ParallelLayout(tp=2, dp=2))
    finally:
        pool.close()
    assert gone(pool.pids)


@pytest.mark.vllm
def test_a_task_leaving_vllm_state_built_fails_the_isolation_check():
    pool = RankPool(PoolKey(2, "gloo"))
    try:
        with pytest.raises(RankFailures, match="left vLLM's parallel state built"):
            pool.run(leave_vllm_state_built, timeout_s=120)
        assert pool.closed
    finally:
        pool.close()
    assert gone(pool.pids)


def replace_agrs_combine(ctx, restore: bool):
    """A negative control's mutant of vLLM's AGRS combine, restored or left in place."""
    from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager

    from vllm_ep_kit.patches.base import swapped

    def combine(self, hidden_states, is_sequence_parallel=False):
        return hidden_states

    if restore:
        with swapped(AgRsAll2AllManager, combine=combine):
            return AgRsAll2AllManager.combine is combine
    AgRsAll2AllManager.combine = combine
    return True


@pytest.mark.vllm
def test_a_task_leaving_a_vllm_method_replaced_fails_the_isolation_check():
    """The mutant left in place fails its own task, whether the task imported vLLM's module
    itself or found it imported; a restored one passes and the next task sees vLLM's own."""
    pool = RankPool(PoolKey(2, "gloo"))
    try:
        with pytest.raises(RankFailures, match=r"changed vLLM's code.*AgRsAll2AllManager\.combine"):
            pool.run(replace_agrs_combine, False, timeout_s=120)  # imports all2all itself
    finally:
        pool.close()
    pool = RankPool(PoolKey(2, "gloo"))
    try:
        assert pool.run(replace_agrs_combine, True, timeout_s=120) == [True, True]
        with pytest.raises(RankFailures, match=r"AgRsAll2AllManager\.combine replaced"):
            pool.run(replace_agrs_combine, False, timeout_s=120)  # all2all imported already
    finally:
        pool.close()
    assert gone(pool.pids)


def test_a_rank_killed_between_tasks_gets_a_fresh_pool_not_a_broken_pipe():
    """Something outside kills a pooled rank between two tests: the next run starts a new
    pool (before: BrokenPipeError sending it the task)."""
    key = PoolKey(2, "gloo")
    first = pooled_run(whoami, key, (), {}, timeout_s=60, failure_grace_s=5)
    old = pool_module._POOLS[key]
    psutil.Process(old.pids[1]).kill()
    old._live[1].proc.join(timeout=10)
    try:
        second = pooled_run(whoami, key, (), {}, timeout_s=60, failure_grace_s=5)
        assert [rank for _, rank in second] == [0, 1] and second != first
        assert pool_module._POOLS[key] is not old and old.closed
    finally:
        pool_module._POOLS.pop(key).close()
    assert gone(old.pids)


def test_a_vllm_layout_on_a_gloo_pool_needs_a_cpu_host_or_a_gpu_per_rank(monkeypatch):
    """With fewer GPUs than ranks, vLLM's CUDA platform binds ranks to GPUs that are not
    there (on 1x H200 two pooled gloo ranks hung in the CUDA communicator's rendezvous):
    the pool says so before it sends the task, and stays usable."""
    from vllm_ep_kit.harness import probes
    from vllm_ep_kit.harness.skips import NotRunnableHere

    pool = RankPool(PoolKey(2, "gloo"))
    try:
        monkeypatch.setattr(probes, "gpu_count", lambda: 1)
        with pytest.raises(NotRunnableHere, match="binds each of the 2 ranks to its own GPU"):
            pool.run(whoami, layout=ParallelLayout(tp=1, dp=2), timeout_s=60)
        monkeypatch.undo()
        assert not pool.closed
        assert len(pool.run(whoami, timeout_s=60)) == 2
    finally:
        pool.close()
