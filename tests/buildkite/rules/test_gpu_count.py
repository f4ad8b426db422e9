"""gpu-count: a command asking for more GPUs (vLLM's tensor x data x pipeline parallel
sizes) than its step's job gets, and tests marked for more GPUs that only steps too small
for them run (so they skip in every automatic build)."""

from __future__ import annotations

import shlex

import pytest
import yaml

RULE = "gpu-count"
AREA = ".buildkite/test_areas/area.yaml"
HINT = "set `num_devices: {}` or run it with fewer ranks"


def step(*commands: str, label: str = "serve", **fields) -> dict:
    return {"label": label, **fields, "commands": list(commands)}


def lint_steps(ci, *steps: dict) -> list:
    """The rule's findings on one area file holding ``steps``; a step that asks for GPUs and
    names no device runs on ``h100``, a Kubernetes pod that gets exactly what it asks for."""
    steps = tuple(
        {"device": "h100", **s} if "num_devices" in s and "device" not in s else s for s in steps
    )
    ci.area(yaml.safe_dump({"group": "g", "steps": list(steps)}, sort_keys=False, width=1000))
    return ci.findings(RULE)


def too_few(label: str, gpus: int, need: int, why: str) -> str:
    return f"step {label!r} gets {gpus} GPU(s) but a command needs {need} ({why})"


# --- commands: the parallel sizes a command line asks for ------------------------------

SPELLINGS = [
    ("--tensor-parallel-size 2", "TP=2"),
    ("--tensor-parallel-size=2", "TP=2"),
    ("-tp 2", "TP=2"),
    ("-tp=2", "TP=2"),
    ("--data-parallel-size 2", "DP=2"),
    ("--data-parallel-size=2", "DP=2"),
    ("-dp 2", "DP=2"),
    ("-dp=2", "DP=2"),
    ("--pipeline-parallel-size 2", "PP=2"),
    ("--pipeline-parallel-size=2", "PP=2"),
    ("-pp 2", "PP=2"),
    ("-pp=2", "PP=2"),
]


@pytest.mark.parametrize(("flag", "why"), SPELLINGS)
def test_a_size_of_two_on_a_one_gpu_job_is_found_at_its_command(ci, flag, why):
    (finding,) = lint_steps(ci, step("nvidia-smi", f"vllm serve facebook/opt-125m {flag}"))
    assert finding.rule == RULE
    assert finding.path == AREA
    assert finding.line == ci.line_of("vllm serve")
    assert finding.message == too_few("serve", 1, 2, why)
    assert finding.hint == HINT.format(2)


@pytest.mark.parametrize(("flag", "why"), SPELLINGS)
def test_a_size_of_two_on_a_two_gpu_job_is_clean(ci, flag, why):
    assert lint_steps(ci, step(f"vllm serve facebook/opt-125m {flag}", num_devices=2)) == []


def test_the_sizes_multiply_into_one_gpu_per_rank(ci):
    command = "vllm serve m -tp 4 --pipeline-parallel-size=2 --data-parallel-size 3"
    (finding,) = lint_steps(ci, step(command, num_devices=23))
    assert finding.message == too_few("serve", 23, 24, "DP=3 x PP=2 x TP=4")
    assert finding.hint == HINT.format(24)
    assert lint_steps(ci, step(command, num_devices=24)) == []


def test_a_size_of_one_asks_for_one_gpu(ci):
    assert lint_steps(ci, step("vllm serve m -tp 1 -dp 1 -pp 1")) == []


@pytest.mark.parametrize(
    "command",
    [
        "vllm serve a -tp 4 & vllm serve b -tp 2",
        "vllm serve a -tp 2 & vllm serve b -tp 4",
    ],
)
def test_of_a_size_named_twice_the_larger_counts(ci, command):
    (finding,) = lint_steps(ci, step(command, num_devices=3))
    assert finding.message == too_few("serve", 3, 4, "TP=4")


@pytest.mark.parametrize(
    "command",
    [
        "vllm serve m -tp $TP",
        "vllm serve m --tensor-parallel-size=auto",
        "vllm serve m -dp -1",
        "vllm serve m -tp",  # the flag's value is missing: the line ends
        "vllm serve m -tp=",
        "vllm serve m  # -tp 4 in a comment",
    ],
)
def test_a_size_that_is_not_a_number_on_the_line_asks_for_nothing(ci, command):
    assert lint_steps(ci, step(command)) == []


def test_a_size_of_zero_makes_the_product_zero(ci):
    assert lint_steps(ci, step("vllm serve m -tp 0 -dp 4")) == []


def test_a_line_shlex_cannot_split_is_read_word_by_word(ci):
    (finding,) = lint_steps(ci, step("""vllm serve m -tp 4 --chat-template "{{x}}"""))
    assert finding.message == too_few("serve", 1, 4, "TP=4")


@pytest.mark.parametrize(
    "command",
    [
        "torchrun --nproc-per-node 8 tests/test_gloo.py",  # gloo tests run more ranks on purpose
        "torchrun --nproc_per_node=8 tests/test_gloo.py",
        "pytest -n 8 tests/test_gloo.py",
        "vllm serve m --data-parallel-size-local 4",
        "vllm serve m --tensor-parallel 4",
        "vllm serve m -TP 4",
        "python run.py _tp 4",  # a word, not a flag: only --long_flags are respelt
    ],
)
def test_other_flags_ask_for_no_gpus(ci, command):
    assert lint_steps(ci, step(command)) == []


@pytest.mark.parametrize("device", ["cpu", "cpu-small", "intel_cpu"])
def test_a_cpu_step_is_not_judged(ci, device):
    assert lint_steps(ci, step("vllm serve m -tp 2", device=device)) == []


@pytest.mark.parametrize("device", ["h200_18gb", "h200_35gb"])
def test_a_slice_of_one_h200_gets_one_gpu_whatever_num_devices_says(ci, device):
    (finding,) = lint_steps(ci, step("vllm serve m -tp 2", device=device, num_devices=2))
    assert finding.message == too_few("serve", 1, 2, "TP=2")


def test_a_gpu_device_gets_num_devices(ci):
    assert lint_steps(ci, step("vllm serve m -tp 2", device="h100", num_devices=2)) == []
    (finding,) = lint_steps(ci, step("vllm serve m -tp 2", device="h100"))
    assert finding.message == too_few("serve", 1, 2, "TP=2")


def test_a_multi_node_step_is_not_judged(ci):
    assert lint_steps(ci, step("vllm serve m -tp 4", num_nodes=2)) == []


def test_a_one_node_step_is_judged(ci):
    (finding,) = lint_steps(ci, step("vllm serve m -tp 4", num_nodes=1, num_devices=2))
    assert finding.message == too_few("serve", 2, 4, "TP=4")


def test_an_optional_steps_commands_are_judged(ci):
    (finding,) = lint_steps(ci, step("vllm serve m -tp 4", optional=True))
    assert finding.message == too_few("serve", 1, 4, "TP=4")


def test_each_command_is_found_at_its_own_line(ci):
    findings = lint_steps(
        ci, step("vllm serve a -tp 2", "vllm serve b -dp 4", label="two", num_devices=2)
    )
    assert [(f.line, f.message) for f in findings] == [
        (ci.line_of("vllm serve b"), too_few("two", 2, 4, "DP=4"))
    ]


def test_every_step_is_judged(ci):
    findings = lint_steps(
        ci,
        step("vllm serve m -tp 2", label="first"),
        step("vllm serve m -tp 2", label="second"),
    )
    assert [f.message for f in findings] == [
        too_few("first", 1, 2, "TP=2"),
        too_few("second", 1, 2, "TP=2"),
    ]


# --- tests marked for more GPUs than the steps that run them get -------------------------

MARKED = """\
import pytest
from tests.utils import multi_gpu_test


def test_one():
    pass


@multi_gpu_test(num_gpus=2)
def test_two():
    pass
"""


def unmet(label: str, gpus: int, test: str, need: int, file: str = "tests/test_m.py") -> str:
    return (
        f"step {label!r} gets {gpus} GPU(s) but {file}::{test} is marked for {need}, and no "
        f"step with {need} runs it: it skips in every build"
    )


def test_a_marked_test_only_a_smaller_step_runs_is_found_at_its_command(ci):
    ci.write("tests/test_m.py", MARKED)
    (finding,) = lint_steps(ci, step("nvidia-smi", "pytest -v tests/test_m.py", label="small"))
    assert finding.rule == RULE
    assert finding.path == AREA
    assert finding.line == ci.line_of("pytest -v")
    assert finding.message == unmet("small", 1, "test_two", 2)
    assert finding.hint == "run tests/test_m.py in a step with `num_devices: 2`"


def test_a_marked_test_on_a_step_with_exactly_its_gpus_is_clean(ci):
    ci.write("tests/test_m.py", MARKED)
    assert lint_steps(ci, step("pytest -v tests/test_m.py", num_devices=2)) == []


@pytest.mark.parametrize(
    "decorator",
    [
        "@multi_gpu_test(num_gpus=4)",
        "@utils.multi_gpu_test(num_gpus=4)",
        "@multi_gpu_only(num_gpus=4)",
        "@pytest.mark.gpus(4)",
        "@pytest.mark.gpus(num_gpus=4)",
        "@multi_gpu_test(reason='tp', num_gpus=4)",
        "@pytest.mark.gpus(2, num_gpus=4)",  # the keyword is read first
        "@pytest.mark.slow\n@multi_gpu_test(num_gpus=4)\n@pytest.mark.gpus(3)",  # the largest
    ],
)
def test_each_mark_spelling_asks_for_its_gpus(ci, decorator):
    ci.write("tests/test_m.py", f"{decorator}\ndef test_four():\n    pass\n")
    (finding,) = lint_steps(ci, step("pytest -v tests/test_m.py", label="small", num_devices=3))
    assert finding.message == unmet("small", 3, "test_four", 4)
    assert finding.hint == "run tests/test_m.py in a step with `num_devices: 4`"


def test_an_async_test_is_read_too(ci):
    ci.write("tests/test_m.py", "@pytest.mark.gpus(2)\nasync def test_a():\n    pass\n")
    (finding,) = lint_steps(ci, step("pytest -v tests/test_m.py", label="small"))
    assert finding.message == unmet("small", 1, "test_a", 2)


@pytest.mark.parametrize(
    "decorator",
    [
        "@multi_gpu_test(num_gpus=1)",
        "@pytest.mark.gpus(1)",
        "@multi_gpu_only",  # not called: no number
        "@multi_gpu_test(num_gpus=GPUS)",
        "@pytest.mark.gpus('4')",
        "@pytest.mark.gpus()",
        "@pytest.mark.parametrize('n', [4])",
        "@pytest.mark.distributed(num_gpus=4)",
        "@factory()(num_gpus=4)",
        "@pytest.mark.gpus(num=4)",
    ],
)
def test_other_decorators_ask_for_no_more_gpus(ci, decorator):
    ci.write("tests/test_m.py", f"{decorator}\ndef test_a():\n    pass\n")
    assert lint_steps(ci, step("pytest -v tests/test_m.py")) == []


@pytest.mark.parametrize(
    "text",
    [
        "class TestA:\n    @pytest.mark.gpus(2)\n    def test_a(self):\n        pass\n",
        "@pytest.mark.gpus(2)\nclass TestA:\n    def test_a(self):\n        pass\n",
    ],
)
def test_a_marked_method_or_class_is_judged_under_its_class(ci, text):
    ci.write("tests/test_m.py", text)
    (finding,) = lint_steps(ci, step("pytest -v tests/test_m.py"))
    assert "tests/test_m.py::TestA is marked for 2" in finding.message
    assert lint_steps(ci, step("pytest -v tests/test_m.py::TestA::test_a", num_devices=2)) == []


@pytest.mark.parametrize(
    "command",
    [
        "python a.py -tp 2 && python b.py -dp 2",  # one after the other
        "python a.py -tp 2; python b.py -dp 2",
        "python a.py -tp 2 | tee log && python b.py -dp 2 > out",
        "vllm serve m -tp 4 -tp 2",  # argparse keeps the last value
    ],
)
def test_each_command_of_a_line_is_judged_on_its_own(ci, command):
    assert lint_steps(ci, step(command, num_devices=2)) == []


def test_the_neediest_command_of_a_line_is_the_one_named(ci):
    (finding,) = lint_steps(ci, step("python a.py -tp 2 && vllm serve m -tp 2 -dp 2"))
    assert finding.message == too_few("serve", 1, 4, "DP=2 x TP=2")


@pytest.mark.parametrize(
    ("flag", "why"),
    [
        ("--tensor_parallel_size 4", "TP=4"),
        ("--data_parallel_size=4", "DP=4"),
        ("--pipeline_parallel_size 4", "PP=4"),
    ],
)
def test_vllms_underscore_spelling_of_a_size_counts(ci, flag, why):
    """vLLM's argument parser reads --tensor_parallel_size as --tensor-parallel-size."""
    (finding,) = lint_steps(ci, step(f"vllm serve m {flag}"))
    assert finding.message == too_few("serve", 1, 4, why)


def test_an_unclosed_quote_reads_the_words_as_written(ci):
    (finding,) = lint_steps(ci, step("vllm serve m -tp 2 --name 'x  # -tp 8"))
    assert finding.message == too_few("serve", 1, 2, "TP=2")


def test_an_unclosed_quote_line_ends_at_its_first_comment_mark(ci):
    (finding,) = lint_steps(ci, step("vllm serve m -tp 2 --name 'x  # -tp 8 # -tp 4"))
    assert finding.message == too_few("serve", 1, 2, "TP=2")


@pytest.mark.parametrize("value", ['"4"', "'4'", '"4"""'])
def test_a_quoted_size_is_read_as_the_shell_passes_it(ci, value):
    (finding,) = lint_steps(ci, step(f"vllm serve m --tensor-parallel-size {value}"))
    assert finding.message == too_few("serve", 1, 4, "TP=4")


def test_a_size_glued_to_other_characters_is_no_number(ci):
    assert lint_steps(ci, step("vllm serve m -tp 4,2 -dp 2@x")) == []


def test_of_two_commands_needing_as_many_gpus_the_first_is_named(ci):
    (finding,) = lint_steps(ci, step("python a.py -dp 2 && python b.py -tp 2"))
    assert finding.message == too_few("serve", 1, 2, "DP=2")


def test_a_class_with_attributes_and_a_marked_method_is_judged(ci):
    ci.write(
        "tests/test_m.py",
        "class TestA:\n    size = 2\n\n    @pytest.mark.gpus(2)\n    def test_a(self):\n"
        "        pass\n",
    )
    (finding,) = lint_steps(ci, step("pytest -v tests/test_m.py"))
    assert "tests/test_m.py::TestA is marked for 2" in finding.message


@pytest.mark.parametrize("text", ["def test_a(:\n", None])
def test_a_file_that_does_not_parse_or_is_missing_asks_for_nothing(ci, text):
    if text is not None:
        ci.write("tests/test_m.py", text)
    assert lint_steps(ci, step("pytest -v tests/test_m.py")) == []


def test_the_most_demanding_test_of_a_file_is_named(ci):
    ci.write(
        "tests/test_m.py",
        "@pytest.mark.gpus(2)\ndef test_two():\n    pass\n\n"
        "@pytest.mark.gpus(4)\ndef test_four():\n    pass\n\n"
        "@pytest.mark.gpus(3)\ndef test_three():\n    pass\n",
    )
    findings = lint_steps(
        ci,
        step("pytest -v tests/test_m.py", label="small"),
        step("pytest -v tests/test_m.py", label="two", num_devices=2),
    )
    assert [f.message for f in findings] == [
        unmet("small", 1, "test_four", 4),
        unmet("two", 2, "test_four", 4),
    ]


def test_of_two_tests_marked_alike_the_first_is_named(ci):
    ci.write(
        "tests/test_m.py",
        "@pytest.mark.gpus(2)\ndef test_b():\n    pass\n\n"
        "@pytest.mark.gpus(2)\ndef test_a():\n    pass\n",
    )
    (finding,) = lint_steps(ci, step("pytest -v tests/test_m.py", label="small"))
    assert finding.message == unmet("small", 1, "test_b", 2)


@pytest.mark.parametrize(
    "selector",
    ["::test_two", "::test_two[tp2-bf16]", "::test_two::sub"],
)
def test_a_selector_naming_the_marked_test_is_judged(ci, selector):
    ci.write("tests/test_m.py", MARKED)
    (finding,) = lint_steps(ci, step(f"pytest -v tests/test_m.py{selector}", label="small"))
    assert finding.message == unmet("small", 1, "test_two", 2)


@pytest.mark.parametrize("selector", ["::test_one", "::test_one[tp2]", "::test_twofold"])
def test_a_selector_naming_another_test_is_clean(ci, selector):
    ci.write("tests/test_m.py", MARKED)
    assert lint_steps(ci, step(f"pytest -v tests/test_m.py{selector}")) == []


@pytest.mark.parametrize(
    "bigger",
    [
        step("pytest -v tests/test_m.py", label="big", num_devices=2),
        step("pytest -v tests/test_m.py", label="big", num_devices=4),
        step("pytest -v tests/test_m.py::test_two", label="big", num_devices=2),
        step("pytest -v tests/test_m.py::test_two[x]", label="big", num_devices=2),
        step("echo", "pytest tests/test_z.py tests/test_m.py", label="big", num_devices=2),
        # an optional step runs in nightly builds
        step("pytest -v tests/test_m.py", label="big", num_devices=2, optional=True),
        # a folder holding it, a glob matching it
        step("pytest -v tests", label="big", num_devices=2),
        step("pytest -v 'tests/test_*.py'", label="big", num_devices=2),
        # the whole runner of a device whose size the tree does not say may have enough
        step("pytest -v tests/test_m.py", label="big", device="b200"),
    ],
)
def test_a_marked_test_a_bigger_step_runs_is_clean_on_the_smaller(ci, bigger):
    ci.write("tests/test_m.py", MARKED)
    assert lint_steps(ci, step("pytest -v tests/test_m.py", label="small"), bigger) == []


@pytest.mark.parametrize(
    "bigger",
    [
        step("pytest -v tests/test_m.py", label="big", num_devices=1),
        step("pytest -v tests --ignore=tests/test_m.py", label="big", num_devices=2),
        step("pytest -v tests/test_m.py", label="big", device="cpu", num_devices=2),
        step("pytest -v tests/test_z.py", label="big", num_devices=2),
        step("pytest -v tests/test_m.py::test_one", label="big", num_devices=2),
    ],
)
def test_a_marked_test_no_bigger_step_runs_is_found(ci, bigger):
    ci.write("tests/test_m.py", MARKED)
    findings = lint_steps(ci, step("pytest -v tests/test_m.py", label="small"), bigger)
    assert unmet("small", 1, "test_two", 2) in [f.message for f in findings]


def test_a_selected_test_a_bigger_step_runs_whole_is_clean(ci):
    ci.write("tests/test_m.py", MARKED)
    small = step("pytest -v tests/test_m.py::test_two", label="small")
    assert lint_steps(ci, small, step("pytest tests/test_m.py", label="big", num_devices=2)) == []


def test_an_optional_small_step_is_judged_for_marks_too(ci):
    ci.write("tests/test_m.py", MARKED)
    (finding,) = lint_steps(ci, step("pytest -v tests/test_m.py", optional=True, label="small"))
    assert finding.message == unmet("small", 1, "test_two", 2)


@pytest.mark.parametrize("fields", [{"device": "cpu"}, {"num_nodes": 2}])
def test_a_cpu_or_multi_node_step_is_not_judged_for_marks(ci, fields):
    ci.write("tests/test_m.py", MARKED)
    assert lint_steps(ci, step("pytest -v tests/test_m.py", **fields)) == []


def test_a_file_after_a_script_in_one_command_is_judged(ci):
    ci.write("tests/test_m.py", MARKED).write("scripts/prep.sh", "echo\n")
    (finding,) = lint_steps(
        ci, step("bash scripts/prep.sh && pytest -v tests/test_m.py", label="small")
    )
    assert finding.message == unmet("small", 1, "test_two", 2)


def test_a_file_after_one_that_fits_in_one_command_is_judged(ci):
    ci.write("tests/test_m.py", MARKED).write("tests/test_a.py", "def test_a():\n    pass\n")
    (finding,) = lint_steps(ci, step("pytest tests/test_a.py tests/test_m.py", label="small"))
    assert finding.message == unmet("small", 1, "test_two", 2)


def test_a_script_that_parses_as_python_is_not_read_for_marks(ci):
    ci.write("scripts/run.sh", MARKED)
    assert lint_steps(ci, step("bash scripts/run.sh")) == []


def test_each_file_a_step_runs_is_judged(ci):
    ci.write("tests/test_m.py", MARKED).write("tests/test_n.py", MARKED)
    findings = lint_steps(
        ci, step("pytest tests/test_m.py", "pytest tests/test_n.py", label="small")
    )
    assert [(f.line, f.message) for f in findings] == [
        (ci.line_of("tests/test_m.py"), unmet("small", 1, "test_two", 2)),
        (ci.line_of("tests/test_n.py"), unmet("small", 1, "test_two", 2, "tests/test_n.py")),
    ]


def test_a_step_after_a_cpu_or_multi_node_step_is_judged(ci):
    findings = lint_steps(
        ci,
        step("vllm serve m -tp 2", label="cpu", device="cpu"),
        step("vllm serve m -tp 2", label="nodes", num_nodes=2),
        step("vllm serve m -tp 2", label="gpu"),
    )
    assert [f.message for f in findings] == [too_few("gpu", 1, 2, "TP=2")]


def test_a_file_after_one_a_bigger_step_runs_in_one_command_is_judged(ci):
    ci.write("tests/test_m.py", MARKED).write("tests/test_n.py", MARKED)
    findings = lint_steps(
        ci,
        step("pytest tests/test_m.py tests/test_n.py", label="small"),
        step("pytest tests/test_m.py", label="big", num_devices=2),
    )
    assert [f.message for f in findings] == [unmet("small", 1, "test_two", 2, "tests/test_n.py")]


# --- the GPUs a job sees: its runner ---------------------------------------------------


def raw_steps(ci, *steps: dict) -> list:
    """Findings on steps written as they are (no device added)."""
    ci.area(yaml.safe_dump({"group": "g", "steps": list(steps)}, sort_keys=False, width=1000))
    return ci.findings(RULE)


@pytest.mark.parametrize(("asked", "sees"), [(None, 1), (2, 4), (4, 4), (3, 1), (8, 1)])
def test_the_default_pool_passes_its_whole_runner(ci, asked, sees):
    """2 or 4 devices choose gpu_4_queue (4 GPUs, all passed); any other count gpu_1_queue."""
    fields = {} if asked is None else {"num_devices": asked}
    assert raw_steps(ci, step(f"vllm serve m -tp {sees}", **fields)) == []
    (finding,) = raw_steps(ci, step(f"vllm serve m -tp {sees + 1}", **fields))
    assert finding.message == too_few("serve", sees, sees + 1, f"TP={sees + 1}")


@pytest.mark.parametrize("device", ["h100", "a100", "b200-k8s"])
def test_a_kubernetes_pod_gets_exactly_what_it_asks_for(ci, device):
    (finding,) = raw_steps(ci, step("vllm serve m -tp 4", device=device, num_devices=2))
    assert finding.message == too_few("serve", 2, 4, "TP=4")


@pytest.mark.parametrize("device", ["h200", "b200", "intel_gpu", "gh200", "some_new_gpu"])
def test_a_whole_runner_of_unwritten_size_is_not_judged(ci, device):
    assert raw_steps(ci, step("vllm serve m -tp 8", device=device, num_devices=2)) == []


@pytest.mark.parametrize(
    "command", ["torchrun --nproc-per-node=4 t.py", "torchrun --nproc_per_node 4 t.py"]
)
def test_torchrun_beyond_a_pod_is_found_and_on_a_whole_runner_is_not(ci, command):
    (finding,) = raw_steps(ci, step(command, device="b200-k8s", num_devices=2))
    assert finding.message == too_few(
        "serve", 2, 4, "torchrun --nproc-per-node=4 on a pod that gets exactly 2"
    )
    assert raw_steps(ci, step(command, num_devices=2)) == []  # gpu_4_queue: gloo may run 4
    assert raw_steps(ci, step(command, device="b200-k8s", num_devices=4)) == []


POD = {"device": "b200-k8s", "num_devices": 2}


@pytest.mark.parametrize(
    "command",
    [
        "/usr/local/bin/torchrun --nproc-per-node=4 t.py",
        "cd distributed && torchrun --nproc-per-node=4 t.py",
        "torchrun t.py --nproc-per-node 4",
    ],
)
def test_torchrun_is_read_by_its_name_after_other_commands_and_with_its_value_last(ci, command):
    (finding,) = raw_steps(ci, step(command, **POD))
    assert finding.message.endswith("(torchrun --nproc-per-node=4 on a pod that gets exactly 2)")


@pytest.mark.parametrize(
    "command", ["echo --nproc-per-node=4", "torchrun t.py --nproc-per-node", "true ;; true"]
)
def test_no_torchrun_process_count_is_no_finding(ci, command):
    assert raw_steps(ci, step(command, **POD)) == []


def test_a_torchrun_as_big_as_the_model_says_what_the_model_needs(ci):
    command = "torchrun --nproc-per-node=4 t.py && vllm serve m -tp 4"
    (finding,) = raw_steps(ci, step(command, **POD))
    assert finding.message == too_few("serve", 2, 4, "TP=4")


def test_a_step_of_unwritten_size_does_not_stop_the_steps_after_it(ci):
    findings = raw_steps(ci, step("vllm serve m -tp 8", device="h200"), step("vllm serve m -tp 2"))
    assert [f.message for f in findings] == [too_few("serve", 1, 2, "TP=2")]


def test_a_marked_file_with_undecodable_bytes_is_read(ci):
    (ci.root / "tests").mkdir()
    (ci.root / "tests/test_m.py").write_bytes(b"# caf\xe9\n" + MARKED.encode())
    (finding,) = lint_steps(ci, step("pytest -v tests/test_m.py", label="small"))
    assert finding.message == unmet("small", 1, "test_two", 2)


def test_a_file_naming_every_marker_is_read(ci):
    ci.write("tests/test_m.py", "# multi_gpu_test, multi_gpu_only\n" + MARKED)
    (finding,) = lint_steps(ci, step("pytest -v tests/test_m.py", label="small"))
    assert finding.message == unmet("small", 1, "test_two", 2)


def test_a_marked_file_that_does_not_parse_is_no_finding(ci):
    ci.write("tests/test_m.py", "@multi_gpu_test(num_gpus=4)\ndef broken(:\n")
    assert lint_steps(ci, step("pytest -v tests/test_m.py")) == []


def test_a_bigger_step_running_it_after_leaving_it_out_runs_it(ci):
    ci.write("tests/test_m.py", MARKED)
    bigger = step(
        "pytest -v tests --ignore=tests/test_m.py",
        "pytest -v tests/test_m.py",
        label="big",
        num_devices=2,
    )
    assert lint_steps(ci, step("pytest -v tests/test_m.py", label="small"), bigger) == []


# --- pytest -k: the marked tests a command leaves out --------------------------------------


def test_a_marked_test_the_small_steps_k_leaves_out_is_clean(ci):
    ci.write("tests/test_m.py", MARKED)
    assert lint_steps(ci, step("pytest -v tests/test_m.py -k 'not two'", label="small")) == []


@pytest.mark.parametrize(
    "keyword",
    ["two", "not one", "FLASHINFER", "not FLASHINFER", "test_m and not one", "(unclosed"],
)
def test_a_k_that_may_keep_the_marked_test_still_counts(ci, keyword):
    ci.write("tests/test_m.py", MARKED)
    small = step(f"pytest -v tests/test_m.py -k {shlex.quote(keyword)}", label="small")
    assert [f.message for f in lint_steps(ci, small)] == [unmet("small", 1, "test_two", 2)]


def test_a_bigger_step_whose_k_leaves_the_marked_test_out_does_not_run_it(ci):
    ci.write("tests/test_m.py", MARKED)
    small = step("pytest -v tests/test_m.py", label="small")
    big = step("pytest -v tests/test_m.py -k 'not two'", label="big", num_devices=2)
    assert [f.message for f in lint_steps(ci, small, big)] == [unmet("small", 1, "test_two", 2)]


def test_a_bigger_steps_k_on_a_folder_counts_and_holds_only_for_its_command(ci):
    ci.write("tests/test_m.py", MARKED)
    small = step("pytest -v tests/test_m.py", label="small")
    left_out = step("pytest -v tests -k 'not two'", label="big", num_devices=2)
    assert len(lint_steps(ci, small, left_out)) == 1
    for line in (
        "pytest -v tests -k 'not two' && pytest -v tests",
        "pytest -v tests && pytest -v tests -k 'not two'",
    ):
        kept = step(line, label="big", num_devices=2)
        assert lint_steps(ci, small, kept) == [], line


def test_a_bigger_step_runs_a_marked_test_after_another_file_its_k_leaves_out(ci):
    ci.write("tests/test_m.py", MARKED).write("tests/test_z.py", MARKED)
    small = step("pytest -v tests/test_m.py", label="small")
    line = "pytest -v 'tests/test_*.py' -k 'not two' && pytest -v tests/test_m.py"
    assert lint_steps(ci, small, step(line, label="big", num_devices=2)) == []
