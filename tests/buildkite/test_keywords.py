"""lint/keywords.py: a ``-k`` expression leaves a test out only when it is false whatever
the words matching no name of the test (ids, marks) turn out to be."""

from __future__ import annotations

import pytest

from vllm_ep_kit.lint.keywords import leaves_out

NAMES = ["test_all_reduce_tp2", "test_comm.py", "tests", "distributed"]


@pytest.mark.parametrize(
    "expression",
    [
        "not tp2",
        "not TP2",  # pytest matches without case
        "not distributed",  # a folder above the file is a name too
        "not tp2 and FLASHINFER",
        "FLASHINFER and not tp2",
        "not (tp2 or FLASHINFER)",
        "not (reduce and comm)",
        "not tp2 or not reduce",
    ],
)
def test_an_expression_false_of_the_names_leaves_the_test_out(expression):
    assert leaves_out(expression, NAMES) is True


@pytest.mark.parametrize(
    "expression",
    [
        "tp2",
        "FLASHINFER",  # an id or a mark the tree does not show: may keep it
        "not FLASHINFER",
        "tp2 or not tp2",
        "not tp2 or FLASHINFER",
        "not (tp2 and FLASHINFER)",
        "reduce and comm",
        "not not tp2",
    ],
)
def test_an_expression_that_may_be_true_keeps_the_test(expression):
    assert leaves_out(expression, NAMES) is False


@pytest.mark.parametrize(
    "expression", ["", "not", "(not tp2", "not tp2)", "and tp2", "not tp2 tp3", "(", ")"]
)
def test_an_expression_pytest_would_reject_leaves_out_nothing(expression):
    assert leaves_out(expression, NAMES) is False
