"""Plant each known bug in a copy of the repository and require its tests to fail.

A test that cannot fail proves nothing: each mutant below is one small edit of the
kind a real regression makes (the oracle ignoring weights, a check merging one rank's
verdict, a watchdog that never fires, a lint rule that never fires, ...), with the
tests that must catch it.  The script copies the working tree once, checks that the
named tests pass there unmutated, then for each mutant applies the edit, runs its
tests and reverts.  A mutant whose tests still pass *survived*: exit 1.

    python scripts/mutants.py            # every mutant (make mutants)
    python scripts/mutants.py --list
    python scripts/mutants.py --only oracle-ignores-weights,check-merges-rank-0
    python scripts/mutants.py --check   # each mutant still matches the code (in make test)

New test-critical code comes with its mutants here (docs/contributing.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IGNORED = (
    ".venv",
    ".venv-*",
    ".cache",
    "mutants",
    "device",
    ".git",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    "*.egg-info",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file to edit, relative to the repository
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest arguments that must fail under the mutant
    why: str
    by_hand: tuple[str, ...]  # keys of BY_HAND: why the tool (make mutation) does not make it


# Why a bug shape is planted by hand rather than left to mutmut (make mutation, which makes
# every edit its operators know: a literal +1, a swapped operator or comparison, a dropped
# `not`, an argument removed or None, an assignment of None, a ternary forced one way).
BY_HAND = {
    "operand": "an operand replaced or dropped (the tool swaps operators, never operands)",
    "statement": "a statement's condition forced or a statement deleted (the tool only "
    "forces ternaries)",
    "name": "one function or name called for another (the tool renames only True/False)",
    "rank-process": "its tests reach the code only in rank processes or subprocesses, where "
    "the tool cannot see which test ran it",
    "decorated": "in a decorated function (a property, a cached function), which the tool "
    "does not mutate",
    "out-of-scope": "its module is not in the tool's scope ([tool.mutmut] only_mutate) yet",
}

M = Mutant
MUTANTS = [
    # the oracle and the comparison
    M(
        "oracle-ignores-weights",
        "vllm_ep_kit/reference/moe.py",
        "coeff = tokens.topk_weights.float() * expert_scales",
        "coeff = expert_scales",
        ("tests/reference",),
        "partials and reference share the bug; hand-computed tokens do not",
        ("operand",),
    ),
    M(
        "oracle-drops-ep-ownership",
        "vllm_ep_kit/reference/moe.py",
        "coeff = coeff * (owner[safe] == ep_rank).float()",
        "coeff = coeff * (owner[safe] >= 0).float()",
        ("tests/reference",),
        "each EP rank would sum every expert",
        ("operand",),
    ),
    M(
        "check-merges-rank-0",
        "vllm_ep_kit/reference/results.py",
        "passed=not failing,",
        "passed=rows[0].passed,",
        ("tests/test_ep_check.py",),
        "ranks that disagree on a case",
        ("operand",),
    ),
    # the SP wrapper and the reverted vLLM fix
    M(
        "sp-wrapper-keeps-padding",
        "vllm_ep_kit/backends/forward.py",
        "return gathered[: num_tokens if trim == TRIM_TO_TOKENS else local_rows]",
        "return gathered",
        ("tests/kernels/moe/test_moe_layer.py", "-k", "allgather_reducescatter and ep-sp"),
        "the SP cells compare every token against the reference",
        ("operand", "rank-process"),
    ),
    M(
        "reverted-fix-control-is-a-no-op",
        "tests/drivers/mnnvl_managers.py",
        "super().__init__(ps.get_dp_group().cpu_group)",
        "super().__init__(group)",
        ("tests/distributed/test_mnnvl_alltoall.py", "-k", "fix_reverted and not gpus"),
        "the negative control must reproduce upstream's bug",
        ("name", "rank-process"),
    ),
    M(
        "recorder-skips-mapping-extent",
        "tests/drivers/flashinfer_recorder.py",
        "if alloc.mapping_ep_extent != ep_size:",
        "if False:",
        ("tests/distributed/test_mnnvl_alltoall.py", "-k", "each_workspace_fact"),
        "the Mapping extent alone wrong",
        ("statement", "rank-process"),
    ),
    M(
        "recorder-skips-rows",
        "tests/drivers/flashinfer_recorder.py",
        "if alloc.rows != ep_size:",
        "if False:",
        ("tests/distributed/test_mnnvl_alltoall.py", "-k", "each_workspace_fact"),
        "the row count alone wrong",
        ("statement", "rank-process"),
    ),
    # patches: detection, verification, lazy decision
    M(
        "patch-not-verified",
        "vllm_ep_kit/patches/base.py",
        "                still, after = self.probe()\n",
        "                still, after = False, 'not verified'\n",
        ("tests/patches/test_lazy.py",),
        "a fix that does not take must be refused",
        ("operand",),
    ),
    M(
        "reduce-scatterv-detection-blind",
        "vllm_ep_kit/patches/vllm/distributed/device_communicators/cuda_communicator.py",
        'if "[3, 8]" in message and "12" in message:',
        "if True:",
        ("tests/patches/test_cuda_communicator_asserts.py", "-k", "pinned"),
        "the bare asserts of the pinned vLLM must be detected",
        ("statement", "out-of-scope"),
    ),
    M(
        "lazy-decides-twice",
        "vllm_ep_kit/patches/lazy.py",
        "            if self.decided:\n                return\n            self.decided, ",
        "            self.decided, ",
        ("tests/patches/test_lazy.py", "-k", "decides_once"),
        "8 threads, one decision",
        ("statement",),
    ),
    M(
        "fix-wraps-the-trigger",
        "vllm_ep_kit/patches/base.py",
        "    original = getattr(original, UNDERLYING_ATTR, original)\n",
        "",
        ("tests/patches/test_lazy.py", "-k", "register"),
        "a fix wrapping the trigger recurses",
        ("statement",),
    ),
    # the harness: reporting, signals, watchdog, strict mode, torchrun
    M(
        "report-shows-first-rank-only",
        "vllm_ep_kit/harness/supervision.py",
        "    for report in failed:\n        lines.append",
        "    for report in failed[:1]:\n        lines.append",
        ("tests/harness/test_runner.py", "-k", "own_exception"),
        "two ranks, two exceptions",
        ("operand",),
    ),
    M(
        "ok-then-crash-passes",
        "vllm_ep_kit/harness/supervision.py",
        "        return self.exit_code not in (0, None) and not self.killed_at_teardown",
        "        return False",
        ("tests/harness/test_faults.py", "-k", "dies_after_reporting"),
        "a rank dying after its ok outcome",
        ("operand", "decorated"),
    ),
    M(
        "signal-deaths-unnamed",
        "vllm_ep_kit/harness/supervision.py",
        "elif self.exit_code is not None and self.exit_code < 0:",
        "elif self.exit_code is not None and self.exit_code < -100:",
        ("tests/harness/test_faults.py", "-k", "dies_after_reporting and kill"),
        "SIGKILL must be named",
        ("operand",),
    ),
    M(
        "watchdog-never-fires",
        "vllm_ep_kit/harness/supervision.py",
        "            if now - last_beat(self.workdir, item.report.rank) > limit:",
        "            if False:",
        ("tests/harness/test_runner.py", "-k", "watchdog_stops"),
        "fails in about a minute through the test's own deadline, not pytest-timeout",
        ("statement",),
    ),
    M(
        "strict-mode-skips",
        "vllm_ep_kit/harness/pytest_plugin.py",
        "    if strict_mode():",
        "    if False:",
        ("tests/harness/test_pytest_plugin.py", "-k", "cannot_run and strict"),
        "a run whose ranks cannot run must fail in strict mode, not be reported skipped",
        ("statement", "out-of-scope"),
    ),
    M(
        "torchrun-loses-the-leaver",
        "vllm_ep_kit/harness/torchrun.py",
        "        missing = sorted(set(range(world_size))",
        "        missing = [] and sorted(set(range(world_size))",
        ("tests/harness/test_torchrun.py", "-k", "faults and 2"),
        "os._exit(0) under torchrun",
        ("operand", "rank-process"),
    ),
    # lint-ci
    M(
        "gated-branch-never-fires",
        "vllm_ep_kit/lint/rules/gated_branches.py",
        "            if any(name in env and opens(env[name], required) for env in envs):",
        "            if True:",
        ("tests/buildkite",),
        "the gemma-3 array nobody enabled",
        ("statement",),
    ),
    M(
        "gated-branch-ignores-callers",
        "vllm_ep_kit/lint/rules/gated_branches.py",
        "            for callee, env in calls(ctx.root, script):",
        "            for callee, env in []:",
        ("tests/buildkite/test_conventions.py", "-k", "calls_it"),
        'config arrays handed over with env "${cfg_parts[@]}" bash "$SCRIPT"',
        ("operand",),
    ),
    M(
        "gated-branch-counts-knobs",
        "vllm_ep_kit/lint/rules/gated_branches.py",
        "        if used & arrays or RUNS_TESTS.search(line):",
        "        if used or RUNS_TESTS.search(line):",
        ("tests/buildkite/test_conventions.py", "-k", "branch"),
        "an extra-args knob is not a coverage gate",
        ("operand",),
    ),
    M(
        "flag-spelling-never-fires",
        "vllm_ep_kit/lint/rules/flag_spelling.py",
        "        if len(styles) < 2:",
        "        if True:",
        ("tests/buildkite",),
        "True vs 1",
        ("statement",),
    ),
    M(
        "lint-default-working-dir",
        "vllm_ep_kit/lint/conventions.py",
        "        return VLLM_DEFAULT_WORKING_DIR",
        "        return WORKSPACE",
        ("tests/buildkite/test_conventions.py",),
        "vLLM's steps run in /vllm-workspace/tests",
        ("name", "out-of-scope"),
    ),
    M(
        "lint-prefix-matching",
        "vllm_ep_kit/lint/conventions.py",
        '        return bool(entry) and (path == entry or path.startswith(entry + "/"))',
        "        return bool(entry) and path.startswith(entry)",
        ("tests/buildkite/test_conventions.py",),
        "an entry without .py matches nothing",
        ("operand", "out-of-scope"),
    ),
    M(
        "lint-judges-optional-steps",
        "vllm_ep_kit/lint/pipeline.py",
        "        if not step.optional:\n            for index, entry",
        "        if True:\n            for index, entry",
        ("tests/buildkite/test_conventions.py",),
        "optional steps' entries are never consulted",
        ("statement", "out-of-scope"),
    ),
    M(
        "gpu-marks-never-judged",
        "vllm_ep_kit/lint/rules/gpu_count.py",
        "        findings += _unmet_marks(ctx, step)",
        "        findings += []",
        ("tests/buildkite/test_conventions.py", "-k", "marked"),
        "4-GPU tests that skip in every build",
        ("statement",),
    ),
    M(
        "listed-not-run-ignores-optional",
        "vllm_ep_kit/lint/rules/listed_not_run.py",
        "        if any(not other.optional for other in runners):",
        "        if runners:",
        ("tests/buildkite/test_conventions.py",),
        "the MNNVL suite run only by an optional step",
        ("operand",),
    ),
    # bench's check, the pool's isolation
    M(
        "bench-all-gather-counted-as-routed",
        "vllm_ep_kit/commands/bench/drivers.py",
        "copies = torch.full((tokens.x.shape[0],), world) if group else inputs.copies",
        "copies = inputs.copies",
        ("tests/bench/test_bench.py", "-k", "end_to_end_on_cpu"),
        "an all-gather's round trip returns every token once per rank",
        ("operand", "rank-process"),
    ),
    M(
        "pool-ignores-replaced-vllm-code",
        "vllm_ep_kit/harness/vllm_isolation.py",
        "        elif new is not old:",
        "        elif False:",
        ("tests/harness/test_pool.py", "-k", "vllm_method_replaced"),
        "a mutant left in a vLLM class would reach later pooled tasks",
        ("statement", "rank-process"),
    ),
    M(
        "software-verdict-ignored",
        "vllm_ep_kit/backends/usability.py",
        "    if has:\n",
        "    if True:\n",
        ("tests/backends/test_usability.py",),
        "doctor must name a FlashInfer that lacks a backend's kernels",
        ("statement", "out-of-scope"),
    ),
    M(
        "managers-any-backend",
        "vllm_ep_kit/backends/mnnvl.py",
        "issubclass(cls, ManagerTransport) else None",
        "True else None",
        ("tests/backends/test_registry.py", "-k", "managers_are_named"),
        "only vLLM's manager-driven backends have a manager to build",
        ("operand", "out-of-scope"),
    ),
    M(
        "growth-forgets-earlier-layers",
        "tests/drivers/flashinfer_recorder.py",
        "for earlier in steps[: index + 1]:",
        "for earlier in steps[index: index + 1]:",
        ("tests/distributed/test_mnnvl_alltoall.py", "-k", "shrunk"),
        "a workspace must hold every layer so far, not only the newest",
        ("operand", "rank-process"),
    ),
    M(
        "growth-no-rebuild",
        "tests/drivers/flashinfer_recorder.py",
        "        newest = made[-1]\n",
        "        newest = made[0]\n",
        ("tests/distributed/test_mnnvl_alltoall.py", "-k", "union_of_layers"),
        "the newest workspace is the one judged (a first one kept would hold too little)",
        ("operand", "rank-process"),
    ),
    # vLLM's one-sided prepare/finalize over the emulated kernels
    M(
        "pf-no-late-reduce",
        "tests/drivers/prepare_finalize_check.py",
        "    return _late_reduce_rule()(runner, states, None, output_is_reduced)\n",
        "    return states\n",
        ("tests/distributed/test_mnnvl_alltoall.py", "-k", "double_reduce"),
        "the runner's own late all-reduce rule must run, or a double reduce goes unseen",
        ("operand", "rank-process"),
    ),
    M(
        "emulator-combine-own-rows",
        "tests/drivers/flashinfer_emulator.py",
        "                for r in range(self.ep_size):\n                    total[sent[r]]",
        "                for r in [self.ep_rank]:\n                    total[sent[r]]",
        (
            "tests/distributed/test_mnnvl_alltoall.py",
            "-k",
            "prepare_finalize_vs_oracle and one_sided",
        ),
        "combine must sum every owner rank's rows, not only this rank's",
        ("operand", "rank-process"),
    ),
    M(
        "emulator-no-sanitize",
        "tests/drivers/flashinfer_emulator.py",
        "                    if index == expert_id_payload_index and invalid_token_expert_id "
        "is not None:\n",
        "                    if False:\n",
        (
            "tests/distributed/test_mnnvl_alltoall.py",
            "-k",
            "prepare_finalize_vs_oracle and one_sided",
        ),
        "rows past a source's count must carry the invalid id, not a stale row's experts",
        ("statement", "rank-process"),
    ),
    M(
        "emulator-two-sided-own-rows",
        "tests/drivers/flashinfer_emulator.py",
        "                for r in range(ep_size):\n                    total[route.sent[r]]",
        "                for r in [ep_rank]:\n                    total[route.sent[r]]",
        ("tests/distributed/test_mnnvl_alltoall.py", "-k", "prepare_finalize_vs_oracle"),
        "the two-sided combine must sum every owner rank's rows",
        ("operand", "rank-process"),
    ),
    M(
        "emulator-two-sided-no-memset",
        "tests/drivers/flashinfer_emulator.py",
        "got_ids = torch.full((rows, top_k), int(slot_count), dtype=expert_ids.dtype)",
        "got_ids = torch.zeros((rows, top_k), dtype=expert_ids.dtype)",
        ("tests/distributed/test_mnnvl_alltoall.py", "-k", "prepare_finalize_vs_oracle"),
        "rows past the received tokens must carry the invalid id (slot_count)",
        ("name", "rank-process"),
    ),
    M(
        "emulator-two-sided-global-ids",
        "tests/drivers/flashinfer_emulator.py",
        "torch.where(owners[rows] == r, expert_ids.cpu()[rows], int(slot_count))",
        "torch.where(owners[rows] >= 0, expert_ids.cpu()[rows], int(slot_count))",
        ("tests/distributed/test_mnnvl_alltoall.py", "-k", "prepare_finalize_vs_oracle"),
        "a two-sided receiver gets slot_count for the experts it lacks (FlashInfer's sender)",
        ("operand", "rank-process"),
    ),
    # the payload formats the kernels move (reference.formats)
    M(
        "nvfp4-nibble-order",
        "vllm_ep_kit/reference/formats.py",
        "    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)\n",
        "    packed = codes[..., 1::2] | (codes[..., 0::2] << 4)\n",
        ("tests/reference/test_formats.py",),
        "NVFP4 keeps the even column in the low nibble, and the dequantiser must agree",
        ("operand",),
    ),
    M(
        "mxfp8-exponent-floor",
        "vllm_ep_kit/reference/formats.py",
        "    exponent = torch.ceil(torch.log2(",
        "    exponent = torch.floor(torch.log2(",
        ("tests/reference/test_formats.py",),
        "an MXFP8 block scale must bring the block's amax within e4m3's 448",
        ("name",),
    ),
    # the rank pool's opt-out, its environment, and the suite's vllm-marker rule
    M(
        "fresh-ranks-ignored",
        "vllm_ep_kit/harness/pool.py",
        "previous_env = os.environ.pop(POOL_ENV, None)",
        "previous_env = os.environ.get(POOL_ENV)",
        (
            "tests/harness/test_pool.py",
            "-k",
            "fresh_ranks",
            "tests/harness/test_pytest_plugin.py",
            "-k",
            "fresh_ranks",
        ),
        "a test marked fresh_ranks would run in the pool it opted out of",
        ("name", "out-of-scope"),
    ),
    M(
        "pool-task-keeps-the-start-environment",
        "vllm_ep_kit/harness/pool.py",
        "os.environ.update(env_set)",
        "os.environ.update({})",
        ("tests/harness/test_pool.py", "-k", "parents_environment"),
        "a pooled task would not see what the test set after the pool started",
        ("operand", "rank-process"),
    ),
    M(
        "forked-rank-keeps-the-servers-environment",
        "vllm_ep_kit/harness/rank.py",
        "    if spec.inherit_env is not None:\n",
        "    if False:\n",
        ("tests/harness/test_pool.py", "-k", "fork_from"),
        "a rank forked by the fork server would start with the server's environment",
        ("statement", "rank-process"),
    ),
    M(
        "forked-rank-outlives-its-parent",
        "vllm_ep_kit/harness/rank.py",
        "                parent is not None\n                and parent.is_running()",
        "                parent is not None\n                or parent.is_running()",
        ("tests/harness/test_faults.py", "-k", "killed_parent and pool"),
        "a pool's ranks would stay alive after the test process was killed",
        ("operand", "rank-process"),
    ),
    M(
        "vllm-marker-rule-direct-imports-only",
        "tests/vllm_marker.py",
        "for used in sorted(_names(node) & reach.keys()):",
        "for used in ():",
        ("tests/test_vllm_marker.py",),
        "rank functions and helpers import vLLM for the test that names them",
        ("operand", "out-of-scope"),
    ),
    # the CLI
    M(
        "bench-report-unchecked",
        "vllm_ep_kit/commands/bench/report.py",
        "    if error is not None:\n",
        "    if False:\n",
        ("tests/test_cli_fuzz.py", "-k", "from_json"),
        "a report with wrong field types must be one line, not a traceback",
        ("statement",),
    ),
    # the kinds of bug a reader who had not seen this list planted and some of which got
    # through: each must fail a test of make test
    M(
        "case-verdict-ignores-dispatch",
        "vllm_ep_kit/reference/results.py",
        "        passed=within and not dispatch,\n",
        "        passed=within,\n",
        ("tests/test_results.py",),
        "a dispatch that delivered the wrong rows must fail its case however close the output",
        ("operand",),
    ),
    M(
        "reduce-scatterv-rows-along-dim-0",
        "vllm_ep_kit/patches/vllm/distributed/device_communicators/cuda_communicator.py",
        "    rows = input_.movedim(0, dim).shape[0]",
        "    rows = input_.shape[0]",
        ("tests/patches/test_cuda_communicator_asserts.py", "-k", "rows_are_counted"),
        "vLLM 0.33 scatters along the last dimension: dimension 0 is the wrong count",
        ("operand", "out-of-scope"),
    ),
    M(
        "ep-group-fix-wraps-one-manager",
        "vllm_ep_kit/patches/vllm/distributed/device_communicators/all2all.py",
        "        for cls_name in MANAGER_CLASSES:\n            wrap(",
        "        for cls_name in MANAGER_CLASSES[:1]:\n            wrap(",
        ("tests/patches/test_all2all_ep_group.py", "-k", "detected_and_fixed"),
        "the fix names both managers; each must be checked after it applied",
        ("operand", "rank-process", "out-of-scope"),
    ),
    M(
        "unique-labels-one-field",
        "vllm_ep_kit/lint/rules/unique_labels.py",
        'for field in ("label", "key"):',
        'for field in ("label",):',
        ("tests/buildkite/rules/test_unique_labels.py",),
        "the rule names two fields; a key used twice must be found too",
        ("operand",),
    ),
    M(
        "dequantize-keeps-padded-scales",
        "vllm_ep_kit/reference/formats.py",
        "scale.float()[..., : groups.shape[-2]]",
        "scale.float()",
        ("tests/reference/test_formats.py",),
        "scale rows padded to the kernels' alignment carry columns past the last block",
        ("operand",),
    ),
]


def copy_tree(into: Path) -> Path:
    target = into / "repo"
    shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)
    return target


def run_tests(root: Path, tests: tuple[str, ...], timeout_s: float) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-x",
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                "addopts=",
                # as make test runs them: ranks shared where a test's outcome is the same
                # (tests that need fresh processes say so and get them)
                "--ep-pool",
                *tests,
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        return out.returncode, time.monotonic() - start, out.stdout[-3000:] + out.stderr[-2000:]
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"")[-3000:]
        return (
            -1,
            time.monotonic() - start,
            text.decode(errors="replace") if isinstance(text, bytes) else str(text),
        )


def edit(root: Path, mutant: Mutant, apply: bool) -> None:
    path = root / mutant.path
    text = path.read_text()
    old, new = (mutant.old, mutant.new) if apply else (mutant.new, mutant.old)
    if not apply:
        path.write_text(_saved[mutant.name])
        return
    count = text.count(old)
    if count != 1:
        raise SystemExit(
            f"mutants: {mutant.name}: expected the text once in {mutant.path}, "
            f"found it {count} times (the code moved: update the mutant)"
        )
    _saved[mutant.name] = text
    path.write_text(text.replace(old, new))


_saved: dict[str, str] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated mutant names")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check that each mutant's text occurs once (seconds)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds per test run (a timeout counts as an error)",
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip checking that the tests pass unmutated"
    )
    args = parser.parse_args()
    chosen = MUTANTS
    if args.only:
        names = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = sorted(names - {m.name for m in MUTANTS})
        if unknown:
            parser.error(f"--only: unknown mutant(s) {', '.join(unknown)}")
        chosen = [m for m in MUTANTS if m.name in names]
    if args.check:
        moved = [
            f"{m.name} ({m.path}: {(REPO / m.path).read_text().count(m.old)} times)"
            for m in chosen
            if (REPO / m.path).read_text().count(m.old) != 1
        ]
        for line in moved:
            print(f"mutants: text not found once: {line}", file=sys.stderr)
        return 1 if moved else 0
    if args.list:
        for m in chosen:
            print(
                f"{m.name}: {m.path} -- {m.why} [{' '.join(m.tests)}] "
                f"(by hand: {', '.join(m.by_hand)})"
            )
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vllm-ep-kit-mutants-") as folder:
        root = copy_tree(Path(folder))
        probe = subprocess.run(
            [sys.executable, "-c", "import vllm_ep_kit; print(vllm_ep_kit.__file__)"],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
        )
        if not probe.stdout.strip().startswith(str(root)):
            print(
                f"mutants: the copy's package is not the one imported ({probe.stdout.strip()})",
                file=sys.stderr,
            )
            return 2
        if not args.no_baseline:
            for tests in dict.fromkeys(m.tests for m in chosen):
                rc, seconds, text = run_tests(root, tests, args.timeout)
                print(f"baseline {' '.join(tests)}: rc {rc} ({seconds:.0f} s)", flush=True)
                if rc != 0:
                    print(text, file=sys.stderr)
                    print(
                        "mutants: the tests fail without a mutant: fix them first", file=sys.stderr
                    )
                    return 2
        survived, errors = [], []
        for index, mutant in enumerate(chosen, start=1):
            edit(root, mutant, apply=True)
            try:
                rc, seconds, text = run_tests(root, mutant.tests, args.timeout)
            finally:
                edit(root, mutant, apply=False)
            verdict = {0: "SURVIVED", 1: "killed"}.get(rc, f"error (pytest rc {rc})")
            print(f"[{index}/{len(chosen)}] {mutant.name}: {verdict} ({seconds:.0f} s)", flush=True)
            if rc == 0:
                survived.append(mutant.name)
            elif rc != 1:
                errors.append(mutant.name)
                print(text[-1500:], file=sys.stderr)
    total = time.monotonic() - started
    print(
        f"mutants: {len(chosen) - len(survived) - len(errors)} killed, {len(survived)} "
        f"survived, {len(errors)} errors, {total:.0f} s"
    )
    if survived:
        print(f"survivors (tests that cannot fail): {', '.join(survived)}")
    return 1 if survived or errors else 0


if __name__ == "__main__":
    sys.exit(main())
