"""Start a model server, wait for /health with a time limit, always stop it and its children.

The server runs in its own session (process group), so stopping it reaches
every worker it forked (vLLM's API server, engine cores, GPU workers), also
on Ctrl-C: SIGTERM to the group, a grace period, then SIGKILL for what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil


class ServerNotHealthy(RuntimeError):
    """The server did not answer /health in time (or exited)."""


class Server:
    def __init__(
        self, command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None
    ):
        self.command, self.port, self.log_path = command, port, log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it)
        self.proc = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    def wait_healthy(self, timeout_s: float, progress: Callable[[str], None] = print) -> float:
        """Seconds until /health answered 200; raises ServerNotHealthy."""
        assert self.proc is not None
        start = time.monotonic()
        last_error, next_note = "no answer yet", start + 30
        while time.monotonic() - start < timeout_s:
            if self.proc.poll() is not None:
                raise ServerNotHealthy(
                    f"server exited with code {self.proc.returncode} before "
                    f"becoming healthy; see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return time.monotonic() - start
                    last_error = f"HTTP {response.status}"
            except (urllib.error.URLError, OSError) as exc:
                last_error = str(getattr(exc, "reason", exc))
            if time.monotonic() > next_note:
                progress(
                    f"waiting for {self.url}/health: {time.monotonic() - start:.0f} s "
                    f"(last: {last_error})"
                )
                next_note += 30
            time.sleep(1)
        raise ServerNotHealthy(
            f"server at {self.url} did not become healthy within "
            f"{timeout_s:.0f} s (last: {last_error}); see {self.log_path}"
        )

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop the server's whole process group; no process of it survives."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        members = [psutil.Process(self.proc.pid)] if self.proc.poll() is None else []
        with contextlib.suppress(psutil.NoSuchProcess):
            members += psutil.Process(self.proc.pid).children(recursive=True)
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            for proc in members:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(sig)
            _, members = psutil.wait_procs(members, timeout=wait)
            if not members:
                break
        self.proc.wait(timeout=10)
