"""The machine a serve command is checked for: this one (probed) or one a file describes.

A host file lets an operator check a cluster's command on a laptop, and the tests check
every case of their corpus on a CPU machine.  YAML or JSON, for example::

    gpu: H200            # the model, as nvidia-smi names it (a name, for the report)
    count: 8             # GPUs per node
    nodes: 2
    memory_gib: 141      # per GPU
    capability: "9.0"    # CUDA compute capability (AMD: leave out)
    sms: 132             # streaming multiprocessors per GPU (sizes the two-sided workspace)
    vendor: nvidia       # or amd
    nvlink: true         # peer access over NVLink between the node's GPUs
    multicast: true      # NVSwitch multicast (NVLS / SHARP)
    nccl: "2.27.3"
    driver: "570.133.20"
    packages: [deep_ep]  # the EP kernel packages installed there (absent: not known)

A field left out is not known: checks that need it say "risky", never "will fail".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from vllm_ep_kit import backends

NVIDIA, AMD = "nvidia", "amd"
THIS_MACHINE = "this machine"

# the EP packages a host may list: the top packages the registry's backends need
EP_PACKAGES = tuple(
    sorted({m.split(".")[0] for b in backends.all_backends() for m in b.needs.modules})
)

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["count"],
    "properties": {
        "gpu": {"type": "string"},
        "count": {"type": "integer", "minimum": 0},
        "nodes": {"type": "integer", "minimum": 1},
        "memory_gib": {"type": "number", "exclusiveMinimum": 0},
        "free_gib": {"type": "number", "minimum": 0},
        "capability": {"type": "string", "pattern": r"^\d+\.\d+$"},
        "sms": {"type": "integer", "minimum": 1},
        "vendor": {"enum": [NVIDIA, AMD]},
        "nvlink": {"type": "boolean"},
        "multicast": {"type": "boolean"},
        "nccl": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "driver": {"type": "string"},
        "packages": {"type": "array", "items": {"enum": list(EP_PACKAGES)}},
    },
}


class HostFileError(ValueError):
    """A host file that cannot be read, or does not say what a host is (one line)."""


@dataclass(frozen=True)
class Host:
    count: int  # GPUs per node
    nodes: int = 1
    gpu: str = ""
    vendor: str = NVIDIA
    memory_gib: float | None = None
    free_gib: float | None = None
    capability: str | None = None
    sms: int | None = None  # streaming multiprocessors per GPU
    nvlink: bool | None = None
    multicast: bool | None = None
    nccl: str | None = None
    driver: str | None = None
    packages: frozenset[str] | None = None  # None: not known
    source: str = THIS_MACHINE
    notes: tuple[str, ...] = field(default=())  # what the probes could not tell

    def has_package(self, module: str) -> bool | None:
        """Whether ``module`` (its top package) is installed there; None: not known."""
        if self.packages is None:
            return None
        return module.split(".")[0] in self.packages

    def describe(self) -> str:
        gpus = f"{self.count}x {self.gpu or 'GPU'}" if self.count else "no GPU"
        return gpus + (f" per node, {self.nodes} nodes" if self.nodes > 1 else "")


def load(path: str | Path) -> Host:
    """The host ``path`` describes; raises :class:`HostFileError` with one line."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise HostFileError(f"--host {path}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise HostFileError(f"--host {path}: not YAML or JSON ({_first_line(exc)})") from exc
    return from_dict(data, str(path))


def from_dict(data: object, source: str) -> Host:
    """A :class:`Host` from a host file's mapping (validated against :data:`SCHEMA`)."""
    try:
        jsonschema.validate(data, SCHEMA)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "the file"
        raise HostFileError(f"--host {source}: {where}: {exc.message}") from exc
    assert isinstance(data, dict)  # the schema's type
    values = dict(data)
    if "packages" in values:
        values["packages"] = frozenset(values["packages"])
    if "capability" in values and values.get("vendor") == AMD:
        raise HostFileError(f"--host {source}: capability: CUDA's, not for an AMD host")
    return Host(**values, source=source)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def this_machine() -> Host:
    """This machine, as the kit's probes see it (NVML; nothing creates a CUDA context)."""
    from vllm_ep_kit.harness import probes

    gpus = probes.gpus()
    count = int(gpus.data.get("count", 0))
    names = gpus.data.get("names") or [""]
    nvlink = probes.nvlink().ok if count >= 2 else None
    versions = probes.versions()
    installed = frozenset(m for m in EP_PACKAGES if probes.module_available(m))
    notes = ("NVSwitch multicast is not probed",) if count >= 2 else ()
    gib = 1 << 30
    total, free = gpus.data.get("total_bytes") or [], gpus.data.get("free_bytes") or []
    return Host(
        count=count,
        gpu=names[0],
        memory_gib=min(total) / gib if total else None,
        free_gib=min(free) / gib if free else None,
        driver=gpus.data.get("driver"),
        nvlink=nvlink,
        nccl=versions.get("nccl"),
        packages=installed,
        source=THIS_MACHINE,
        notes=notes,
    )
