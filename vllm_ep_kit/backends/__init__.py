"""vLLM's all-to-all backends: one module each, one registry, one transport interface.

``check``, the MoE layer matrix, ``bench`` and ``doctor`` read the registry;
a backend is added by a module that registers a :class:`Backend` (see
docs/contributing.md, "Add a backend").
"""

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

# The built-in backends register themselves (import order = the order tools list them).
from vllm_ep_kit.backends import agrs, flashinfer_one_sided, flashinfer_two_sided  # noqa: E402,I001
from vllm_ep_kit.backends import declared  # noqa: E402,F401
from vllm_ep_kit.backends.usability import (  # noqa: E402
    BackendStatus,
    usability,
    usable_backend_names,
)

__all__ = ["Backend", "BackendStatus", "DP_SOURCES", "Dispatched", "ENTRY_POINT_GROUP",
           "EP_SOURCES", "Needs", "TO_GROUP", "TO_OWNERS", "Transport", "UnknownBackend",
           "agrs", "all_backends", "canonical", "flashinfer_one_sided", "flashinfer_two_sided",
           "get", "known_names", "register", "unregister", "usability", "usable_backend_names"]
