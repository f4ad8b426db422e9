"""Shared multi-rank runs start once per key, and a failed start is not started again."""

from __future__ import annotations

import pytest

from vllm_ep_kit.testing.shared_runs import SharedRuns


def test_a_run_starts_once_per_key_and_its_failure_is_reraised_not_rerun():
    calls = []

    def start(layout):
        calls.append(layout)
        if layout == "bad":
            raise RuntimeError(f"ranks of {layout} failed")
        return [layout] * 2

    runs = SharedRuns(start)
    assert runs("dp2") == ["dp2", "dp2"] and runs("dp2") == ["dp2", "dp2"]
    for _ in range(3):
        with pytest.raises(RuntimeError, match="ranks of bad failed"):
            runs("bad")
    assert calls == ["dp2", "bad"] and runs.starts == 2


def test_a_skip_is_shared_too():
    runs = SharedRuns(lambda: pytest.skip("needs 4 GPUs"))
    for _ in range(2):
        with pytest.raises(pytest.skip.Exception, match="needs 4 GPUs"):
            runs()
