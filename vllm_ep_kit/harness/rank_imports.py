"""What a pooled rank imports, imported once in the fork server its processes start from.

Importing this module is the fork server's preload (``pool.rank_context``): torch,
torch.distributed, the harness's rank side and, where vLLM is installed, the vLLM
modules every pooled task reaches (parallel state, the all-to-all managers, the MoE
layer).  A rank forked from the server starts with them imported, as vLLM's own
engine forks its workers after ``import vllm``, instead of paying about 12 s of one
core per rank here for the import.  Nothing is run: no tensor op (a fork server whose
OpenMP pool is up can hang its children in their first parallel region), no device
touched.  An import that fails here is left to fail again, with its own message, in
the task that needs it.
"""

from __future__ import annotations

import contextlib
import importlib
import os

_parent = os.environ.get("VLLM_EP_KIT_FORK_SERVER", "")  # pool.SERVER_ENV: the pool's pid
if _parent.isdigit():  # in the fork server
    import ctypes
    import signal

    # The server dies with the process that started it, at once, even mid-import: a
    # server left importing would fork a rank the pool has already given up on.  (Its
    # ranks watch that process themselves: the death signal is not inherited.)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(_parent):  # died before the signal was armed
        os._exit(1)
    # The server's own output (import warnings) is nobody's: it would land in the
    # terminal or log of whatever started the pool.  Its ranks send theirs to their logs.
    _null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(_null, 1)
    os.dup2(_null, 2)
    os.close(_null)

# After the server's set-up above: its import warnings go nowhere.
import torch  # noqa: E402 (after the fork server's set-up)
import torch.distributed  # noqa: E402 (after the fork server's set-up)

from vllm_ep_kit.harness import rank, vllm_isolation, vllm_state  # noqa: E402 (as above)

VLLM_MODULES = (
    "vllm.distributed.parallel_state",
    "vllm.distributed.device_communicators.all2all",
    "vllm.model_executor.layers.fused_moe.layer",
)

for _name in VLLM_MODULES:
    # an import that fails here fails again, with its own message, in the task that needs it
    with contextlib.suppress(Exception):
        importlib.import_module(_name)

__all__ = ["VLLM_MODULES", "rank", "torch", "vllm_isolation", "vllm_state"]
