"""dependencies: a non-optional step whose ``source_file_dependencies`` miss code it runs:
the tests and scripts its commands name, what they import from the tree, the conftest.py
files pytest loads for them, and the vLLM pin when they import vLLM (not in vLLM's own
tree)."""

from __future__ import annotations

import os

import pytest

from tests.buildkite.rules.conftest import CiTree

AREA = ".buildkite/test_areas/area.yaml"
STEP = """\
group: g
steps:
  - label: unit
    commands:
      - {command}
    source_file_dependencies: {deps}
"""
TEST_A = "tests/unit/test_a.py"


def _step(
    ci, command: str = f"pytest -v {TEST_A}", deps: str = f"[{TEST_A}]", files: dict | None = None
):
    """What the rule finds for one step running ``command``, with ``files`` (path: text)."""
    for path, text in (files or {}).items():
        ci.write(path, text)
    ci.area(STEP.format(command=command, deps=deps))
    return ci.findings("dependencies")


def _missing(ci, **kwargs) -> str:
    """The files the one finding names as missing."""
    (finding,) = _step(ci, **kwargs)
    prefix = "step 'unit' runs code not in its source_file_dependencies: "
    assert finding.message.startswith(prefix)
    return finding.message.removeprefix(prefix)


def test_a_helper_the_test_imports_and_the_step_does_not_list_is_found(ci):
    (finding,) = _step(
        ci,
        files={
            TEST_A: "import os\n\nfrom tests import helpers\n",
            "tests/helpers.py": "",
        },
    )
    assert finding.rule == "dependencies"
    assert finding.path == AREA
    assert finding.line == ci.line_of("source_file_dependencies")
    assert finding.message == (
        "step 'unit' runs code not in its source_file_dependencies: tests/helpers.py"
    )
    assert finding.hint == "add tests/helpers.py"


def test_a_step_listing_its_test_and_the_helpers_it_imports_is_clean(ci):
    files = {TEST_A: "from tests.helpers import make\n", "tests/helpers.py": ""}
    assert _step(ci, deps=f"[{TEST_A}, tests/helpers.py]", files=files) == []
    assert _step(ci, deps="[tests/]", files=files) == []


def test_a_test_the_step_does_not_list_is_found(ci):
    assert _missing(ci, deps="[tests/other.py]", files={TEST_A: ""}) == TEST_A


def test_a_helper_an_exclusion_removes_is_found(ci):
    found = _missing(
        ci,
        deps="[tests/, '!tests/helpers.py']",
        files={
            TEST_A: "import tests.helpers\n",
            "tests/helpers.py": "",
        },
    )
    assert found == "tests/helpers.py"


def test_what_a_helper_imports_is_needed_too(ci):
    found = _missing(
        ci,
        files={
            TEST_A: "import tests.helpers\n",
            "tests/helpers.py": "import tests.deeper\n",
            "tests/deeper.py": "",
        },
    )
    assert found == "tests/deeper.py, tests/helpers.py"


def test_an_imported_package_is_needed_as_its_init_file(ci):
    found = _missing(
        ci,
        files={
            TEST_A: "import tests.support\n",
            "tests/support/__init__.py": "",
        },
    )
    assert found == "tests/support/__init__.py"


def test_a_module_and_the_package_it_is_imported_from_are_both_needed(ci):
    found = _missing(
        ci,
        files={
            TEST_A: "from tests.support import tools\n",
            "tests/support/__init__.py": "",
            "tests/support/tools.py": "",
        },
    )
    assert found == "tests/support/__init__.py, tests/support/tools.py"


def test_relative_imports_are_resolved_from_the_test_package(ci):
    found = _missing(
        ci,
        files={
            TEST_A: "from . import near\nfrom ..common import x\nfrom .. import shared\n",
            "tests/unit/near.py": "",
            "tests/common.py": "",
            "tests/shared.py": "",
        },
    )
    assert found == "tests/common.py, tests/shared.py, tests/unit/near.py"


def test_imports_of_modules_outside_the_tree_are_not_needed(ci):
    assert _step(ci, files={TEST_A: "import os\nimport pytest\nfrom json import x\n"}) == []


def test_the_conftest_files_pytest_loads_for_the_test_are_needed(ci):
    found = _missing(
        ci,
        files={
            TEST_A: "",
            "conftest.py": "",
            "tests/conftest.py": "",
            "tests/unit/conftest.py": "",
            "tests/other/conftest.py": "",
        },
    )
    assert found == "conftest.py, tests/conftest.py, tests/unit/conftest.py"


def test_what_a_conftest_imports_is_needed_too(ci):
    found = _missing(
        ci,
        files={
            TEST_A: "",
            "tests/conftest.py": "import tests.fixtures\n",
            "tests/fixtures.py": "",
        },
    )
    assert found == "tests/conftest.py, tests/fixtures.py"


def test_a_conftest_above_the_repository_is_not_the_steps(tmp_path):
    (tmp_path / "conftest.py").write_text("")
    ci = CiTree(tmp_path / "outer" / "repo")
    assert _step(ci, files={TEST_A: ""}) == []


def test_tests_sharing_a_conftest_are_all_read(ci):
    found = _missing(
        ci,
        command="pytest -v tests/unit/test_a.py tests/unit/test_b.py",
        deps="[tests/unit/]",
        files={
            "tests/unit/conftest.py": "",
            TEST_A: "import tests.helper_a\n",
            "tests/unit/test_b.py": "import tests.helper_b\n",
            "tests/helper_a.py": "",
            "tests/helper_b.py": "",
        },
    )
    assert found == "tests/helper_a.py, tests/helper_b.py"


def test_a_test_importing_vllm_needs_the_vllm_pin(ci):
    (finding,) = _step(ci, files={TEST_A: "import vllm\n"})
    assert finding.message == (
        "step 'unit' runs code not in its source_file_dependencies: requirements/common.txt"
    )
    assert finding.hint == "add requirements/common.txt"


def test_a_test_importing_from_a_vllm_module_needs_the_vllm_pin(ci):
    found = _missing(ci, files={TEST_A: "from vllm.config import VllmConfig\n"})
    assert found == "requirements/common.txt"


def test_a_helper_importing_vllm_needs_the_vllm_pin(ci):
    found = _missing(
        ci,
        deps=f"[{TEST_A}, tests/helpers.py]",
        files={
            TEST_A: "import tests.helpers\n",
            "tests/helpers.py": "import vllm.config\n",
        },
    )
    assert found == "requirements/common.txt"


def test_the_vllm_pin_is_needed_whichever_file_is_read_last(ci):
    # the test imports vLLM, its helper (read after it) does not
    found = _missing(
        ci,
        deps=f"[{TEST_A}, tests/helpers.py]",
        files={
            TEST_A: "import vllm\nimport tests.helpers\n",
            "tests/helpers.py": "import os\n",
        },
    )
    assert found == "requirements/common.txt"


def test_a_step_listing_the_vllm_pin_is_clean(ci):
    assert _step(ci, deps=f"[{TEST_A}, requirements/]", files={TEST_A: "import vllm\n"}) == []


def test_a_module_whose_name_only_starts_with_vllm_needs_no_pin(ci):
    assert _step(ci, files={TEST_A: "import vllm_extras\nfrom vllmx import y\n"}) == []


def test_a_test_that_does_not_parse_is_read_as_importing_nothing(ci):
    assert _step(ci, files={TEST_A: "import tests.helpers\ndef (:\n"}) == []


def test_a_broken_link_in_a_test_folder_is_needed_as_itself(ci):
    ci.write("tests/unit/test_a.py")
    os.symlink(ci.root / "tests/gone.py", ci.root / "tests/unit/test_link.py")
    assert _step(ci, command="pytest -v tests/unit", deps="[tests/unit/]") == []
    found = _missing(ci, command="pytest -v tests/unit", deps=f"[{TEST_A}]")
    assert found == "tests/unit/test_link.py"


def test_a_test_folder_needs_each_test_file_in_it_at_any_depth(ci):
    found = _missing(
        ci,
        command="pytest -v tests/unit",
        files={
            TEST_A: "",
            "tests/unit/test_b.py": "",
            "tests/unit/deep/test_c.py": "",
            "tests/unit/helper.py": "",
            "tests/unit/data.yaml": "",
        },
    )
    assert found == "tests/unit/deep/test_c.py, tests/unit/test_b.py"


def test_a_script_the_step_runs_is_needed(ci):
    found = _missing(
        ci, command="bash scripts/run.sh", deps="[tests/]", files={"scripts/run.sh": ""}
    )
    assert found == "scripts/run.sh"


def test_a_step_running_a_script_with_no_dependencies_is_found_at_the_step(ci):
    ci.write("scripts/run.sh")
    ci.area(
        """\
        group: g
        steps:
          - label: other
            commands: [echo]
          - label: unit
            commands: [bash scripts/run.sh]
        """
    )
    (finding,) = ci.findings("dependencies")
    assert finding.path == AREA
    assert finding.line == ci.line_of("label: unit")
    assert finding.message == "step 'unit' declares no source_file_dependencies"
    assert finding.hint == "list the tests, helpers and scripts it runs"


def test_a_step_running_a_test_with_no_dependencies_is_found(ci):
    ci.write(TEST_A)
    ci.area(f"group: g\nsteps:\n  - label: unit\n    commands: [pytest -v {TEST_A}]\n")
    assert ci.messages("dependencies") == ["step 'unit' declares no source_file_dependencies"]


def test_a_step_running_nothing_in_the_tree_is_not_checked(ci):
    ci.write("configs/model.yaml")
    ci.write("tests/notes.txt")
    ci.area(
        """\
        group: g
        steps:
          - label: missing test
            commands: [pytest -v tests/unit/test_gone.py]
          - label: missing script
            commands: [bash scripts/gone.sh]
          - label: data only
            commands: [python -m tool tests/notes.txt configs/model.yaml]
          - label: outside
            commands: [pytest -v /opt/tests]
          - label: no files
            commands: [echo hello]
        """
    )
    assert ci.findings("dependencies") == []


def test_an_optional_step_is_not_checked(ci):
    ci.write(TEST_A, "import tests.helpers\n")
    ci.write("tests/helpers.py")
    ci.area(
        f"""\
        group: g
        steps:
          - label: nightly
            optional: true
            commands: [pytest -v {TEST_A}]
          - label: unit
            commands: [pytest -v {TEST_A}]
            source_file_dependencies: [{TEST_A}]
        """
    )
    assert ci.messages("dependencies") == [
        "step 'unit' runs code not in its source_file_dependencies: tests/helpers.py"
    ]


def test_steps_after_a_step_without_dependencies_are_still_checked(ci):
    ci.write(TEST_A, "import tests.helpers\n")
    ci.write("tests/helpers.py")
    ci.area(
        f"""\
        group: g
        steps:
          - label: first
            commands: [pytest -v {TEST_A}]
          - label: second
            commands: [pytest -v {TEST_A}]
            source_file_dependencies: [{TEST_A}]
          - label: third
            commands: [pytest -v {TEST_A}]
            source_file_dependencies: [tests/]
        """
    )
    assert ci.messages("dependencies") == [
        "step 'first' declares no source_file_dependencies",
        "step 'second' runs code not in its source_file_dependencies: tests/helpers.py",
    ]


def test_vllms_own_tree_is_not_checked(ci):
    ci.write("vllm/__init__.py")
    assert _step(ci, files={TEST_A: "import tests.helpers\n", "tests/helpers.py": ""}) == []


def _helpers(count: int, folders: bool = False) -> dict[str, str]:
    """A test importing ``count`` helpers (each in a folder of its own with ``folders``)."""
    names = [f"h{i}" + (f"__m{i}" if folders else "") for i in range(count)]
    imports = "".join(f"import tests.{n.replace('__', '.')}\n" for n in names)
    return {TEST_A: imports} | {f"tests/{n.replace('__', '/')}.py": "" for n in names}


def test_three_missing_files_are_each_suggested(ci):
    (finding,) = _step(ci, files=_helpers(3))
    assert finding.message.endswith(": tests/h0.py, tests/h1.py, tests/h2.py")
    assert finding.hint == "add tests/h0.py, tests/h1.py, tests/h2.py"


def test_four_missing_files_are_suggested_as_their_folders(ci):
    (finding,) = _step(ci, files=_helpers(4, folders=True))
    assert finding.message.endswith(
        ": tests/h0/m0.py, tests/h1/m1.py, tests/h2/m2.py, tests/h3/m3.py"
    )
    assert finding.hint == "add tests/h0/, tests/h1/, tests/h2/, tests/h3/"


def test_missing_files_of_one_folder_are_suggested_as_that_folder_once(ci):
    (finding,) = _step(ci, files=_helpers(4))
    assert finding.hint == "add tests/"


def test_five_missing_files_are_all_shown(ci):
    (finding,) = _step(ci, files=_helpers(5, folders=True))
    assert finding.message.endswith(
        ": tests/h0/m0.py, tests/h1/m1.py, tests/h2/m2.py, tests/h3/m3.py, tests/h4/m4.py"
    )
    assert finding.hint == "add tests/h0/, tests/h1/, tests/h2/, tests/h3/, tests/h4/"


def test_a_sixth_missing_file_is_counted_and_five_folders_suggested(ci):
    (finding,) = _step(ci, files=_helpers(6, folders=True))
    assert finding.message.endswith(
        ": tests/h0/m0.py, tests/h1/m1.py, tests/h2/m2.py, tests/h3/m3.py, tests/h4/m4.py"
        " and 1 more"
    )
    assert finding.hint == "add tests/h0/, tests/h1/, tests/h2/, tests/h3/, tests/h4/"


def test_an_edited_test_is_read_again(ci):
    assert _step(ci, files={TEST_A: "", "tests/helpers.py": ""}) == []
    ci.write(TEST_A, "import tests.helpers\n")
    stat = (ci.root / TEST_A).stat()
    os.utime(ci.root / TEST_A, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert ci.messages("dependencies") == [
        "step 'unit' runs code not in its source_file_dependencies: tests/helpers.py"
    ]


@pytest.mark.parametrize(
    "statement", ["import tests.support.tools", "from tests.support.tools import make"]
)
def test_importing_a_module_runs_the_init_files_of_its_packages_and_what_they_import(ci, statement):
    found = _missing(
        ci,
        deps=f"[{TEST_A}, tests/support/tools.py]",
        files={
            TEST_A: f"{statement}\n",
            "tests/support/__init__.py": "from tests import shared\n",
            "tests/support/tools.py": "",
            "tests/shared.py": "",
        },
    )
    assert found == "tests/shared.py, tests/support/__init__.py"
