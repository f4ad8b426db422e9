"""The suite's own rule: a test that reaches vLLM carries the ``vllm`` marker, or the
collection fails (``make test``'s second leg selects ``-m vllm``)."""

import pytest

CASES = """
import pytest


def rank_builds_groups(ctx):
    from vllm.distributed import parallel_state

    return parallel_state


def helper():
    return rank_builds_groups


def test_reaches_vllm_through_a_helper():
    assert helper()


@pytest.mark.parametrize("fn", [rank_builds_groups])
def test_reaches_vllm_through_its_parameters(fn):
    assert fn


@pytest.mark.vllm
def test_marked():
    import vllm  # noqa: F401 (the import is the point)


def test_plain():
    pass
"""

CONFTEST = """
import pytest

from tests.vllm_marker import unmarked_vllm_tests


def pytest_collection_modifyitems(config, items):
    problems = unmarked_vllm_tests(items)
    if problems:
        raise pytest.UsageError("\\n".join(problems))
"""


def test_a_test_that_reaches_vllm_unmarked_fails_the_collection(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cases=CASES)
    result = pytester.runpytest("--collect-only", "-p", "no:vllm_ep_kit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if "without @pytest.mark.vllm" in line]
    assert len(errors) == 2, result.stderr.lines
    assert "test_cases.py::test_reaches_vllm_through_a_helper: " in errors[0]
    assert (
        "test_cases.py::test_reaches_vllm_through_its_parameters[rank_builds_groups]: "
        in (errors[1])
    )
    assert all("(test_cases.py:5, in rank_builds_groups)" in line for line in errors)


def test_marked_and_unrelated_tests_collect(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cases=CASES.split("def helper")[0] + "\ndef test_plain():\n    pass\n")
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:vllm_ep_kit")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*1 test collected*"])
