"""gated-branch: a branch of a script CI runs, gated by a variable (``if [[ "$SW_ATTN" == 1 ]]``)
that chooses what runs, which no step running the script (directly or through a calling
script) sets to a value that opens it."""

from __future__ import annotations

import itertools
import json

import pytest

RULE = "gated-branch"
SWEEP = "scripts/sweep.sh"


def steps(ci, *commands: str) -> None:
    """An area with one step per command."""
    ci.area(
        "steps:\n"
        + "".join(
            f"  - label: step {i}\n    commands:\n      - {json.dumps(c)}\n"
            for i, c in enumerate(commands)
        )
    )


def gated(condition: str = 'if [[ "$SW" == 1 ]]; then', body: str = "pytest tests/sw.py") -> str:
    """A script whose line 3 is ``condition``, opening a branch that runs ``body``."""
    return f"#!/usr/bin/env bash\nset -euo pipefail\n{condition}\n    {body}\nfi\n"


def gates(ci) -> list[tuple[str, int, str]]:
    return [(f.path, f.line, f.message) for f in ci.findings(RULE)]


def never_set(name: str = "SW", script: str = SWEEP, line: int = 3) -> tuple[str, int, str]:
    return (
        script,
        line,
        f"branch gated by {name} is never enabled: no step that runs {script} sets {name}",
    )


def test_a_branch_no_step_enables_is_found_at_its_condition(ci):
    ci.write(SWEEP, gated())
    steps(ci, f"bash {SWEEP}")
    (finding,) = ci.findings(RULE)
    assert finding.path == SWEEP
    assert finding.line == 3
    assert finding.rule == RULE
    assert (
        finding.message == f"branch gated by SW is never enabled: no step that runs {SWEEP} sets SW"
    )
    assert finding.hint == f"add a step (or command) running `SW=1 bash {SWEEP}`"


def test_a_step_setting_the_variable_on_its_command_enables_it(ci):
    ci.write(SWEEP, gated())
    steps(ci, f"SW=1 bash {SWEEP}")
    assert ci.findings(RULE) == []


def test_one_step_of_several_enabling_it_is_enough(ci):
    ci.write(SWEEP, gated())
    steps(ci, f"bash {SWEEP}", f"SW=1 bash {SWEEP}", f"SW=0 bash {SWEEP}")
    assert ci.findings(RULE) == []


def test_a_step_setting_it_for_another_script_does_not_enable_it(ci):
    ci.write(SWEEP, gated()).write("scripts/other.sh", "echo other\n")
    steps(ci, f"bash {SWEEP}", "SW=1 bash scripts/other.sh")
    assert gates(ci) == [never_set()]


def test_values_that_never_equal_the_compared_one_are_named(ci):
    ci.write(SWEEP, gated())
    steps(ci, f"SW=3 bash {SWEEP}", f"SW=2 bash {SWEEP}", f"SW=3 bash {SWEEP}", f"bash {SWEEP}")
    (finding,) = ci.findings(RULE)
    assert finding.message == (
        "branch gated by SW is never enabled: steps set it only to 2, 3, the script tests == 1"
    )
    assert finding.hint == f"add a step (or command) running `SW=1 bash {SWEEP}`"


@pytest.mark.parametrize(
    ("condition", "value", "other"),
    [
        ('if [[ "$SW" == 1 ]]; then', "1", "2"),
        ('if [ "$SW" = 1 ]; then', "1", "true"),
        ("if [[ $SW == yes ]]; then", "yes", "1"),
        ('if [[ "${SW}" == "on" ]]; then', "on", "1"),
        ('if [[ "$SW"=="gemma-3.1" ]]; then', "gemma-3.1", "gemma-3"),
    ],
)
def test_a_compared_value_is_the_only_one_that_opens_the_branch(ci, condition, value, other):
    ci.write(SWEEP, gated(condition))
    steps(ci, f"SW={value} bash {SWEEP}")
    assert ci.findings(RULE) == []
    steps(ci, f"SW={other} bash {SWEEP}")
    (finding,) = ci.findings(RULE)
    assert finding.message == (
        f"branch gated by SW is never enabled: steps set it only to {other}, "
        f"the script tests == {value}"
    )
    assert finding.hint == f"add a step (or command) running `SW={value} bash {SWEEP}`"


@pytest.mark.parametrize(
    "condition",
    [
        'if [[ -n "$SW" ]]; then',
        'if [ "$SW" -eq 1 ]; then',
        'if [[ "${SW:-0}" == 1 ]]; then',
        'if truthy "$SW"; then',
    ],
)
def test_a_test_without_a_compared_value_is_opened_by_any_true_value(ci, condition):
    ci.write(SWEEP, gated(condition))
    steps(ci, f"SW=2 bash {SWEEP}")
    assert ci.findings(RULE) == []
    steps(ci, f"bash {SWEEP}")
    (finding,) = ci.findings(RULE)
    assert finding.message == never_set()[2]
    assert finding.hint == f"add a step (or command) running `SW=1 bash {SWEEP}`"


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", "off"])
def test_a_false_value_does_not_open_a_branch_without_a_compared_value(ci, value):
    ci.write(SWEEP, gated('if truthy "$SW"; then'))
    steps(ci, f"SW={value} bash {SWEEP}")
    (finding,) = ci.findings(RULE)
    assert (finding.path, finding.line) == (SWEEP, 3)
    # only the start: the rest names a compared value this condition does not have
    assert finding.message.startswith(
        f"branch gated by SW is never enabled: steps set it only to {value}, "
    )


@pytest.mark.parametrize("value", ["1", "true", "True", "yes", "on", "2", "fast"])
def test_a_true_value_opens_a_branch_without_a_compared_value(ci, value):
    ci.write(SWEEP, gated('if truthy "$SW"; then'))
    steps(ci, f"SW={value} bash {SWEEP}")
    assert ci.findings(RULE) == []


@pytest.mark.parametrize(
    ("script", "line"),
    [
        (gated('if [[ "$SW" == 1 ]]; then'), 3),
        (gated('if [ "$SW" = 1 ]; then'), 3),
        (gated('  if [[ "${SW}" == 1 ]]; then'), 3),
        (
            'if [[ "$MODE" == a ]]; then\n  pytest a.py\nelif [[ "$SW" == 1 ]]; then\n  pytest b.py\nfi\n',
            3,
        ),
        ('while [[ "$SW" == 1 ]]; do\n  pytest tests/sw.py\ndone\n', 1),
        ('echo start\n[[ "$SW" == 1 ]] && pytest tests/sw.py\n', 2),
    ],
)
def test_each_condition_form_gates_its_branch(ci, script, line):
    ci.write(SWEEP, script)
    steps(ci, f"MODE=a bash {SWEEP}")
    assert gates(ci) == [never_set(line=line)]


@pytest.mark.parametrize(
    "script",
    [
        'echo "$SW" && pytest tests/sw.py\n',  # no condition
        '# if [[ "$SW" == 1 ]]; then\npytest tests/sw.py\n',  # a comment
        gated('if [[ "$sw" == 1 ]]; then'),  # a lower-case name is the script's own
        gated('if [[ "$BUILDKITE_BRANCH" == main ]]; then'),  # the agent sets it
        gated('if [[ "$CI" == 1 ]]; then'),  # the image sets it
    ],
)
def test_a_line_that_is_no_gate_of_a_step_variable_is_clean(ci, script):
    ci.write(SWEEP, script)
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


def test_a_variable_the_environment_sets_does_not_hide_a_later_gate(ci):
    ci.write(
        SWEEP,
        'if [[ "$CI" == 1 ]]; then\n  pytest a.py\nfi\nif [[ "$SW" == 1 ]]; then\n  pytest b.py\nfi\n',
    )
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == [never_set(line=4)]


@pytest.mark.parametrize(
    ("definition", "gates_it"),
    [
        ("SW_CONFIGS=(a b)", True),
        ('SW_CONFIGS=(\n    "a"\n)', True),
        ("declare -a SW_CONFIGS=(a)", True),
        ("  local -a SW_CONFIGS=(a)", True),
        ("SW_CONFIGS=()", False),  # an empty array selects nothing
        ("SW_CONFIGS=( )", False),
        ("OTHER_CONFIGS=(a)", False),  # not the array the branch takes
    ],
)
def test_a_branch_taking_one_of_the_scripts_config_arrays_is_a_gate(ci, definition, gates_it):
    ci.write(
        SWEEP,
        f"{definition}\nselected=()\n"
        'if [[ "$SW" == 1 ]]; then\n    selected+=("${SW_CONFIGS[@]}")\nfi\n'
        'for config in "${selected[@]}"; do run "$config"; done\n',
    )
    steps(ci, f"bash {SWEEP}")
    line = definition.count("\n") + 3
    assert gates(ci) == ([never_set(line=line)] if gates_it else [])


@pytest.mark.parametrize(
    "body",
    [
        'EXTRA_ARGS="--enforce-eager"',  # a knob
        "echo knob\nelse\n    pytest tests/sw.py",  # tests run in the other branch
        "echo knob\nelif [[ -n $OTHER ]]; then\n    echo other",
        "echo knob\nfi\npytest tests/sw.py\nif true; then\n    :",  # tests run after the branch
    ],
)
def test_a_branch_that_does_not_choose_what_runs_is_no_gate(ci, body):
    ci.write(SWEEP, gated(body=body))
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


def test_a_short_circuit_that_runs_no_tests_at_the_end_of_a_script_is_no_gate(ci):
    ci.write(SWEEP, 'echo start\n[[ "$SW" == 1 ]] && echo hi\n')
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


@pytest.mark.parametrize(("knobs", "gates_it"), [(13, True), (14, False)])
def test_tests_are_looked_for_in_the_fifteen_lines_from_the_condition(ci, knobs, gates_it):
    # the condition's line and 14 more: tests on the fifteenth line still count
    body = "\n".join(["echo knob"] * knobs + ["    pytest tests/sw.py"])
    ci.write(SWEEP, gated(body=body))
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == ([never_set()] if gates_it else [])


@pytest.mark.parametrize(
    "assignment",
    ["SW=1", "readonly SW=1", "declare -r SW=1", "  SW=0", "SW=1  # after the gate below"],
)
def test_a_variable_the_script_assigns_a_fixed_value_is_no_gate(ci, assignment):
    script = gated()
    script = script + assignment + "\n" if "after" in assignment else assignment + "\n" + script
    ci.write(SWEEP, script)
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


@pytest.mark.parametrize("assignment", ["SW=${SW:-0}", 'SW="${SW:-0}"', "readonly SW=${SW:-1}"])
def test_a_default_the_caller_can_override_is_still_a_gate(ci, assignment):
    ci.write(SWEEP, f"{assignment}\n{gated()}")
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == [never_set(line=4)]


def test_a_fixed_variable_tested_with_a_gate_does_not_hide_it(ci):
    ci.write(SWEEP, "MODE=fast\n" + gated('if [[ "$MODE" == fast && "$SW" == 1 ]]; then'))
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == [never_set(line=4)]


def test_a_variable_is_gated_at_its_first_condition_and_by_its_first_value(ci):
    ci.write(
        SWEEP,
        'if [[ "$SW" == 1 ]]; then\n  pytest a.py\nfi\nif [[ "$SW" == 2 ]]; then\n  pytest b.py\nfi\n',
    )
    steps(ci, f"SW=1 bash {SWEEP}")
    assert ci.findings(RULE) == []
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == [never_set(line=1)]


def test_a_condition_that_is_no_gate_does_not_take_the_variables_first_line(ci):
    ci.write(
        SWEEP,
        'if [[ "$SW" == 2 ]]; then\n  echo knob\nfi\nif [[ "$SW" == 1 ]]; then\n  pytest b.py\nfi\n',
    )
    steps(ci, f"SW=1 bash {SWEEP}")
    assert ci.findings(RULE) == []
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == [never_set(line=4)]


def test_every_gate_of_every_script_is_found(ci):
    ci.write(SWEEP, gated() + 'if [[ "$HMA" == 1 ]]; then\n  pytest b.py\nfi\n')
    ci.write("scripts/other.sh", gated('if [[ "$TP" == 1 ]]; then'))
    steps(ci, f"bash {SWEEP}", "bash scripts/other.sh")
    assert gates(ci) == [
        never_set("TP", "scripts/other.sh"),
        never_set("SW"),
        never_set("HMA", line=6),
    ]


def test_a_script_that_does_not_exist_is_left_to_path_exists(ci):
    ci.write(SWEEP, gated())
    steps(ci, f"bash scripts/absent.sh && bash {SWEEP}")
    assert gates(ci) == [never_set()]


def test_a_script_that_is_not_utf8_is_still_read(ci):
    (ci.root / "scripts").mkdir()
    (ci.root / SWEEP).write_bytes(b"# caf\xe9\n" + gated().encode())
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == [never_set(line=4)]


# -- where the variables come from ---------------------------------------------------------


@pytest.mark.parametrize(
    "area",
    [
        f"steps:\n  - label: a\n    env:\n      SW: 1\n    commands: [bash {SWEEP}]\n",
        f'steps:\n  - label: a\n    env:\n      SW: "1"\n    commands: [bash {SWEEP}]\n',
        f"steps:\n  - label: a\n    commands:\n      - export SW=1\n      - bash {SWEEP}\n",
        f"steps:\n  - label: a\n    commands: [bash {SWEEP}]\n"
        "    mirror:\n      amd:\n        env:\n          SW: 1\n",
    ],
)
def test_a_step_enables_it_through_its_env_an_export_or_a_mirror(ci, area):
    ci.write(SWEEP, gated())
    ci.area(area)
    assert ci.findings(RULE) == []


INNER = "scripts/inner.sh"


@pytest.mark.parametrize("runner", ["bash", "sh", "source", "."])
def test_a_calling_script_hands_its_variables_to_the_script_it_runs(ci, runner):
    ci.write(INNER, gated())
    ci.write(SWEEP, f"SW=1 {runner} {INNER}\n")
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []
    ci.write(SWEEP, f"{runner} {INNER}\n")
    assert gates(ci) == [never_set(script=INNER)]


@pytest.mark.parametrize(
    "caller",
    [
        f"INNER={INNER}\nSW=1 bash $INNER\n",
        f'local INNER="{INNER}"\nSW=1 bash "${{INNER}}"\n',
        f"readonly INNER='{INNER}'\nSW=1 bash \"$INNER\"\n",
    ],
)
def test_a_script_named_through_a_variable_is_followed(ci, caller):
    ci.write(INNER, gated())
    ci.write(SWEEP, caller)
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []
    ci.write(SWEEP, caller.replace("SW=1 ", ""))
    assert gates(ci) == [never_set(script=INNER)]


def test_a_script_named_through_an_unknown_variable_is_not_followed(ci):
    ci.write(INNER, gated())
    ci.write(SWEEP, 'bash "$NOWHERE"\n')
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("scripts/inner.sh", "scripts/inner.sh"),  # from the repository root
        ("tests/run/inner.sh", "run/inner.sh"),  # from tests/, where vLLM's steps run
        ("scripts/sub/inner.sh", "sub/inner.sh"),  # from the caller's folder
    ],
)
def test_a_called_script_is_found_from_the_root_tests_or_the_callers_folder(ci, path, named):
    ci.write(path, gated())
    ci.write(SWEEP, f"bash {named}\n")
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == [never_set(script=path)]


def test_a_call_of_a_missing_script_is_not_followed(ci):
    ci.write(SWEEP, "bash scripts/absent.sh\n")
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


def test_a_call_after_an_unresolvable_one_on_the_same_line_is_followed(ci):
    ci.write(INNER, gated())
    ci.write(SWEEP, f'bash scripts/absent.sh; bash "$NOWHERE"; bash {INNER}\n')
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == [never_set(script=INNER)]


def test_a_script_running_itself_does_not_enable_its_own_branches(ci):
    ci.write(SWEEP, gated() + f"env SW=1 bash {SWEEP}\n")
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == [never_set()]


def test_a_commented_out_call_hands_over_nothing(ci):
    ci.write(INNER, gated())
    ci.write(SWEEP, f"# SW=1 bash {INNER}\n")
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == [never_set(script=INNER)]


def test_a_call_line_with_an_unbalanced_quote_still_hands_its_variables_over(ci):
    ci.write(INNER, gated())
    ci.write(SWEEP, f"echo it's ready; SW=1 bash {INNER}\n")
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


def test_a_caller_can_set_several_variables_on_one_call(ci):
    ci.write(INNER, gated() + 'if [[ "$HMA" == 1 ]]; then\n  pytest b.py\nfi\n')
    ci.write(SWEEP, f"HMA=1 SW=1 bash {INNER}\n")
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


def test_a_step_variable_reaches_the_scripts_its_script_runs(ci):
    ci.write(INNER, gated())
    ci.write(SWEEP, f"bash {INNER}\n")
    steps(ci, f"SW=1 bash {SWEEP}")
    assert ci.findings(RULE) == []


@pytest.mark.parametrize(("outer", "inner", "opened"), [("0", "1", True), ("1", "0", False)])
def test_the_callers_own_setting_wins_over_the_steps(ci, outer, inner, opened):
    ci.write(INNER, gated())
    ci.write(SWEEP, f"SW={inner} bash {INNER}\n")
    steps(ci, f"SW={outer} bash {SWEEP}")
    assert len(ci.findings(RULE)) == (0 if opened else 1)


def test_scripts_are_followed_three_calls_deep(ci):
    chain = ["scripts/a.sh", "scripts/b.sh", "scripts/c.sh", "scripts/d.sh", "scripts/e.sh"]
    for caller, callee in itertools.pairwise(chain):
        ci.write(caller, f"bash {callee}\n")
    ci.write("scripts/d.sh", gated() + "bash scripts/e.sh\n")  # three calls from a.sh
    ci.write("scripts/e.sh", gated())  # four: not followed
    steps(ci, "bash scripts/a.sh")
    assert gates(ci) == [never_set(script="scripts/d.sh")]


def test_a_step_variable_reaches_three_calls_deep(ci):
    chain = ["scripts/a.sh", "scripts/b.sh", "scripts/c.sh", "scripts/d.sh"]
    for caller, callee in itertools.pairwise(chain):
        ci.write(caller, f"bash {callee}\n")
    ci.write("scripts/d.sh", gated())
    steps(ci, "SW=1 bash scripts/a.sh")
    assert ci.findings(RULE) == []


def test_a_caller_that_is_not_utf8_is_still_read(ci):
    ci.write(INNER, gated())
    (ci.root / SWEEP).write_bytes(f"# caf\xe9\nSW=1 bash {INNER}\n".encode("latin-1"))
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


# -- config arrays handed over with env "${cfg_parts[@]}" bash "$SCRIPT" ------------------

HAND_OVER = 'env "${cfg_parts[@]}" bash "$SCRIPT"'


def caller(*arrays: list[str], call: str = HAND_OVER) -> str:
    """A calling script: its multi-line arrays, then ``call`` of the inner script."""
    text = f"SCRIPT={INNER}\n"
    for i, elements in enumerate(arrays):
        text += f"configs_{i}=(\n" + "".join(f"    {e}\n" for e in elements) + ")\n"
    return text + f"for cfg in ...; do\n    {call}\ndone\n"


@pytest.mark.parametrize(
    "arrays",
    [
        [['"MODEL=a SW=1"', '"MODEL=b"']],
        [['"MODEL=b"', '"MODEL=a SW=1"']],
        [['"MODEL=b"'], ['"SW=1 MODEL=a"']],  # every array of the caller
        [['"MODEL=a', ' SW=0"', '"SW=1"']],  # an element over two lines is skipped
    ],
)
def test_one_element_of_the_callers_arrays_enabling_it_is_enough(ci, arrays):
    ci.write(INNER, gated())
    ci.write(SWEEP, caller(*arrays))
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


@pytest.mark.parametrize(
    "text",
    [
        caller(['"MODEL=a SW=0"', '# "SW=1"']),  # a commented-out element
        caller(['"MODEL=a SW=0"']).replace("for cfg", "SW=1 echo after the array\nfor cfg"),
        "SW=1 echo before the array\n" + caller(['"MODEL=a SW=0"']),
        caller(['"MODEL=a SW=1"'], call='env "$cfg" bash "$SCRIPT"'),  # no array handed over
    ],
)
def test_only_the_elements_of_arrays_handed_over_set_variables(ci, text):
    ci.write(INNER, gated())
    ci.write(SWEEP, text)
    steps(ci, f"bash {SWEEP}")
    (finding,) = ci.findings(RULE)
    assert finding.path == INNER


def test_an_element_setting_a_variable_wins_over_the_calls_own(ci):
    ci.write(INNER, gated())
    ci.write(SWEEP, caller(['"MODEL=a SW=1"'], call=f"SW=0 {HAND_OVER}"))
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


def test_the_calls_own_variables_hold_for_each_element(ci):
    ci.write(INNER, gated() + 'if [[ "$HMA" == 1 ]]; then\n  pytest b.py\nfi\n')
    ci.write(SWEEP, caller(['"MODEL=a"', '"SW=1"'], call=f"HMA=1 {HAND_OVER}"))
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


def test_a_hand_over_without_arrays_keeps_the_calls_own_variables(ci):
    ci.write(INNER, gated())
    ci.write(SWEEP, f"SCRIPT={INNER}\ncfg_parts=(SW=0)\nSW=1 {HAND_OVER}\n")
    steps(ci, f"bash {SWEEP}")
    assert ci.findings(RULE) == []


@pytest.mark.parametrize("caller", [". scripts/inner.sh\n", "cd x && . scripts/inner.sh\n"])
def test_a_script_sourced_with_a_dot_is_followed(ci, caller):
    ci.write(INNER, gated())
    ci.write(SWEEP, caller)
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == [never_set(script=INNER)]


def test_a_dot_inside_a_word_is_no_call(ci):
    ci.write(INNER, gated())
    ci.write(SWEEP, "echo v1. scripts/inner.sh\n")
    steps(ci, f"bash {SWEEP}")
    assert gates(ci) == []
