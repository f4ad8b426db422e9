"""A stand-in OpenAI-compatible completions server on loopback, for the e2e script's tests.

It "solves" the synthetic GSM8K questions made by the tests ("What is A plus
B?") correctly or wrongly, can refuse to become healthy, can answer slowly,
and can fork a child process (as vLLM's API server does) so tests can check
that stopping the server leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer(prompt: str, mode: str) -> str:
    question = prompt.rsplit("Question:", 1)[-1]
    a, b = (int(n) for n in re.findall(r"-?\d+", question)[:2])
    total = a + b + (1 if mode == "wrong" else 0)
    return f" {a} + {b} = {total}\n#### {total}"


def make_handler(mode: str, delay_s: float, request_file: str | None = None):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self._send(503 if mode == "never-healthy" else 200, {})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "stand-in", "object": "model"}]})
            else:
                self._send(404, {"error": self.path})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompts = request.get("prompt")
            prompts = prompts if isinstance(prompts, list) else [prompts]
            if request_file:  # tells a test that a completion request is being answered
                with open(request_file, "a") as f:
                    f.write("request\n")
            time.sleep(delay_s)
            choices = [
                {"index": i, "text": answer(p, mode), "logprobs": None, "finish_reason": "stop"}
                for i, p in enumerate(prompts)
            ]
            self._send(
                200,
                {
                    "id": "cmpl-stand-in",
                    "object": "text_completion",
                    "model": request.get("model"),
                    "choices": choices,
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                },
            )

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["correct", "wrong", "never-healthy"], default="correct")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--child", action="store_true", help="fork a long-lived child process")
    parser.add_argument("--pid-file", default=None)
    parser.add_argument("--request-file", default=None)
    args = parser.parse_args()
    if args.child:
        child = subprocess.Popen(["sleep", "600"])
        if args.pid_file:
            with open(args.pid_file, "w") as f:
                f.write(str(child.pid))
    ThreadingHTTPServer(
        ("127.0.0.1", args.port), make_handler(args.mode, args.delay, args.request_file)
    ).serve_forever()


if __name__ == "__main__":
    main()
