"""vLLM's all-to-all backends: one module each, one registry, one transport interface.

``check``, the MoE layer matrix, ``bench`` and ``doctor`` read the registry.
Every module of this package other than the shared ones (``SHARED``) is a
backend and is imported here, in name order, where it registers its
:class:`Backend`: adding one is adding its module (docs/contributing.md,
"Add a backend").  Other packages register theirs with :func:`register` or
an entry point.
"""

import importlib
import pkgutil

from vllm_ep_kit.backends.registry import (
    ENTRY_POINT_GROUP,
    UnknownBackend,
    all_backends,
    canonical,
    get,
    known_names,
    register,
    unregister,
)
from vllm_ep_kit.backends.spec import DP_SOURCES, EP_SOURCES, TO_GROUP, TO_OWNERS, Backend, Needs
from vllm_ep_kit.backends.transport import Dispatched, Transport
from vllm_ep_kit.backends.usability import (
    BackendStatus,
    usability,
    usable_backend_names,
)

SHARED = frozenset(
    {
        "accepted",
        "exchange",
        "forward",
        "mnnvl",
        "registry",
        "spec",
        "transport",
        "usability",
        "vllm_experts",
    }
)
BUILT_IN = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in SHARED))
for _name in BUILT_IN:  # each registers its backend (name order = the order tools list them)
    importlib.import_module(f"{__name__}.{_name}")

__all__ = [
    "BUILT_IN",
    "DP_SOURCES",
    "ENTRY_POINT_GROUP",
    "EP_SOURCES",
    "TO_GROUP",
    "TO_OWNERS",
    "Backend",
    "BackendStatus",
    "Dispatched",
    "Needs",
    "Transport",
    "UnknownBackend",
    "all_backends",
    "canonical",
    "get",
    "known_names",
    "register",
    "unregister",
    "usability",
    "usable_backend_names",
]
