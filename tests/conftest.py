"""Load the plugin from the source tree when the package is not installed
(e.g. a GPU host that runs the suite from a carried checkout), and hold the suite
to its own rule: a test that reaches vLLM carries the ``vllm`` marker."""

from importlib.metadata import entry_points

import pytest

from tests.vllm_marker import unmarked_vllm_tests

PLUGIN = "vllm_ep_kit.harness.pytest_plugin"
_installed = any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))

pytest_plugins = ["pytester"] + ([] if _installed else [PLUGIN])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "affected_release: runs a fetched vLLM release's sources (VLLM_EP_KIT_AFFECTED_VLLM), "
        "not the installed vLLM; set by tests/patches/conftest.py, and left out of make "
        "test's second leg, whose subject is the installed vLLM",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = unmarked_vllm_tests(items)
    if problems:
        raise pytest.UsageError("\n".join(problems))
