"""Fuzz every command's arguments and input files: one line naming the argument, exit 2,
never a traceback.

Each generated command line carries at least one value that is wrong for its option
(drawn from a list of wrong values per kind of option, never computed by the CLI's own
parsers), beside other options with any value at all, so no case starts real work.
The input files (``bench --from-json``, ``lint-ci`` areas, ``bundle --have``) are fuzzed
by content: a bench report is a real one with one part replaced by arbitrary JSON.
Runs in-process (``cli.main``): an exception escaping it fails the test.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_ep_kit import cli

pytestmark = pytest.mark.vllm  # check/bench plan against the installed backends

FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

ANY_TEXT = st.one_of(
    st.sampled_from(
        ["", " ", ",", "0", "1", "2", "-1", "nan", "inf", "x", "2,4", "bf16", "1e400", "--json"]
    ),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)
NOT_AN_INT = ["", " ", "x", "1.5", "nan", "inf", "-", "1e3", "0x10", "²", "1,2", "--"]
NOT_POSITIVE = ["0", "-1", "-100"]
NOT_SECONDS = ["0", "-5", "nan", "inf", "-inf", "", "x", "1e999", "0.0"]
NOT_INT_LIST = ["", ",", " , ", "x", "1,x", "2.5", "nan", "2;4"]
NOT_NAMES = ["", ",", " , "]

# option -> values that are wrong for it whatever else is given (what the error names)
WRONG = {
    "doctor": {"--width": NOT_AN_INT + NOT_POSITIVE},
    "check": {
        "--world-sizes": NOT_INT_LIST + ["0", "1", "-2", "2,1", "1000"],
        "--tp": NOT_INT_LIST + ["0", "-1"],
        "--backends": NOT_NAMES + ["nosuch", "naive,nosuch"],
        "--dtypes": NOT_NAMES + ["nosuch", "bf16,int3"],
        "--timeout": NOT_SECONDS,
        "--width": NOT_AN_INT + NOT_POSITIVE,
    },
    "bench": {
        "--world-size": NOT_AN_INT + NOT_POSITIVE + ["1", "1000"],
        "--tokens": NOT_INT_LIST + ["0", "-5"],
        "--hidden": NOT_INT_LIST + ["0"],
        "--dtypes": NOT_NAMES + ["nosuch"],
        "--backends": NOT_NAMES + ["nosuch"],
        "--top-k": NOT_AN_INT + NOT_POSITIVE,
        "--experts": NOT_AN_INT + NOT_POSITIVE,
        "--warmup": NOT_AN_INT + ["-1"],
        "--repeats": NOT_AN_INT + NOT_POSITIVE,
        "--timeout": NOT_SECONDS,
        "--width": NOT_AN_INT + NOT_POSITIVE,
    },
}
SWITCHES = {"doctor": ["--json"], "check": ["--json"], "bench": ["--json"]}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(command: str, argv: list[str], code, err: str, names) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err)
    assert len(lines) == 1, (argv, err)
    assert lines[0].startswith(f"vllm-ep-kit {command}: error: "), (argv, err)
    assert any(name in lines[0] for name in names), (argv, err)


@st.composite
def bad_command_line(draw, command: str):
    options = WRONG[command]
    wrong = draw(st.sampled_from(sorted(options)))
    others = draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=4))
    argv = [command]
    for option in others:
        if option != wrong:
            argv += [option, draw(ANY_TEXT)]
    argv += draw(st.lists(st.sampled_from(SWITCHES[command]), unique=True))
    position = draw(st.integers(1, len(argv)))
    value = draw(st.sampled_from(options[wrong]))
    return argv[:position] + [f"{wrong}={value}"] + argv[position:], wrong


@pytest.mark.parametrize("command", sorted(WRONG))
def test_a_wrong_value_anywhere_is_one_line_exit_2(command):
    @FUZZ
    @given(bad_command_line(command))
    def case(drawn):
        argv, _ = drawn
        code, _, err = run_cli(argv)
        # the first wrong value in the line is the one argparse names
        names = [word.split("=", 1)[0] for word in argv if word.startswith("--")]
        names += [name.lstrip("-") for name in names]
        assert_one_line_error(command, argv, code, err, names)

    case()


def valid_report() -> dict:
    row = {
        "backend": "naive",
        "hidden": 256,
        "dtype": "bf16",
        "tokens": 8,
        "dispatch_ms": 0.5,
        "combine_ms": 0.25,
        "total_ms": 0.75,
        "gbps": 1.5,
        "vs_baseline": 1.1,
        "vs_link": None,
        "check": "ok",
        "baseline": "all_to_all_single",
        "baseline_gbps": 1.2,
    }
    return {
        "meta": {"world_size": 2, "timer": "wall clock"},
        "results": [row],
        "links": [{"backend": "naive", "gbps": None, "why": "CPU"}],
        "failures": [],
    }


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
REPORT_PARTS = (
    [("meta",), ("results",), ("links",), ("results", 0), ("links", 0)]
    + [("results", 0, key) for key in valid_report()["results"][0]]
    + [("links", 0, key) for key in ("backend", "gbps", "why")]
    + [("meta", "world_size")]
)


@FUZZ
@given(st.sampled_from(REPORT_PARTS), JSON, st.booleans())
def test_bench_from_json_any_report_is_a_table_or_one_line(part, value, drop):
    report = valid_report()
    owner = report
    for key in part[:-1]:
        owner = owner[key]
    if drop:
        del owner[part[-1]]
    else:
        owner[part[-1]] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.json"
        path.write_text(json.dumps(report))
        code, _out, err = run_cli(["bench", "--from-json", str(path)])
    if code != 0:
        assert_one_line_error("bench", [part, value], code, err, ["--from-json"])


FILE_KINDS = {
    "missing": None,
    "folder": "folder",
    "empty": b"",
    "binary": bytes(range(256)),
    "latin-1": "caf\xe9\n".encode("latin-1"),
    "json-list": b"[1, 2]",
    "results-int": b'{"meta": {}, "results": 5}',
    "row-missing-keys": b'{"meta": {}, "results": [{"backend": "naive"}]}',
}


def make_input(folder: Path, kind: str) -> Path:
    path = folder / f"input-{kind}"
    content = FILE_KINDS[kind]
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("kind", sorted(FILE_KINDS))
def test_bench_from_json_file_kinds(tmp_path, kind):
    code, _, err = run_cli(["bench", "--from-json", str(make_input(tmp_path, kind))])
    assert_one_line_error("bench", kind, code, err, ["--from-json"])


@pytest.mark.parametrize("kind", ["missing", "folder", "binary", "latin-1", "empty-out"])
def test_bundle_inputs(tmp_path, kind):
    """A wrong OUT or --have ends before any download (one line, exit 2)."""
    if kind == "empty-out":  # OUT a file
        out = tmp_path / "out-file"
        out.write_text("x")
        argv, names = ["bundle", str(out)], ["OUT"]
    else:
        argv = ["bundle", str(tmp_path / "new-out"), "--have", str(make_input(tmp_path, kind))]
        names = ["--have"]
    code, _, err = run_cli(argv)
    assert_one_line_error("bundle", argv, code, err, names)
    assert not (tmp_path / "new-out").exists()


@FUZZ
@given(
    st.binary(max_size=200)
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.text(max_size=200).map(str.encode)
)
def test_lint_ci_any_area_file_gives_findings_not_a_traceback(content):
    with tempfile.TemporaryDirectory() as folder:
        area = Path(folder) / ".buildkite/test_areas/fuzz.yaml"
        area.parent.mkdir(parents=True)
        area.write_bytes(content)
        code, out, err = run_cli(["lint-ci", "--root", folder])
    assert code in (0, 1), (content, code, err)
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("lint-ci: "), err
    for line in out.splitlines():
        assert line.startswith(".buildkite/test_areas/fuzz.yaml:"), (content, line)


@pytest.mark.parametrize(
    "argv, names",
    [
        (["lint-ci", "--root", "/no/such/folder"], ["--root"]),
        (["lint-ci", "/no/such/file.yaml"], ["FILES"]),
        (["nosuch-command"], ["invalid choice"]),
        (["check", "--no-such-option"], ["unrecognized arguments"]),
    ],
)
def test_other_wrong_arguments(argv, names):
    code, _, err = run_cli(argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and any(n in lines[0] for n in names), err
