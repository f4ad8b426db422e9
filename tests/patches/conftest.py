"""Where the affected vLLM releases' sources are (see scripts/fetch_vllm_sources.sh).

``VLLM_EP_KIT_AFFECTED_VLLM`` names one fetched release folder, or several
separated by ``os.pathsep``; every hotfix test that takes ``affected_vllm_path``
runs once per release, and asserts what that release carries
(``tests/patches/releases.py``).  Each such test carries the ``affected_release``
marker: its subject is the fetched sources, not the installed vLLM, so make test
runs it in the first leg only.
"""

import os
from pathlib import Path

import pytest

from vllm_ep_kit.harness import skip_or_fail

AFFECTED_ENV = "VLLM_EP_KIT_AFFECTED_VLLM"


def affected_roots() -> list[str]:
    return [root for root in os.environ.get(AFFECTED_ENV, "").split(os.pathsep) if root]


def release_id(root: str) -> str:
    version = Path(root, "VERSION")
    return version.read_text().strip() if version.exists() else Path(root).name


def pytest_generate_tests(metafunc):
    if "affected_vllm_path" in metafunc.fixturenames:
        roots = affected_roots() or [""]
        metafunc.parametrize(
            "affected_root",
            [pytest.param(r, marks=pytest.mark.affected_release) for r in roots],
            ids=[release_id(r) if r else "unset" for r in roots],
            scope="session",
        )


@pytest.fixture(scope="session")
def affected_vllm_path(affected_root) -> tuple[str, str]:
    """(sources, extra packages) of one affected release, or skip/fail with the reason."""
    if not affected_root or not Path(affected_root, "VERSION").exists():
        skip_or_fail(
            f"{AFFECTED_ENV} does not point at a fetched vLLM release "
            f"({affected_root or 'unset'}; make test fetches 0.19.1)"
        )
    return str(Path(affected_root, "src")), str(Path(affected_root, "deps"))


@pytest.fixture(scope="session")
def affected_release(affected_vllm_path, affected_root) -> str:
    """The release string of ``affected_vllm_path`` (its fetched VERSION file)."""
    return Path(affected_root, "VERSION").read_text().strip()
