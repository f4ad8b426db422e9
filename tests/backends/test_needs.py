"""What a backend needs, judged against the machine: the first unmet need is the reason."""

from __future__ import annotations

import importlib

import pytest

from vllm_ep_kit.backends.spec import Needs
from vllm_ep_kit.harness import probes

# the module (the package's ``usability`` attribute is its function of that name)
usability = importlib.import_module("vllm_ep_kit.backends.usability")


@pytest.fixture
def two_gpus(monkeypatch):
    """A host with two GPUs, NVLink and every module (the probes stand in for it)."""
    monkeypatch.setattr(probes, "gpu_count", lambda: 2)
    monkeypatch.setattr(probes, "module_available", lambda name: True)
    monkeypatch.setattr(usability.probes, "nvlink", lambda: probes.Probe("nvlink", True, "ok"))


def test_a_rocm_backend_is_refused_on_this_kits_hosts_whatever_they_have(two_gpus):
    assert usability.unmet(Needs(min_gpus=2, rocm=True)) == (
        "needs AMD GPUs under ROCm (this kit probes NVIDIA hosts)"
    )


def test_nvswitch_multicast_is_said_unprobed_once_everything_else_is_met(two_gpus):
    assert usability.unmet(Needs(min_gpus=2, nvlink=True, multicast=True)).startswith(
        "needs NVSwitch multicast, which this kit does not probe"
    )
    assert usability.unmet(Needs(min_gpus=4, multicast=True)) == "needs 4 GPUs, 2 visible"


def test_the_nccl_floor_and_the_platform_are_part_of_the_description():
    assert Needs(min_gpus=2, modules=("deep_ep",), nccl="2.30.4").describe() == (
        "2+ GPUs, NCCL >= 2.30.4, deep_ep"
    )
    assert Needs(min_gpus=2, nvlink=True, multicast=True).describe() == (
        "2+ GPUs with NVLink, NVSwitch multicast"
    )
    assert Needs(rocm=True).describe() == "ROCm"
