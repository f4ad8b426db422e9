"""``preflight``: will this ``vllm serve`` command work on this host, before the model loads.

The command is parsed by the installed vLLM's own parser and built into its own
``ParallelConfig`` and ``VllmConfig`` with the platform standing in for the host
(``vllm_side``); the model's ``config.json`` is read from disk or the local Hugging
Face cache (``model``); then each check (``checks``) gives a verdict with its reason
and source: the layout against the node's GPUs, vLLM's own config rules, the backend's
needs (registry) against the host, the model's activation format against the
backend, CUDA graphs, the known bugs of the installed release against the kit's
hotfix plugin, and the all-to-all workspace each GPU allocates (``workspace``).

:func:`run` returns the report as data; ``cli`` prints it.  Exit status
(``exit_codes.preflight``): 0 when nothing will fail, 1 when something will.
"""

from __future__ import annotations

import os
from typing import Any

from vllm_ep_kit import backends
from vllm_ep_kit.commands.preflight import checks, vllm_side, workspace
from vllm_ep_kit.commands.preflight import host as hosts
from vllm_ep_kit.commands.preflight import model as models
from vllm_ep_kit.commands.preflight.checks import OK, RISKY, WILL_FAIL, Check, Command
from vllm_ep_kit.commands.preflight.host import Host, HostFileError
from vllm_ep_kit.commands.preflight.model import ModelFacts, ModelFolderError
from vllm_ep_kit.commands.preflight.vllm_side import ArgumentsRefused, Refusal

__all__ = [
    "OK",
    "RISKY",
    "WILL_FAIL",
    "ArgumentsRefused",
    "Check",
    "Host",
    "HostFileError",
    "ModelFolderError",
    "PreflightUsageError",
    "host_from",
    "run",
]

LEADING = ("vllm", "serve")  # a pasted "vllm serve ..." is taken as its arguments


class PreflightUsageError(ValueError):
    """The arguments, host file or model folder cannot be checked (one line; exit 2)."""


def serve_arguments(argv: list[str]) -> list[str]:
    """``argv`` without a leading ``vllm serve`` (or ``serve``) a user pasted."""
    rest = list(argv)
    for word in LEADING:
        if rest and rest[0] == word:
            rest.pop(0)
    return rest


def host_from(path: str | None) -> Host | None:
    """The host a ``--host`` file describes (None: this machine, probed when run)."""
    return hosts.load(path) if path else None


def run(argv: list[str], host: Host | None = None) -> dict[str, Any]:
    """The report for ``vllm serve <argv>`` on ``host`` (this machine when None)."""
    from vllm_ep_kit.harness.probes import library_notes_held_back

    with library_notes_held_back():
        return _run(serve_arguments(argv), host or hosts.this_machine())


def _run(argv: list[str], host: Host) -> dict[str, Any]:
    try:
        engine_args = vllm_side.parse(argv, host)
    except ArgumentsRefused as exc:
        raise PreflightUsageError(str(exc)) from None
    try:
        facts = models.read(str(engine_args.model), getattr(engine_args, "revision", None))
    except ModelFolderError as exc:
        raise PreflightUsageError(str(exc)) from None
    model = facts if isinstance(facts, ModelFacts) else None
    runs_as = _runs_as(str(engine_args.all2all_backend))
    command = Command.from_engine_args(engine_args, runs_as)
    report_checks: list[Check] = [_model_check(facts), _host_check(host)]
    built = vllm_side.build(engine_args, host, is_moe=model.is_moe if model else True)
    refused = isinstance(built, Refusal)
    report_checks.append(checks.layout(command, host))
    if isinstance(built, Refusal):
        if built.rule:
            report_checks.append(Check("vllm config", WILL_FAIL, built.message, built.source))
        else:
            report_checks.append(
                Check(
                    "vllm config",
                    RISKY,
                    f"vLLM's configs could not be built on this machine: {built.message}",
                    built.source,
                )
            )
        uses_all2all = command.expert_parallel and command.data_parallel > 1
    else:
        parallel, _ = built
        report_checks.append(
            Check("vllm config", OK, "vLLM's ParallelConfig and VllmConfig take it")
        )
        uses_all2all = bool(parallel.use_all2all)
    report_checks.append(checks.expert_parallel(command, model, uses_all2all))
    shards = checks.expert_shards(command, model)
    if shards is not None:
        report_checks.append(shards)
    fmt = checks.activation_format(command, model)
    figure = None
    if uses_all2all:
        report_checks += _backend_checks(command, host, model, fmt, refused=refused)
        tokens = vllm_side.batched_tokens(engine_args, host)
        sized, figure = workspace.check(command.backend, command.ep_size, tokens, model, fmt, host)
        report_checks.append(sized)
    report_checks += _known_bugs(command, fmt)
    return {
        "command": ["vllm", "serve", *argv],
        "host": _host_dict(host),
        "vllm": _vllm_version(),
        "model": _model_dict(facts),
        "backend": {"given": command.given_backend, "runs_as": runs_as},
        "checks": [c.as_dict() for c in report_checks],
        "workspace": vars(figure) if figure else None,
        "verdict": checks.worst(report_checks),
    }


def _accepted(name: str) -> Any:
    """The installed vLLM's row for the backend name ``name`` (None: it says nothing)."""
    from vllm_ep_kit.backends import accepted

    try:
        return next((row for row in accepted.accepted() if row.name == name), None)
    except accepted.NotReadable:
        return None


def _runs_as(name: str) -> str:
    row = _accepted(name)
    return row.runs_as if row else name


def _host_check(host: Host) -> Check:
    known = [
        f"{name} {value}"
        for name, value in (
            ("NVLink", host.nvlink),
            ("multicast", host.multicast),
            ("NCCL", host.nccl),
            ("driver", host.driver),
        )
        if value is not None
    ]
    said = f"{host.describe()} ({host.source})" + (f": {', '.join(known)}" if known else "")
    return Check("host", OK, said + "".join(f"; {note}" for note in host.notes))


def _model_check(facts: ModelFacts | str) -> Check:
    if isinstance(facts, str):
        return Check("model", RISKY, f"{facts}: its quantisation and size are not checked")
    shape = (
        f"{facts.num_experts} experts, top-{facts.top_k}, hidden {facts.hidden_size}"
        if facts.is_moe
        else "no routed experts"
    )
    quant = facts.quantization or facts.dtype or "dtype not stated"
    return Check("model", OK, f"{facts.where}: {shape}; {quant}")


def _backend_checks(
    command: Command, host: Host, model: ModelFacts | None, fmt: str | None, refused: bool
) -> list[Check]:
    try:
        backend = backends.get(command.backend)
    except backends.UnknownBackend:
        return [Check("backend", RISKY, f"{command.backend}: this kit knows nothing of its needs")]
    found = [checks.backend_needs(backend, command, host)]
    if host.source == hosts.THIS_MACHINE and host.count:
        found.append(_probed(backend))
    if command.given_backend != command.backend:
        found.append(_renamed(command))
    found.append(checks.formats(backend, command, model, fmt))
    found.append(
        checks.graphs(
            backend,
            command,
            vllm_side.graphs_kept(command.backend, command.data_parallel),
        )
    )
    if command.dbo and not refused:
        found.append(
            Check(
                "dbo",
                OK,
                f"vLLM's microbatching (--enable-dbo) takes {command.backend}",
                "vllm/config/vllm.py (VllmConfig: microbatching's backends)",
            )
        )
    return found


def _probed(backend: backends.Backend) -> Check:
    """doctor's probes of this machine for ``backend``: NVLink peer access, the MNNVL
    handle exchange, vLLM's NCCL wrapper, and the installed vLLM's own verdict on the
    installed FlashInfer (``Backend.vllm_has``)."""
    from vllm_ep_kit.backends.usability import software_gap, unmet

    gap = unmet(backend.needs) or software_gap(backend)
    if gap:
        return Check("host", WILL_FAIL, f"{backend.name}: {gap}", "vllm-ep-kit doctor")
    return Check("host", OK, f"doctor's probes find what {backend.name} needs here")


def _renamed(command: Command) -> Check:
    row = _accepted(command.given_backend)
    what = row.describe() if row else f"runs as {command.backend}"
    return Check("backend name", RISKY, f"{command.given_backend}: {what}")


def _known_bugs(command: Command, fmt: str | None) -> list[Check]:
    """Each hotfix whose bug this command reaches: present in the installed vLLM (its
    probe), and whether the kit's plugin will fix it in the server's processes."""
    from vllm_ep_kit import patches
    from vllm_ep_kit.patches.base import Serving, UnrecognisedShape

    found = []
    formats = [fmt] if fmt else ["bf16", "fp8-block"]
    for patch in patches.all_patches():
        bites = [
            patch.bites(
                Serving(
                    all2all_backend=command.backend,
                    tensor_parallel_size=command.tensor_parallel,
                    data_parallel_size=command.data_parallel,
                    expert_parallel=command.expert_parallel,
                    elastic_ep=command.elastic_ep,
                    activation_format=f,
                )
            )
            for f in formats
        ]
        how = next((b for b in bites if b), "")
        if not how:
            continue
        certain = all(bites)
        plugin = plugin_state(patch.name)
        if not plugin:  # fixed where present: the probe (it imports FlashInfer) is not needed
            found.append(
                Check(
                    f"known bug: {patch.name}",
                    OK,
                    f"where the installed vLLM has it ({how}), the kit's plugin fixes it",
                    patch.upstream,
                )
            )
            continue
        try:
            present, observed = patch.probe()
        except UnrecognisedShape as exc:
            found.append(
                Check(
                    f"known bug: {patch.name}",
                    RISKY,
                    f"the installed vLLM's code is not what the hotfix knows ({exc})",
                    patch.upstream,
                )
            )
            continue
        except Exception as exc:  # noqa: BLE001 (a probe that cannot run here: say so)
            found.append(
                Check(
                    f"known bug: {patch.name}",
                    RISKY,
                    f"not probed here ({type(exc).__name__}: {exc})",
                    patch.upstream,
                )
            )
            continue
        if not present:
            continue
        verdict = WILL_FAIL if certain else RISKY
        reason = f"{how} ({observed}); the kit's hotfix plugin would fix it but {plugin}"
        found.append(Check(f"known bug: {patch.name}", verdict, reason, patch.upstream))
    return found


def plugin_state(name: str) -> str:
    """Why the kit's plugin will not fix ``name`` in vLLM's processes ("" when it will):
    not registered with this Python's vLLM, kept out by VLLM_PLUGINS, or disabled."""
    from importlib.metadata import entry_points

    from vllm_ep_kit import patches

    points = [
        p for p in entry_points(group="vllm.general_plugins") if p.value.startswith("vllm_ep_kit")
    ]
    if not points:
        return "it is not installed (pip install vllm-ep-kit in vLLM's environment)"
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and points[0].name not in allowed.split(","):
        return f"VLLM_PLUGINS={allowed} leaves it out"
    try:
        disabled = patches.disabled_names()
    except patches.PatchConfigError as exc:
        return f"the plugin refuses its configuration, which stops vLLM's processes ({exc})"
    if name in disabled:
        return f"{patches.ENV_DISABLE}={os.environ[patches.ENV_DISABLE]} disables it"
    return ""


def _host_dict(host: Host) -> dict[str, Any]:
    data = {k: v for k, v in vars(host).items() if v is not None}
    if "packages" in data:
        data["packages"] = sorted(data["packages"])
    data["notes"] = list(host.notes)
    return data


def _model_dict(facts: ModelFacts | str) -> dict[str, Any]:
    if isinstance(facts, str):
        return {"read": False, "why": facts}
    return {"read": True, **vars(facts), "architectures": list(facts.architectures)}


def _vllm_version() -> str:
    from vllm_ep_kit.harness import probes

    return probes.package_version("vllm") or "unknown"
