"""Async EPLB end-to-end accuracy (upstream PR 40168): serve with DP=4 + EP + async EPLB, run GSM8K.

    python -m tests.e2e.eplb_accuracy --model Qwen/Qwen3-30B-A3B-FP8 --threshold 0.8

Starts ``vllm serve`` (DP 4, expert parallel, EPLB window 20 / step interval
100 / async, all-gather/reduce-scatter all-to-all), waits for /health with a
time limit, runs GSM8K through lm-eval's ``local-completions`` model against
it, writes the results to the output directory and exits 0 only if accuracy
>= threshold.  The server and all its children are stopped on every path
(success, failure, time-out, Ctrl-C).  ``--server-command`` replaces the
``vllm serve`` command (tests use a stand-in server on loopback).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e.server import Server, ServerNotHealthy

EPLB_CONFIG = {"window_size": 20, "step_interval": 100, "use_async": True}
EXIT_BELOW_THRESHOLD = 1
EXIT_NOT_HEALTHY = 3
EXIT_INTERRUPTED = 130


def vllm_serve_command(model: str, port: int) -> list[str]:
    return [
        "vllm",
        "serve",
        model,
        "--port",
        str(port),
        "--data-parallel-size",
        "4",
        "--enable-expert-parallel",
        "--enable-eplb",
        "--eplb-config",
        json.dumps(EPLB_CONFIG, separators=(",", ":")),
        "--all2all-backend",
        "allgather_reducescatter",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eplb_accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="Qwen/Qwen3-30B-A3B-FP8")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.8,
        help="minimum GSM8K exact-match accuracy (default 0.8)",
    )
    parser.add_argument(
        "--num-questions",
        type=int,
        default=1319,
        help="GSM8K questions to ask (default: the whole test split)",
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--output-dir", type=Path, default=Path("eplb_accuracy_out"))
    parser.add_argument(
        "--health-timeout",
        type=float,
        default=1200.0,
        help="seconds to wait for /health (default 1200)",
    )
    parser.add_argument("--task", default="gsm8k", help="lm-eval task (default gsm8k)")
    parser.add_argument("--include-path", default=None, help="extra lm-eval task directory")
    parser.add_argument("--num-fewshot", type=int, default=5)
    parser.add_argument(
        "--server-command",
        default=None,
        help="replace `vllm serve ...` (a shell-quoted command line)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold: {args.threshold} is not between 0 and 1")
    if args.num_questions < 1:
        parser.error(f"--num-questions: {args.num_questions} must be at least 1")
    if not 0 < args.port < 65536:
        parser.error(f"--port: {args.port} is not a TCP port")
    return args


def task_manager(task: str, include_path: str | None) -> Any:
    """lm-eval's task index, for ``task``.

    A task that ``include_path`` defines is looked up in that folder alone: indexing
    lm-eval's own tasks (some 14,000 names) takes about 9 s of one core.  Any other name
    (one of lm-eval's tasks, or a group of the folder's, which may name lm-eval's) gets the
    whole index, where the folder's tasks take precedence, as lm-eval orders them.
    """
    from lm_eval.tasks import TaskManager

    if not include_path:
        return TaskManager()
    own = TaskManager(include_path=include_path, include_defaults=False)
    if task in own.all_subtasks:
        return own
    return TaskManager(include_path=include_path)


def run_gsm8k(args: argparse.Namespace, base_url: str) -> float:
    """Accuracy (strict exact match) of the served model on ``args.task``."""
    import lm_eval

    model_args = {
        "model": args.model,
        "base_url": f"{base_url}/v1/completions",
        "num_concurrent": 4,
        "max_retries": 2,
        "tokenized_requests": False,
        "tokenizer_backend": None,
    }
    manager = task_manager(args.task, args.include_path)
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=model_args,
        tasks=[args.task],
        num_fewshot=args.num_fewshot,
        limit=args.num_questions,
        task_manager=manager,
    )
    metrics = results["results"][args.task]
    (args.output_dir / "results.json").write_text(
        json.dumps(results["results"], indent=2, default=str)
    )
    return float(metrics["exact_match,strict-match"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    command = (
        shlex.split(args.server_command)
        if args.server_command
        else vllm_serve_command(args.model, args.port)
    )
    server = Server(command, args.port, args.output_dir / "server.log")

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too, explicitly: a script started as a background job (`cmd &` in a
    # non-interactive shell, as CI and `su -c` do) inherits SIGINT ignored, Python then never
    # raises KeyboardInterrupt, and the run went on to the end and exited 0 after Ctrl-C
    # (seen in a non-root `make test`; reproduced by starting the test with SIGINT ignored).
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    previous_int = signal.signal(signal.SIGINT, on_sigterm)
    started = time.monotonic()
    try:
        print(f"eplb_accuracy: starting {shlex.join(command)}", flush=True)
        server.start()
        waited = server.wait_healthy(
            args.health_timeout, progress=lambda m: print(f"eplb_accuracy: {m}", flush=True)
        )
        print(
            f"eplb_accuracy: server healthy after {waited:.1f} s; running {args.task} "
            f"({args.num_questions} questions)",
            flush=True,
        )
        accuracy = run_gsm8k(args, server.url)
    except ServerNotHealthy as exc:
        print(f"eplb_accuracy: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_NOT_HEALTHY
    except KeyboardInterrupt:
        print("eplb_accuracy: interrupted; stopping the server", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    verdict = "PASS" if accuracy >= args.threshold else "FAIL"
    summary = {
        "model": args.model,
        "task": args.task,
        "accuracy": accuracy,
        "threshold": args.threshold,
        "verdict": verdict,
        "seconds": round(time.monotonic() - started, 1),
    }
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"eplb_accuracy: {verdict}: accuracy {accuracy:.3f} vs threshold {args.threshold:.3f}",
        flush=True,
    )
    return 0 if verdict == "PASS" else EXIT_BELOW_THRESHOLD


if __name__ == "__main__":
    sys.exit(main())
