"""Rendezvous ports that cannot collide between parallel test runs.

Picking a "free" port and handing its number to the ranks leaves a window in
which another pytest-xdist worker can take it (upstream's hard-coded port made
CI flaky; a probed port only makes the race rarer).  Here the parent process
binds the rendezvous TCPStore itself, on port 0, and keeps it open for the
whole run: the kernel hands out a port nobody else holds, and the ranks join
as clients.  An explicitly requested port is checked up front so a taken port
fails at once with its number instead of as a rendezvous time-out.
"""

from __future__ import annotations

import datetime
import errno
import socket
from dataclasses import dataclass

import torch.distributed as dist


class PortInUseError(RuntimeError):
    """The rendezvous port asked for is already bound by another process."""


@dataclass
class Rendezvous:
    """A TCPStore held open by the parent; ranks connect to (host, port)."""

    host: str
    port: int
    store: dist.TCPStore

    def close(self) -> None:
        # Dropping the last reference shuts the store's server down.
        self.store = None  # type: ignore[assignment]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on (host, port) and it can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def open_rendezvous(
    host: str = "127.0.0.1",
    port: int = 0,
    timeout_s: float = 300.0,
) -> Rendezvous:
    """Bind a master TCPStore; port 0 lets the kernel choose a free port."""
    if port and not port_is_free(port, host):
        raise PortInUseError(
            f"master_port={port}: port {port} on {host} is already in use; "
            "pass master_port=0 (the default) to let the harness choose one"
        )
    try:
        store = dist.TCPStore(
            host,
            port,
            is_master=True,
            wait_for_workers=False,
            timeout=datetime.timedelta(seconds=timeout_s),
            use_libuv=True,
        )
    except (RuntimeError, OSError) as exc:  # bound between the check and here
        if "in use" in str(exc).lower():
            raise PortInUseError(
                f"master_port={port}: port {port} on {host} is already in use ({exc})"
            ) from exc
        raise
    return Rendezvous(host=host, port=store.port, store=store)
