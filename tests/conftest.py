"""Load the plugin from the source tree when the package is not installed
(e.g. a GPU host that runs the suite from a carried checkout)."""

from importlib.metadata import entry_points

PLUGIN = "vllm_ep_kit.testing.pytest_plugin"
_installed = any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))

pytest_plugins = ["pytester"] + ([] if _installed else [PLUGIN])
