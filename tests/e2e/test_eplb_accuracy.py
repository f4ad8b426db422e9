"""The async EPLB accuracy script, on CPU: real lm-eval against a stand-in server on loopback.

The GSM8K task is a synthetic one made here (no dataset download), with the
same format, prompt and strict-match filter as lm-eval's gsm8k.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.eplb_accuracy import task_manager

pytest.importorskip("lm_eval", reason="lm-eval not installed (requirements/test.txt)")

HERE = Path(__file__).parent
TASK = """task: gsm8k_synthetic
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
generation_kwargs:
  until: ["Question:"]
  do_sample: false
  temperature: 0.0
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: take_first
metadata:
  version: 1.0
"""


@pytest.fixture
def task_dir(tmp_path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    rows = [
        {"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
        for a, b in [(3, 4), (10, 32), (7, 8), (120, 5), (9, 9), (41, 1)]
    ]
    data = folder / "test.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "gsm8k_synthetic.yaml").write_text(TASK.format(data=data))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script(tmp_path, task_dir, mode, threshold, extra=(), delay=0.0):
    port = free_port()
    pid_file = tmp_path / "child.pid"
    server = (
        f"{sys.executable} {HERE / 'fake_openai_server.py'} --port {port} --mode {mode} "
        f"--delay {delay} --child --pid-file {pid_file} "
        f"--request-file {tmp_path / 'requests.log'}"
    )
    cmd = [
        sys.executable,
        "-m",
        "tests.e2e.eplb_accuracy",
        "--model",
        "stand-in",
        "--threshold",
        str(threshold),
        "--num-questions",
        "6",
        "--port",
        str(port),
        "--output-dir",
        str(tmp_path / "out"),
        "--task",
        "gsm8k_synthetic",
        "--include-path",
        str(task_dir),
        "--num-fewshot",
        "0",
        "--server-command",
        server,
        *extra,
    ]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return cmd, env, pid_file


def assert_no_leftovers(pid_file: Path):
    if pid_file.exists():
        child = int(pid_file.read_text())
        time.sleep(0.2)
        assert not (
            psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE
        ), "the server's child process survived"
    assert not [
        p
        for p in psutil.Process().children(recursive=True)
        if "fake_openai_server" in " ".join(p.cmdline())
    ]


def test_passing_threshold(tmp_path, task_dir):
    cmd, env, pid_file = script(tmp_path, task_dir, "correct", 0.8)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["verdict"] == "PASS" and summary["accuracy"] == 1.0
    assert "PASS: accuracy 1.000 vs threshold 0.800" in result.stdout
    assert_no_leftovers(pid_file)


def test_failing_threshold(tmp_path, task_dir):
    cmd, env, pid_file = script(tmp_path, task_dir, "wrong", 0.8)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["verdict"] == "FAIL" and summary["accuracy"] == 0.0
    assert_no_leftovers(pid_file)


def test_server_never_healthy_times_out(tmp_path, task_dir):
    cmd, env, pid_file = script(
        tmp_path, task_dir, "never-healthy", 0.8, extra=("--health-timeout", "4")
    )
    start = time.monotonic()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert "did not become healthy within 4 s (last: " in result.stderr
    assert time.monotonic() - start < 60
    assert_no_leftovers(pid_file)


def test_ctrl_c_stops_the_server(tmp_path, task_dir):
    cmd, env, pid_file = script(tmp_path, task_dir, "correct", 0.8, delay=30.0)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    line = ""
    while "server healthy" not in line and time.monotonic() < deadline:
        line = proc.stdout.readline()
    assert "server healthy" in line
    # Interrupt while lm-eval waits on a (30 s) answer, not while it is still importing:
    # on a loaded machine a fixed 3 s came before the first request and the run finished.
    requests = tmp_path / "requests.log"
    while not requests.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert requests.exists(), "lm-eval sent no request"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted; stopping the server" in err
    assert_no_leftovers(pid_file)


def test_bad_threshold_is_rejected():
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.eplb_accuracy", "--threshold", "80"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--threshold: 80.0 is not between 0 and 1" in result.stderr


def test_a_task_of_ones_own_folder_is_looked_up_in_that_folder_alone(task_dir):
    manager = task_manager("gsm8k_synthetic", str(task_dir))
    assert manager.all_tasks == ["gsm8k_synthetic"]


def test_any_other_task_name_gets_lm_evals_own_tasks_beside_the_folders(task_dir):
    manager = task_manager("gsm8k", str(task_dir))
    assert {"gsm8k", "gsm8k_synthetic"} <= set(manager.all_subtasks)
