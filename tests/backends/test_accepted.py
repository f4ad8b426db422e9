"""backends/accepted.py: the ``--all2all-backend`` names the installed vLLM accepts, read
from vLLM itself; and the kit's registry knows every one of them."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from vllm_ep_kit import backends
from vllm_ep_kit.backends import accepted


class StandInConfig:
    """A release's ParallelConfig in miniature: one removed name falls back, and the
    sequence-parallel rule takes two names."""

    def __init__(self, all2all_backend: str) -> None:
        self.all2all_backend = "new" if all2all_backend == "old" else all2all_backend

    @property
    def use_sequence_parallel_moe(self) -> bool:
        return (
            self.all2all_backend in ("new", "flashinfer_nvlink_two_sided")
            and self.enable_expert_parallel
            and self.tensor_parallel_size > 1
            and self.data_parallel_size > 1
        )


NAMES = ("old", "new", "other", "flashinfer_all2allv", "flashinfer_nvlink_two_sided")


def test_each_name_is_read_as_the_release_treats_it():
    rows = {n: accepted._read(StandInConfig, n, NAMES) for n in NAMES}
    assert rows["old"] == accepted.Accepted("old", "new", accepted.FALLBACK, True)
    assert rows["new"] == accepted.Accepted("new", "new", "", True)
    assert rows["other"] == accepted.Accepted("other", "other", "", False)
    assert rows["flashinfer_all2allv"] == accepted.Accepted(
        "flashinfer_all2allv", "flashinfer_nvlink_two_sided", accepted.ALIAS, True
    )
    assert rows["old"].describe() == "removed: vLLM falls back to new, with a warning"
    assert rows["flashinfer_all2allv"].describe() == "alias of flashinfer_nvlink_two_sided"
    assert rows["new"].describe() == ""


def test_an_alias_whose_target_the_release_lacks_is_a_name_of_its_own():
    row = accepted._read(StandInConfig, "flashinfer_all2allv", ("flashinfer_all2allv",))
    assert row == accepted.Accepted("flashinfer_all2allv", "flashinfer_all2allv", "", False)


def test_a_config_that_refuses_a_name_says_which():
    class Refusing(StandInConfig):
        def __init__(self, all2all_backend: str) -> None:
            raise ValueError("not on this host")

    with pytest.raises(accepted.NotReadable, match=r"all2all_backend='x'.*not on this host"):
        accepted._read(Refusing, "x", ("x",))


@pytest.mark.vllm
def test_the_kit_knows_every_name_the_installed_vllm_accepts():
    from vllm.config.parallel import All2AllBackend

    rows = accepted.accepted()
    assert [r.name for r in rows] == list(typing.get_args(All2AllBackend))
    unknown = [r.name for r in rows if r.name not in backends.known_names()]
    assert unknown == []


@pytest.mark.vllm
def test_the_registry_states_vllms_own_sequence_parallel_rule():
    """What the registry says of each backend agrees with what vLLM's own rule answers."""
    for row in accepted.accepted():
        if row.how:
            continue  # an alias or a fallback: its target's row says it
        spec = backends.get(row.name)
        assert spec.takes_sp == row.sequence_parallel, dataclasses.asdict(row)


@pytest.mark.vllm
def test_the_installed_vllm_falls_back_from_a_removed_name():
    rows = {r.name: r for r in accepted.accepted()}
    removed = [r for r in rows.values() if r.how == accepted.FALLBACK]
    for row in removed:  # each falls back to a name the release accepts as its own
        assert rows[row.runs_as].how == ""
