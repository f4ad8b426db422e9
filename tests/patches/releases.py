"""What each vLLM release carries, per hotfix: the expectations of the hotfix tests.

Read from each release's wheel sources with the patches' own probes
(docs/patches.md, "Probe results per release"), never from the code under
test.  A release missing here has no recorded expectation: its tests skip
with that reason rather than guess.
"""

from __future__ import annotations

import pytest

# patch name -> (releases with the bug, releases probed without it)
PROBED = {
    "mnnvl_workspace_ep_group": (
        {"0.18.0", "0.19.0", "0.19.1"},
        {"0.20.0", "0.21.0", "0.22.0", "0.32.0", "0.33.0"},
    ),
    "two_sided_dispatch_x_sf_guard": (
        {"0.18.0", "0.19.1", "0.20.0", "0.21.0"},
        {"0.22.0", "0.32.0", "0.33.0"},
    ),
    "nixl_ep_tcp_store_group": (
        {"0.18.0", "0.19.0", "0.19.1", "0.20.0", "0.21.0"},
        {"0.22.0", "0.24.0", "0.26.0", "0.28.0", "0.32.0", "0.33.0"},
    ),
    # the bare asserts are in every release probed, the pins included
    "reduce_scatterv_asserts": (
        {"0.18.0", "0.19.1", "0.20.0", "0.21.0", "0.22.0", "0.32.0", "0.33.0"},
        set(),
    ),
}


def has_bug(patch: str, release: str) -> bool:
    """Whether ``release`` carries the bug ``patch`` fixes (skips an unprobed release)."""
    buggy, clean = PROBED[patch]
    if release not in buggy | clean:
        pytest.skip(
            f"vLLM {release} was never probed for {patch}: no recorded expectation "
            "(tests/patches/releases.py)"
        )
    return release in buggy
