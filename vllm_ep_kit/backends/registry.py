"""The one registry of all-to-all backends.

Built-in backends register when ``vllm_ep_kit.backends`` is imported; a
third-party package registers its own with :func:`register` or through the
``vllm_ep_kit.backends`` entry-point group (the entry point names a
:class:`Backend` or a function returning one), loaded on first lookup.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from vllm_ep_kit.backends.spec import Backend

ENTRY_POINT_GROUP = "vllm_ep_kit.backends"

_BACKENDS: dict[str, Backend] = {}
_ALIASES: dict[str, str] = {}
_entry_points_loaded = False


class UnknownBackend(LookupError):
    """A backend name nobody registered; the message lists the known ones."""


def register(backend: Backend, replace: bool = False) -> Backend:
    """Add ``backend`` (and its aliases); a second backend of the same name is an error
    unless ``replace`` (tests that swap a backend for a while use :func:`unregister`)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"register() takes a Backend, got {type(backend).__name__}")
    taken = [
        n
        for n in (backend.name, *backend.aliases)
        if (n in _BACKENDS or n in _ALIASES) and not replace
    ]
    if taken:
        raise ValueError(f"backend name {taken[0]!r} is already registered")
    _BACKENDS[backend.name] = backend
    for alias in backend.aliases:
        _ALIASES[alias] = backend.name
    return backend


def unregister(name: str) -> None:
    backend = _BACKENDS.pop(name)
    for alias in backend.aliases:
        _ALIASES.pop(alias, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found = point.load()
        backend = found() if callable(found) and not isinstance(found, Backend) else found
        if backend.name not in _BACKENDS:
            register(backend)


def canonical(name: str) -> str:
    """The registered name for ``name`` (an alias resolves to its backend)."""
    _load_entry_points()
    if name in _BACKENDS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise UnknownBackend(f"unknown backend {name!r}; expected one of {', '.join(known_names())}")


def get(name: str) -> Backend:
    return _BACKENDS[canonical(name)]


def all_backends() -> list[Backend]:
    _load_entry_points()
    return list(_BACKENDS.values())


def known_names() -> list[str]:
    """Every name a user may give: backends and their aliases."""
    _load_entry_points()
    return [*_BACKENDS, *_ALIASES]
