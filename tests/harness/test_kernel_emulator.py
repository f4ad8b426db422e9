"""The CPU stand-in for FlashInfer's one-sided kernels refuses what the kernels cannot do.

The prepare/finalize tests trust it to move exactly what the kernels move (checked against
them on a GPU: ``test_kernel_emulator_matches_flashinfer_kernels``); here, in one process,
that it refuses misuse the real kernels would turn into corrupt memory or a hang.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.drivers.flashinfer_emulator import FlashInferKernelEmulator


class OneRank:
    """FlashInfer's CommBackend shape for a world of one."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def allgather(self, data):
        return [data]


@pytest.fixture
def a2a(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        mapping = type("Mapping", (), {"world_size": 1, "moe_ep_size": 1})()
        config = type("Config", (), {"comm_backend": OneRank()})()
        yield FlashInferKernelEmulator().one_sided_class()(
            mapping, 8, 2, 4, 1 << 20, mnnvl_config=config
        )
    finally:
        dist.destroy_process_group()


def tokens(n):
    ids = torch.tensor([[0, 1], [2, 3], [1, 2]][:n], dtype=torch.int32)
    return ids, torch.arange(n * 4, dtype=torch.float32).reshape(n, 4).to(torch.bfloat16)


def test_round_trip_and_junk_rows(a2a):
    ids, x = tokens(3)
    got_x, got_ids = a2a.dispatch(
        ids, [x, ids], 5, invalid_token_expert_id=-1, expert_id_payload_index=1
    )
    assert got_x.shape == (1, 5, 4) and torch.equal(got_x[0, :3], x)
    assert torch.isnan(got_x[0, 3:].float()).all()  # rows nobody sent: junk
    assert (got_ids[0, 3:] == -1).all() and torch.equal(got_ids[0, :3], ids)
    torch.testing.assert_close(a2a.combine(got_x, 5), x, rtol=0, atol=0)


def test_refuses_misuse(a2a):
    ids, x = tokens(3)
    with pytest.raises(ValueError, match="runtime bound 2"):
        a2a.dispatch(ids, [x], 2)
    with pytest.raises(RuntimeError, match="combine called before dispatch"):
        a2a.combine(x.reshape(1, 3, 4), 3)
    a2a.dispatch(ids, [x], 3)
    with pytest.raises(RuntimeError, match="dispatch called twice"):
        a2a.dispatch(ids, [x], 3)
    with pytest.raises(ValueError, match="combine bound 4 != dispatch bound 3"):
        a2a.combine(x.reshape(1, 3, 4), 4)
    with pytest.raises(NotImplementedError, match="unquantised"):
        a2a.combine(x.reshape(1, 3, 4), 3, use_low_precision=True)
