"""stale-dependency: a ``source_file_dependencies`` entry that names nothing in the tree,
or a file without its suffix (an entry that matches no change)."""

from __future__ import annotations

import pytest

AREA = "area.yaml"
STEP = """\
group: g
steps:
  - label: unit
    commands:
      - pytest -v tests/unit/test_a.py
    source_file_dependencies:
      - tests/unit/test_a.py
      - '{entry}'
"""


def _step(ci, entry: str, *files: str):
    """What the rule finds when ``entry`` follows a listed test and ``files`` exist."""
    ci.write("tests/unit/test_a.py", "def test_a():\n    pass\n")
    for path in files:
        ci.write(path)
    ci.area(STEP.format(entry=entry))
    return ci.findings("stale-dependency")


def test_an_entry_naming_nothing_is_found_at_that_entry(ci):
    (finding,) = _step(ci, "tests/gone")
    assert finding.rule == "stale-dependency"
    assert finding.path == f".buildkite/test_areas/{AREA}"
    assert finding.line == ci.line_of("'tests/gone'")
    assert finding.message == "step 'unit': entry 'tests/gone' names nothing in the tree"
    assert finding.hint == "fix the path or remove the entry"


def test_an_entry_naming_an_existing_file_is_clean(ci):
    assert _step(ci, "tests/unit/helpers.py", "tests/unit/helpers.py") == []


def test_an_entry_naming_an_existing_folder_with_or_without_its_slash_is_clean(ci):
    assert _step(ci, "tests/unit/") == []
    assert _step(ci, "tests/unit") == []


def test_a_file_named_without_its_py_suffix_is_found_with_the_whole_name(ci):
    (finding,) = _step(ci, "tests/unit/test_a")
    assert finding.line == ci.line_of("'tests/unit/test_a'")
    assert finding.message == (
        "step 'unit': entry 'tests/unit/test_a' matches no change: tests/unit/test_a.py "
        "exists, and an entry matches only a path or a folder"
    )
    assert finding.hint == "write `tests/unit/test_a.py`"


def test_a_file_named_without_its_suffix_and_with_a_slash_is_shown_without_the_slash(ci):
    (finding,) = _step(ci, "tests/unit/test_a/")
    assert finding.message == (
        "step 'unit': entry 'tests/unit/test_a/' matches no change: tests/unit/test_a.py "
        "exists, and an entry matches only a path or a folder"
    )
    assert finding.hint == "write `tests/unit/test_a.py`"


def test_a_script_named_without_its_sh_suffix_is_found(ci):
    (finding,) = _step(ci, "scripts/run", "scripts/run.sh")
    assert finding.message == (
        "step 'unit': entry 'scripts/run' matches no change: scripts/run.sh "
        "exists, and an entry matches only a path or a folder"
    )
    assert finding.hint == "write `scripts/run.sh`"


def test_a_config_named_without_its_yaml_suffix_is_found(ci):
    (finding,) = _step(ci, "configs/model", "configs/model.yaml")
    assert finding.message == (
        "step 'unit': entry 'configs/model' matches no change: configs/model.yaml "
        "exists, and an entry matches only a path or a folder"
    )
    assert finding.hint == "write `configs/model.yaml`"


def test_the_py_file_is_suggested_first_when_several_suffixes_exist(ci):
    (finding,) = _step(ci, "tools/run", "tools/run.py", "tools/run.sh", "tools/run.yaml")
    assert finding.hint == "write `tools/run.py`"


def test_the_sh_file_is_suggested_before_the_yaml_file(ci):
    (finding,) = _step(ci, "tools/run", "tools/run.sh", "tools/run.yaml")
    assert finding.hint == "write `tools/run.sh`"


def test_an_excluding_entry_naming_nothing_is_found(ci):
    (finding,) = _step(ci, "!tests/gone.py")
    assert finding.message == "step 'unit': entry '!tests/gone.py' names nothing in the tree"
    assert finding.hint == "fix the path or remove the entry"


def test_an_excluding_entry_without_its_suffix_keeps_its_mark_in_the_hint(ci):
    (finding,) = _step(ci, "!tests/unit/test_a")
    assert finding.message == (
        "step 'unit': entry '!tests/unit/test_a' matches no change: tests/unit/test_a.py "
        "exists, and an entry matches only a path or a folder"
    )
    assert finding.hint == "write `!tests/unit/test_a.py`"


def test_an_excluding_entry_naming_an_existing_file_is_clean(ci):
    assert _step(ci, "!tests/unit/test_a.py") == []


def test_an_excluding_entry_naming_an_existing_folder_is_clean(ci):
    assert _step(ci, "!tests/unit") == []


def test_a_bare_exclusion_mark_is_clean(ci):
    assert _step(ci, "!") == []


def test_an_entry_with_a_wildcard_is_not_checked(ci):
    assert _step(ci, "tests/*/gone.py") == []


def test_an_entry_with_a_variable_is_not_checked(ci):
    assert _step(ci, "$GONE/tests") == []


def test_an_optional_steps_entries_are_checked_and_say_when_they_count(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: nightly
            optional: true
            commands: [pytest -v tests/gone.py]
            source_file_dependencies: [tests/gone.py]
        """
    )
    assert ci.messages("stale-dependency") == [
        "step 'nightly': entry 'tests/gone.py' names nothing in the tree (an optional step: "
        "this counts once it is not)"
    ]


def test_each_stale_entry_is_found_at_its_own_line_naming_its_step(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
            source_file_dependencies:
              - tests/gone_one
              - tests/gone_two
          - label: second
            commands: [pytest -v tests/b.py]
            source_file_dependencies: [tests/gone_three]
        """
    )
    found = [(f.line, f.message) for f in ci.findings("stale-dependency")]
    assert found == [
        (ci.line_of("gone_one"), "step 'first': entry 'tests/gone_one' names nothing in the tree"),
        (ci.line_of("gone_two"), "step 'first': entry 'tests/gone_two' names nothing in the tree"),
        (
            ci.line_of("gone_three"),
            "step 'second': entry 'tests/gone_three' names nothing in the tree",
        ),
    ]


def test_only_trailing_slashes_are_dropped_from_the_name_shown(ci):
    # the name ends in a letter that must stay
    (finding,) = _step(ci, "tests/test_X/", "tests/test_X.py")
    assert finding.message == (
        "step 'unit': entry 'tests/test_X/' matches no change: tests/test_X.py "
        "exists, and an entry matches only a path or a folder"
    )
    assert finding.hint == "write `tests/test_X.py`"


def test_an_entry_with_a_trailing_space_names_nothing(ci):
    (finding,) = _step(ci, "tests/unit ")
    assert finding.message == "step 'unit': entry 'tests/unit ' names nothing in the tree"


WRITTEN = "written from the repository root, without ./, .., // or a leading /"


@pytest.mark.parametrize("entry", ["/tests/unit/test_a.py", "/tmp", "/"])
def test_an_absolute_entry_matches_no_change_whatever_the_machine_holds(ci, entry):
    (finding,) = _step(ci, entry)
    assert finding.line == ci.line_of(f"'{entry}'")
    assert finding.message == (
        f"step 'unit': entry '{entry}' matches no change: changed paths are {WRITTEN}"
    )
    assert finding.hint == "write it from the repository root"


@pytest.mark.parametrize(
    ("entry", "written"),
    [
        ("./tests/unit/test_a.py", "tests/unit/test_a.py"),
        ("tests//unit/test_a.py", "tests/unit/test_a.py"),
        ("tests/../tests/unit/test_a.py", "tests/unit/test_a.py"),
        ("!./tests/unit/", "!tests/unit"),
    ],
)
def test_an_entry_written_otherwise_than_changed_paths_matches_no_change(ci, entry, written):
    """The file exists, but the generator compares the entry's text with the changed path."""
    (finding,) = _step(ci, entry)
    assert finding.message == (
        f"step 'unit': entry '{entry}' matches no change: changed paths are {WRITTEN}"
    )
    assert finding.hint == f"write `{written}`"


def test_entries_after_an_unchecked_one_are_still_checked(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: unit
            commands: [pytest -v tests/a.py]
            source_file_dependencies: ['tests/*.py', '$X/y', '!', tests/gone_one]
        """
    )
    assert ci.messages("stale-dependency") == [
        "step 'unit': entry 'tests/gone_one' names nothing in the tree"
    ]


def test_entries_after_an_existing_one_are_still_checked(ci):
    ci.write("tests/a.py")
    ci.area(
        """\
        group: g
        steps:
          - label: unit
            commands: [pytest -v tests/a.py]
            source_file_dependencies: [tests/a.py, tests/, tests/gone_one]
        """
    )
    assert ci.messages("stale-dependency") == [
        "step 'unit': entry 'tests/gone_one' names nothing in the tree"
    ]


def test_entries_after_one_written_otherwise_are_still_checked(ci):
    ci.write("tests/a.py")
    ci.area(
        """\
        group: g
        steps:
          - label: unit
            commands: [pytest -v tests/a.py]
            source_file_dependencies: [./tests/a.py, tests/gone_one]
        """
    )
    assert ci.messages("stale-dependency") == [
        f"step 'unit': entry './tests/a.py' matches no change: changed paths are {WRITTEN}",
        "step 'unit': entry 'tests/gone_one' names nothing in the tree",
    ]
