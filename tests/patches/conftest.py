"""Where the affected vLLM release's sources are (see scripts/fetch_vllm_sources.sh)."""

import os
from pathlib import Path

import pytest

from vllm_ep_kit.testing import skip_or_fail

AFFECTED_ENV = "VLLM_EP_KIT_AFFECTED_VLLM"


@pytest.fixture(scope="session")
def affected_vllm_path() -> tuple[str, str]:
    """(sources, extra packages) of the affected release, or skip/fail with the reason."""
    root = os.environ.get(AFFECTED_ENV)
    if not root or not Path(root, "VERSION").exists():
        skip_or_fail(f"{AFFECTED_ENV} does not point at a fetched vLLM release "
                     "(make test fetches 0.19.1)")
    return str(Path(root, "src")), str(Path(root, "deps"))
