"""Quiet torch's deprecation notices about how vLLM calls torch's opaque-type API.

torch 2.14 logs three warnings on stderr when vLLM 0.33 registers its opaque
types (``torch._opaque_base is deprecated``, ``register_opaque_type is
deprecated``, ``typ='value' is deprecated``).  They are about vLLM's code,
nothing a user of this kit can act on, and they would break the CLI's
promise of one line on stderr for an error.  Only those two loggers are
raised to ERROR; every other torch message stays.
"""

from __future__ import annotations

import logging

OPAQUE_TYPE_LOGGERS = ("torch._opaque_base", "torch._library.opaque_object")


def quiet_opaque_type_deprecations() -> None:
    for name in OPAQUE_TYPE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
