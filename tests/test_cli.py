"""The command line: argument errors name the argument; doctor and check produce data."""

import json
import subprocess
import sys

import pytest

from tests.torchrun_job import torchrun
from vllm_ep_kit.commands.check import CheckArgumentError, make_plan

USABLE = ["allgather_reducescatter", "naive"]


def cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "vllm_ep_kit.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def torchrun_cli(nproc, *args, timeout=600):
    """The CLI launched by torchrun on this host (env:// rendezvous), as each node of a
    multi-node job launches it."""
    return torchrun(nproc, "-m", "vllm_ep_kit.cli", *args, timeout=timeout)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tps": [3]}, "--tp: world size 2 is not divisible by tp=3"),
        ({"backends": ["nope"]}, "--backends: unknown backend 'nope'"),
        ({"dtypes": ["int3"]}, "--dtypes: unknown dtype 'int3'"),
        ({"world_sizes": [8], "gpu_count": 4}, "--world-sizes: 8 ranks but only 4 GPUs visible"),
        ({"world_sizes": [1]}, "--world-sizes: 1 is too small"),
        (
            {"backends": ["flashinfer_nvlink_one_sided"]},
            "--backends: flashinfer_nvlink_one_sided is not usable on this machine: see "
            "`vllm-ep-kit doctor`",
        ),
    ],
)
def test_check_argument_errors_name_the_argument(kwargs, message):
    args = {
        "world_sizes": [2],
        "tps": [1],
        "backends": None,
        "dtypes": ["bf16"],
        "gpu_count": 0,
        "usable": USABLE,
    } | kwargs
    with pytest.raises(CheckArgumentError, match=message.replace("(", r"\(")):
        make_plan(
            args["world_sizes"],
            args["tps"],
            args["backends"],
            args["dtypes"],
            gpu_count=args["gpu_count"],
            usable=args["usable"],
        )


def test_plan_lists_layouts_without_all_to_all_as_not_run():
    plan = make_plan([2, 4], [1, 2], None, ["bf16"], gpu_count=0, usable=USABLE)
    assert [run.layout.describe() for run in plan.runs] == [
        "tp=1,dp=2,ep=2",
        "tp=1,dp=4,ep=4",
        "tp=2,dp=2,ep=4,sp",
    ]
    assert plan.skipped == (
        (
            "allgather_reducescatter tp=2,dp=1,ep=2",
            "no all-to-all in this layout (DP=1 without sequence parallelism)",
        ),
    )
    assert plan.backends == ("allgather_reducescatter",) and plan.device_backend == "gloo"


def test_plan_on_gpus_adds_flashinfer_backends_with_fp8_only_where_covered():
    usable = USABLE + ["flashinfer_nvlink_two_sided", "flashinfer_nvlink_one_sided"]
    plan = make_plan([2], [1, 2], None, ["bf16", "fp8"], gpu_count=2, usable=usable)
    got = {
        (run.backend, run.layout.describe()): sorted({c.dtype for c in run.cases})
        for run in plan.runs
    }
    assert got == {
        ("allgather_reducescatter", "tp=1,dp=2,ep=2"): ["bf16"],
        ("flashinfer_nvlink_two_sided", "tp=1,dp=2,ep=2"): ["bf16", "fp8"],
        ("flashinfer_nvlink_two_sided", "tp=2,dp=1,ep=2"): ["bf16", "fp8"],
        ("flashinfer_nvlink_one_sided", "tp=1,dp=2,ep=2"): ["bf16", "fp8"],
        ("flashinfer_nvlink_one_sided", "tp=2,dp=1,ep=2"): ["bf16", "fp8"],
    }
    assert (
        "allgather_reducescatter fp8",
        "payload dtype not covered by this backend's check (covers bf16, fp16, fp32)",
    ) in plan.skipped
    assert plan.device_backend == "nccl"
    for run in plan.runs:  # FlashInfer: one token source per EP rank
        if run.backend != "allgather_reducescatter":
            assert all(len(c.tokens) == run.layout.ep_size for c in run.cases)


def test_cli_bad_argument_is_one_line_with_exit_2():
    result = cli("check", "--tp", "3", "--world-sizes", "4")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "vllm-ep-kit check: error: --tp: world size 4 is not divisible by tp=3"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "--tp", "3", "--world-sizes", "4"],
        ["check", "--backends", "nope"],
        ["check", "--dtypes", "int3"],
        ["bench", "--out", "/proc/vllm-ep-kit-out"],
    ],
    ids=["check-tp", "check-backends", "check-dtypes", "bench-out"],
)
def test_argument_errors_are_answered_before_vllm_is_imported(argv):
    """Importing vLLM costs seconds (about ten on this CI machine): a typo in an argument
    gets its one line without it."""
    from vllm_ep_kit.harness.fresh_python import run_json

    code = (
        "import contextlib, io, json, sys; from vllm_ep_kit.cli import main\n"
        "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
        f"    rc = main({argv!r})\n"
        "print(json.dumps({'rc': rc, 'err': err.getvalue(),"
        " 'vllm': sorted(m for m in sys.modules if m.split('.')[0] == 'vllm')[:3]}))"
    )
    data = run_json(code)
    assert data["rc"] == 2 and "error: --" in data["err"], data
    assert data["vllm"] == [], data


@pytest.mark.vllm
def test_cli_check_json_end_to_end():
    result = cli("check", "--world-sizes", "2", "--tp", "1", "--dtypes", "fp32", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    rows = data["results"]
    assert len(rows) == 3 and all(r["passed"] and r["dispatch_exact"] for r in rows)
    assert "[3/3]" in result.stderr  # progress lines go to stderr with --json


@pytest.mark.vllm
def test_cli_check_under_torchrun_gathers_every_rank_and_prints_once():
    """One process per rank from torchrun, no self-spawning: every run uses the job's 4 ranks
    (DP and SP layouts), each case merged over all ranks, one JSON document from rank 0."""
    result = torchrun_cli(4, "check", "--dtypes", "fp32", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)  # a second rank printing would make this invalid JSON
    rows = data["results"]
    assert [r["layout"] for r in rows] == ["tp=1,dp=4,ep=4"] * 3 + ["tp=2,dp=2,ep=4,sp"] * 3
    assert all(r["passed"] and r["dispatch_exact"] for r in rows), rows
    assert result.stderr.count("[6/6]") == 1  # progress from rank 0 only


def test_cli_check_under_torchrun_refuses_other_world_sizes():
    result = torchrun_cli(2, "check", "--world-sizes", "4", "--dtypes", "fp32", timeout=300)
    assert result.returncode != 0
    assert (
        "vllm-ep-kit check: error: --world-sizes: this torchrun job has 2 ranks and every "
        "run uses all of them; got 4"
    ) in result.stderr


@pytest.mark.vllm  # doctor reads the installed vLLM: its backends and which hotfixes it needs
def test_cli_doctor_json():
    result = cli("doctor", "--json", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # the report is the output: what libraries log while the probes import them is not
    assert result.stderr == "", result.stderr[-3000:]
    data = json.loads(result.stdout)
    assert {c["name"] for c in data["capabilities"]} == {
        "gpus",
        "nvlink",
        "mnnvl_handles",
        "handle_exchange",
        "ptrace",
        "flashinfer",
        "vllm",
    }
    assert {"torch", "vllm", "flashinfer-python"} <= set(data["versions"])
    assert any(b["name"] == "flashinfer_nvlink_one_sided" for b in data["backends"])
    # every name the installed vLLM accepts, each known to the kit's registry
    assert data["accepted"]["readable"] and len(data["accepted"]["names"]) >= 12
    assert all(row["kit_knows"] for row in data["accepted"]["names"]), data["accepted"]
    statuses = {p["name"]: p["status"] for p in data["patches"]}
    assert statuses == {
        "mnnvl_workspace_ep_group": "not needed",  # the pin has these fixes
        "two_sided_dispatch_x_sf_guard": "not needed",
        "reduce_scatterv_asserts": "applied",  # 0.32.0 still lacks this one
        "nixl_ep_tcp_store_group": "not needed",
    }


@pytest.mark.vllm
@pytest.mark.fresh_ranks("a 2 s limit must not fit the ranks' vLLM import, which pooled ranks skip")
def test_cli_check_reports_failed_ranks_as_failed_rows_and_goes_on():
    """Ranks stopped by the watchdog fail every case of the run with the ranks' reason;
    check exits 1 and prints the ranks' report.  The ranks are spawned, as a user's are."""
    result = cli(
        "check", "--world-sizes", "2", "--tp", "1", "--dtypes", "fp32", "--timeout", "2", "--json"
    )
    assert result.returncode == 1, result.stderr[-3000:]
    rows = json.loads(result.stdout)["results"]
    assert len(rows) == 3
    assert all(
        not r["passed"] and r["max_error"] is None and "watchdog" in r["note"] for r in rows
    ), rows
    assert "allgather_reducescatter on tp=1,dp=2,ep=2 failed" in result.stderr
    assert "ranks failed" in result.stderr  # the runner's full report, not only a summary


def test_plan_names_checkable_backends_that_are_not_usable_here():
    """A GPU host whose NCCL vLLM's PyNccl rejects: AGRS is listed as not run, with why."""
    usable = ["flashinfer_nvlink_two_sided", "flashinfer_nvlink_one_sided"]
    why = "vLLM's PyNccl rejects libnccl.so.2 (NCCL 2.28.9)"
    plan = make_plan(
        [2],
        [1],
        None,
        ["bf16"],
        gpu_count=2,
        usable=usable,
        unusable={"allgather_reducescatter": why, "deepep_low_latency": "no"},
    )
    assert ("allgather_reducescatter", f"not usable here: {why}") in plan.skipped
    assert not any(name.startswith("deepep") for name, _ in plan.skipped)  # not checkable
    assert plan.backends == ("flashinfer_nvlink_two_sided", "flashinfer_nvlink_one_sided")


@pytest.mark.vllm
def test_cli_check_table_in_a_pipe_keeps_every_name_whole():
    """stdout is a pipe here, as in a CI log: no backend name or layout is cut or wrapped
    (rich's 80-column fallback printed "allga…" and folded the layout)."""
    result = cli("check", "--world-sizes", "2", "--tp", "1,2", "--dtypes", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [
        line
        for line in result.stdout.splitlines()
        if "│" in line and "allgather_reducescatter" in line
    ]
    assert len(rows) == 3, result.stdout  # the three table rows, each on one line
    for line in rows:
        assert "tp=1,dp=2,ep=2" in line and "fp32" in line and "pass" in line, line
    assert "…" not in result.stdout
    assert (
        "not run allgather_reducescatter tp=2,dp=1,ep=2: no all-to-all in this layout "
        "(DP=1 without sequence parallelism)"
    ) in result.stdout.splitlines()


def test_doctor_in_a_pipe_fits_a_ci_log_with_names_whole_and_reasons_folded(capsys):
    from vllm_ep_kit.cli import DOCTOR_PIPE_WIDTH, _console, _print_doctor

    long_reason = "needs CUDA GPUs; " + "none visible, " * 12 + "end of reason"
    report = {
        "versions": {"flashinfer-python": "0.7.2.post1"},
        "capabilities": [{"name": "handle_exchange", "ok": False, "detail": long_reason}],
        "backends": [
            {
                "name": "flashinfer_nvlink_two_sided",
                "usable": False,
                "reason": long_reason,
                "note": "",
                "software": "ok",
                "formats": ["bf16", "nvfp4"],
            }
        ],
        "accepted": {
            "readable": True,
            "why": "",
            "names": [
                {
                    "name": "flashinfer_all2allv",
                    "runs_as": "flashinfer_nvlink_two_sided",
                    "how": "alias",
                    "sequence_parallel": False,
                    "note": "alias of flashinfer_nvlink_two_sided",
                    "kit_knows": True,
                    "dbo": False,
                    "cuda_graphs": True,
                },
                {
                    "name": "moonep",
                    "runs_as": "moonep",
                    "how": "",
                    "sequence_parallel": False,
                    "note": "",
                    "kit_knows": False,
                },
            ],
        },
        "patches": [
            {
                "name": "two_sided_dispatch_x_sf_guard",
                "status": "not needed",
                "reason": long_reason,
                "upstream": "vllm-project/vllm#41299",
            }
        ],
    }
    _print_doctor(report, _console(None, pipe_width=DOCTOR_PIPE_WIDTH))  # stdout: no terminal
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    for whole in (
        "flashinfer_nvlink_two_sided",
        "two_sided_dispatch_x_sf_guard",
        "vllm-project/vllm#41299",
        "handle_exchange",
        "flashinfer_all2allv",
    ):
        assert any(whole in line for line in lines), whole
    assert "…" not in out
    # a folded reason is all there, read down its column
    cells = " ".join(line.split("│")[-2].strip() for line in lines if line.count("│") >= 4)
    assert long_reason in cells
    assert "names the installed vLLM accepts (2)" in out
    assert "a backend of its own (unknown to this kit)" in " ".join(lines)
    assert "dispatches bf16, nvfp4" in cells
    alias_row = next(line for line in lines if "flashinfer_all2allv" in line)
    assert [cell.strip() for cell in alias_row.split("│")[2:5]] == ["-", "no", "yes"]
    moonep_row = next(line for line in lines if "│ moonep" in line)
    assert [cell.strip() for cell in moonep_row.split("│")[2:5]] == ["-", "?", "?"]


@pytest.mark.parametrize("command", ["doctor", "check", "bench"])
@pytest.mark.parametrize("width", ["0", "-3", "wide"])
def test_width_must_be_a_positive_integer(command, width):
    result = cli(command, "--width", width, timeout=120)
    assert result.returncode == 2
    assert f"--width: expected a positive integer, got '{width}'" in result.stderr


def _bad_inputs(tmp_path):
    """(argv, the one line expected on stderr) for inputs that printed tracebacks or were
    taken silently before."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 64)
    as_list, as_five, short_row = (tmp_path / n for n in ("list.json", "five.json", "row.json"))
    as_list.write_text("[1, 2]")
    as_five.write_text('{"meta": {}, "results": 5}')
    short_row.write_text('{"meta": {}, "results": [{"backend": "x"}]}')
    bench_report = "vllm-ep-kit bench: error: --from-json: {}: not a bench report ({})"
    return [
        (
            ["check", "--timeout", "nan"],
            "vllm-ep-kit check: error: argument --timeout: expected a positive number of "
            "seconds, got 'nan'",
        ),
        (
            ["check", "--timeout", "0"],
            "argument --timeout: expected a positive number of seconds, got '0'",
        ),
        (
            ["check", "--timeout", "-5"],
            "argument --timeout: expected a positive number of seconds, got '-5'",
        ),
        (
            ["check", "--world-sizes", ""],
            "argument --world-sizes: expected comma-separated integers, got ''",
        ),
        (
            ["check", "--world-sizes", "1000"],
            "vllm-ep-kit check: error: --world-sizes: 1000 "
            "ranks on a CPU-only machine (gloo): at most 16",
        ),
        (["check", "--dtypes", ""], "argument --dtypes: expected comma-separated names, got ''"),
        (
            ["bench", "--world-size", "0"],
            "argument --world-size: expected a positive integer, got '0'",
        ),
        (["bench", "--experts", "0"], "argument --experts: expected a positive integer, got '0'"),
        (
            ["bench", "--out", str(a_file)],
            f"vllm-ep-kit bench: error: --out: {a_file} exists and is not a folder",
        ),
        (
            ["bench", "--out", "/proc/vllm-ep-kit-out"],
            "vllm-ep-kit bench: error: --out: "
            "/proc/vllm-ep-kit-out cannot be created: No such file or directory",
        ),
        (
            ["bench", "--from-json", str(as_list)],
            bench_report.format(as_list, "the report: [1, 2] is not of type 'object'"),
        ),
        (
            ["bench", "--from-json", str(as_five)],
            bench_report.format(as_five, "results: 5 is not of type 'array'"),
        ),
        (
            ["bench", "--from-json", str(short_row)],
            bench_report.format(short_row, "results[0]: 'hidden' is a required property"),
        ),
        (
            ["bundle", str(a_file)],
            f"vllm-ep-kit bundle: error: OUT: {a_file} exists and is not a folder",
        ),
        (
            ["bundle", str(tmp_path / "new"), "--have", str(tmp_path)],
            f"vllm-ep-kit bundle: error: --have: {tmp_path}: not a text file of package names "
            "(IsADirectoryError)",
        ),
        (
            ["bundle", str(tmp_path / "new"), "--have", str(binary)],
            f"vllm-ep-kit bundle: error: --have: {binary}: not a text file of package names "
            "(UnicodeDecodeError)",
        ),
    ]


def test_bad_inputs_get_one_line_and_exit_2(tmp_path):
    """Each input printed a Python traceback, or was accepted silently, before."""
    for argv, expected in _bad_inputs(tmp_path):
        result = cli(*argv, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (argv, result.stderr[-2000:])
        assert len(lines) == 1 and expected in lines[0], (argv, result.stderr[-2000:])
        assert not (tmp_path / "new").exists()


@pytest.mark.vllm
def test_ctrl_c_during_check_exits_130_with_one_line_and_no_process_left(monkeypatch):
    import signal
    import time
    import uuid

    from tests.harness.test_faults import MARK, assert_none_alive

    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK, mark)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm_ep_kit.cli",
            "check",
            "--world-sizes",
            "2",
            "--tp",
            "1",
            "--dtypes",
            "fp32",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a background job of a script inherits
        # SIGINT ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = ""
        while "starting allgather_reducescatter" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(1.0)  # the ranks are starting
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines() == ["vllm-ep-kit check: interrupted"], err[-3000:]

    assert_none_alive(mark, 5)


def test_a_command_that_cannot_run_here_says_why_in_one_line(monkeypatch, capsys):
    """The harness's "not runnable here" reaching the command line: the reason on one
    line, exit 1, no traceback."""
    from vllm_ep_kit import cli
    from vllm_ep_kit.harness import skip_or_fail

    monkeypatch.setattr(
        cli, "cmd_doctor", lambda args: skip_or_fail("needs 4 CUDA GPUs, 0 visible")
    )
    assert cli.main(["doctor"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "vllm-ep-kit doctor: cannot run here: needs 4 CUDA GPUs, 0 visible\n"
    assert captured.out == ""
