"""missing-test: ``pytest file.py::name`` where the file defines no test ``name`` (module-level
functions or bound names, ``Test*`` classes and their methods; ``[params]`` ids stripped)."""

from __future__ import annotations

import pytest

RULE = "missing-test"

MODULE = """\
import pytest


def test_plain():
    pass


async def test_async():
    pass


class TestGroup:
    def test_method(self):
        pass

    async def test_async_method(self):
        pass


class TestInherits(Base):
    pass


test_alias = test_plain
test_annotated: object = test_plain
"""

STEP = """\
group: g
steps:
  - label: unit
    commands:
      - echo start
      - "{command}"
"""


def lint(ci, command: str, module: str = MODULE):
    return ci.write("tests/test_mod.py", module).area(STEP.format(command=command)).findings(RULE)


def test_a_selector_naming_no_test_in_the_file_is_found_at_its_command(ci):
    (finding,) = lint(ci, "pytest -v tests/test_mod.py::test_absent")
    assert finding.rule == RULE
    assert finding.path == ".buildkite/test_areas/area.yaml"
    assert finding.line == ci.line_of("pytest -v tests/test_mod.py")
    assert finding.message == (
        "step 'unit' runs tests/test_mod.py::test_absent, but tests/test_mod.py has no test "
        "test_absent"
    )
    assert finding.hint == "fix the name, or run tests/test_mod.py whole"


@pytest.mark.parametrize(
    "selector",
    [
        "test_plain",
        "test_async",
        "TestGroup",
        "TestGroup::test_method",
        "TestGroup::test_async_method",
        "test_alias",
        "test_annotated",
        "test_plain[1-2]",
        "TestGroup::test_method[a]",
        "TestGroup[x]::test_method",
        "test_plain[a[1]]",  # an id holding a bracket of its own
    ],
)
def test_a_selector_naming_a_test_of_the_file_is_clean(ci, selector):
    assert lint(ci, f"pytest -v 'tests/test_mod.py::{selector}'") == []


def test_a_method_the_class_does_not_define_is_found_as_class_and_method(ci):
    (finding,) = lint(ci, "pytest -v tests/test_mod.py::TestGroup::test_absent")
    assert finding.message == (
        "step 'unit' runs tests/test_mod.py::TestGroup::test_absent, but tests/test_mod.py "
        "has no test TestGroup::test_absent"
    )


def test_an_absent_class_is_found_by_its_name_alone(ci):
    (finding,) = lint(ci, "pytest -v tests/test_mod.py::TestAbsent::test_method")
    assert finding.message.endswith("has no test TestAbsent")


def test_a_name_under_a_function_is_found(ci):
    (finding,) = lint(ci, "pytest -v tests/test_mod.py::test_plain::test_method")
    assert finding.message.endswith("has no test test_plain::test_method")


def test_a_parameter_id_is_stripped_from_the_name_it_reports(ci):
    (finding,) = lint(ci, "pytest -v 'tests/test_mod.py::test_absent[1]'")
    assert finding.message == (
        "step 'unit' runs tests/test_mod.py::test_absent[1], but tests/test_mod.py has no test "
        "test_absent"
    )


def test_a_method_of_a_class_with_bases_is_not_judged_since_it_may_be_inherited(ci):
    assert lint(ci, "pytest -v tests/test_mod.py::TestInherits::test_from_base") == []


def test_a_method_of_a_class_without_bases_is_judged(ci):
    module = MODULE.replace("TestInherits(Base)", "TestInherits")
    (finding,) = lint(ci, "pytest -v tests/test_mod.py::TestInherits::test_from_base", module)
    assert finding.message.endswith("has no test TestInherits::test_from_base")


@pytest.mark.parametrize("name", ["test_alias", "test_annotated"])
def test_a_name_under_a_bound_name_is_not_judged(ci, name):
    assert lint(ci, f"pytest -v tests/test_mod.py::{name}::test_anything") == []


def test_a_name_bound_to_a_tuple_is_not_a_test(ci):
    module = MODULE + "test_left, test_right = test_plain, test_plain\n"
    (finding,) = lint(ci, "pytest -v tests/test_mod.py::test_left", module)
    assert finding.message.endswith("has no test test_left")


def test_a_method_of_a_class_is_not_a_module_level_test(ci):
    (finding,) = lint(ci, "pytest -v tests/test_mod.py::test_method")
    assert finding.message.endswith("has no test test_method")


def test_an_empty_part_of_the_selector_is_skipped(ci):
    # ``TestGroup::`` is the class, not a method named ''
    assert lint(ci, "pytest -v tests/test_mod.py::TestGroup::") == []
    (finding,) = lint(ci, "pytest -v tests/test_mod.py::::test_absent")
    assert finding.message.endswith("has no test test_absent")


def test_a_selector_of_only_separators_is_not_judged(ci):
    assert lint(ci, "pytest -v tests/test_mod.py::::") == []


def test_a_file_run_whole_is_clean(ci):
    assert lint(ci, "pytest -v tests/test_mod.py") == []


def test_a_file_that_does_not_parse_is_not_judged(ci):
    assert lint(ci, "pytest -v tests/test_mod.py::test_absent", "def broken(:\n") == []


def test_a_selector_on_a_missing_file_is_left_to_path_exists(ci):
    assert lint(ci, "pytest -v tests/test_gone.py::test_absent") == []


def test_a_selector_on_a_folder_named_like_a_python_file_is_not_judged(ci):
    ci.write("tests/suite.py/test_a.py")
    assert lint(ci, "pytest -v tests/suite.py::test_absent") == []


def test_a_selector_on_a_file_that_is_not_python_is_not_judged(ci):
    # the file parses as Python, so only its suffix keeps it out
    ci.write("tests/cases.txt", "x = 1\n")
    assert lint(ci, "pytest -v tests/cases.txt::test_absent") == []


def test_a_selector_on_a_file_outside_the_checkout_is_not_judged(ci):
    assert lint(ci, "pytest -v /opt/tests/test_mod.py::test_absent") == []


def test_a_selector_after_one_on_a_missing_file_is_still_judged(ci):
    findings = lint(ci, "pytest tests/test_gone.py::test_x tests/test_mod.py::test_absent")
    assert [f.message for f in findings] == [
        "step 'unit' runs tests/test_mod.py::test_absent, but tests/test_mod.py has no test "
        "test_absent"
    ]


def test_a_selector_after_a_file_without_one_is_still_judged(ci):
    findings = lint(ci, "pytest tests/test_mod.py tests/test_mod.py::test_absent")
    assert [f.message.split(",")[0] for f in findings] == [
        "step 'unit' runs tests/test_mod.py::test_absent"
    ]


def test_a_file_is_named_as_written_and_as_resolved_from_the_working_dir(ci):
    ci.write("tests/test_mod.py", MODULE).area(
        """\
        group: g
        steps:
          - label: unit
            working_dir: /vllm-workspace/tests
            commands:
              - echo start
              - pytest -v test_mod.py::test_absent
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("pytest -v test_mod.py")
    assert finding.message == (
        "step 'unit' runs test_mod.py::test_absent, but tests/test_mod.py has no test test_absent"
    )
    assert finding.hint == "fix the name, or run test_mod.py whole"


BOUND_ELSEWHERE = """\
import sys
from shared import test_common, check as test_renamed

if sys.version_info >= (3,):
    def test_under_if():
        pass
else:
    def test_under_else():
        pass

try:
    import numpy
except ImportError:
    def test_without_numpy():
        pass
finally:
    def test_in_finally():
        pass

import test_helpers.checks


class TestOuter:
    class TestInner:
        def test_x(self):
            pass

    test_bound = test_common

    if True:
        def test_under_class_if(self):
            pass
"""


@pytest.mark.parametrize(
    "selector",
    [
        "test_common",  # imported: pytest collects it from this module
        "test_renamed",
        "test_under_if",
        "test_under_else",
        "test_without_numpy",
        "test_in_finally",
        "test_helpers",  # `import a.b` binds a
        "TestOuter::TestInner::test_x",
        "TestOuter::test_bound",
        "TestOuter::test_under_class_if",
    ],
)
def test_a_test_bound_by_an_import_a_block_or_a_nested_class_exists(ci, selector):
    assert lint(ci, f"pytest -v tests/test_mod.py::{selector}", BOUND_ELSEWHERE) == []


@pytest.mark.parametrize(
    ("selector", "lacking"),
    [("test_gone", "test_gone"), ("TestOuter::test_gone", "TestOuter::test_gone")],
)
def test_a_name_bound_nowhere_in_such_a_module_is_still_found(ci, selector, lacking):
    (finding,) = lint(ci, f"pytest -v tests/test_mod.py::{selector}", BOUND_ELSEWHERE)
    assert finding.message.endswith(f"but tests/test_mod.py has no test {lacking}")


def test_a_star_import_may_bind_any_test_so_none_is_judged(ci):
    module = "from shared import *\n\n\ndef test_a():\n    pass\n"
    assert lint(ci, "pytest -v tests/test_mod.py::test_anything", module) == []


def test_a_deselect_value_no_path_starts_with_is_found(ci):
    (finding,) = lint(
        ci, "pytest -v tests/test_mod.py --deselect=tests/test_plain[1-2] --deselect tests/test_m"
    )
    assert finding.line == ci.line_of("--deselect")
    assert finding.message == (
        "step 'unit' deselects tests/test_plain[1-2], but no test id starts with it: no path "
        "in the tree does (nothing is deselected)"
    )
    assert finding.hint == "write the test id from the checkout's root: path.py::test[params]"


def test_a_deselect_id_of_a_test_its_file_lacks_is_found(ci):
    (finding,) = lint(ci, "pytest -v tests/test_mod.py --deselect tests/test_mod.py::test_gone[1]")
    assert finding.message == (
        "step 'unit' deselects tests/test_mod.py::test_gone[1], but tests/test_mod.py has no test "
        "test_gone (nothing is deselected)"
    )


def test_a_deselect_id_of_a_file_that_does_not_exist_is_found(ci):
    (finding,) = lint(ci, "pytest -v tests/test_mod.py --deselect=tests/test_lost.py::test_plain")
    assert finding.message.endswith("but tests/test_lost.py is no file (nothing is deselected)")


def test_a_deselect_id_without_its_file_says_it_names_none(ci):
    (finding,) = lint(ci, "pytest -v tests/test_mod.py --deselect=::test_plain")
    assert finding.message.endswith("but it names no file (nothing is deselected)")


@pytest.mark.parametrize(
    "value",
    [
        "tests/test_mod.py::test_plain[1-2]",
        "tests/test_mod.py::TestGroup::test_method",
        "tests/test_mod.py",
        "tests/test_m",  # a prefix of ids: pytest matches it as such
        "test_mod.py::test_plain",  # from the folder it was named in
        "test_mod",  # a prefix of ids, from the folder it was named in
        "$TESTS/test_mod.py::gone",  # the shell decides
    ],
)
def test_a_deselect_value_that_deselects_something_is_clean(ci, value):
    ci.write("tests/test_mod.py", MODULE).area(
        """\
        group: g
        steps:
          - label: unit
            working_dir: /vllm-workspace/tests
            commands:
              - pytest -v test_mod.py --deselect {value}
        """.replace("{value}", value)
    )
    assert ci.findings(RULE) == []


@pytest.mark.parametrize("value", ["tests/test_*.py::gone", "tests/{a,b}.py::gone"])
def test_a_deselect_value_the_shell_expands_is_not_judged(ci, value):
    assert lint(ci, f"pytest -v tests/test_mod.py --deselect '{value}'") == []


def test_a_deselect_id_of_a_file_that_is_not_python_is_not_judged_by_its_names(ci):
    ci.write("tests/conf.yaml", "a: 1\n")
    assert lint(ci, "pytest -v tests/test_mod.py --deselect tests/conf.yaml::x") == []


def test_a_deselect_and_a_missing_test_in_a_folded_command_are_found_at_their_lines(ci):
    ci.write("tests/test_mod.py", MODULE).area(
        """\
        group: g
        steps:
          - label: unit
            commands:
              - >-
                pytest -v
                tests/test_mod.py::test_gone
                --deselect=tests/test_lost.py::test_plain
        """
    )
    assert [(f.line, f.message.split(",")[0][:30]) for f in ci.findings(RULE)] == [
        (ci.line_of("::test_gone"), "step 'unit' runs tests/test_mo"),
        (ci.line_of("--deselect"), "step 'unit' deselects tests/te"),
    ]
