"""Command line: the one place that prints.  Everything below returns data."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from vllm_ep_kit.commands import exit_codes

OK = "[green]yes[/green]"
NO = "[red]no[/red]"

# Width for output that is not a terminal (a CI log, a pipe, a file): wide enough that
# no table cell is cut or wrapped; tables still take only the width their content needs.
PIPE_WIDTH = 1000
DOCTOR_PIPE_WIDTH = 100  # a CI log's width: doctor's long reasons fold, names stay whole


def _console(
    width: int | None,
    *,
    stderr: bool = False,
    quiet: bool = False,
    pipe_width: int = PIPE_WIDTH,
) -> Console:
    """A console for ``--width``, or the terminal's width, or ``pipe_width`` in a pipe.

    rich falls back to 80 columns when its stream is not a terminal, which cut
    backend names and layouts ("allga…") in CI logs.
    """
    stream = sys.stderr if stderr else sys.stdout
    if width is None and not stream.isatty():
        width = pipe_width
    return Console(width=width, stderr=stderr, quiet=quiet)


def _print_doctor(report: dict, console: Console) -> None:
    versions = Table(title="Versions", show_header=True)
    versions.add_column("component")
    versions.add_column("version")
    for name, value in report["versions"].items():
        versions.add_row(name, value or "[dim]none[/dim]")
    console.print(versions)

    caps = Table(title="Capabilities", show_header=True)
    caps.add_column("capability", no_wrap=True)
    caps.add_column("ok", no_wrap=True)
    caps.add_column("detail", overflow="fold")
    for cap in report["capabilities"]:
        caps.add_row(cap["name"], OK if cap["ok"] else NO, cap["detail"])
    console.print(caps)

    table = Table(title="All-to-all backends", show_header=True)
    table.add_column("backend", no_wrap=True)
    table.add_column("usable here", no_wrap=True)
    table.add_column("software", no_wrap=True)
    table.add_column("why / note", overflow="fold")
    for row in report["backends"]:
        why = row["reason"] if not row["usable"] else (row["note"] or "ok")
        if row.get("formats"):
            why += f"; dispatches {', '.join(row['formats'])}"
        software = {"ok": OK, "not checked": "-"}.get(row.get("software", "ok"), NO)
        table.add_row(row["name"], OK if row["usable"] else NO, software, why)
    console.print(table)

    accepted = report.get("accepted")
    if accepted is not None:
        names = Table(
            title=f"--all2all-backend names the installed vLLM accepts ({len(accepted['names'])})",
            show_header=True,
        )
        names.add_column("name", no_wrap=True)
        names.add_column("SP", no_wrap=True)
        names.add_column("DBO", no_wrap=True)
        names.add_column("graphs", no_wrap=True)
        names.add_column("how vLLM treats it", overflow="fold")
        for row in accepted["names"]:
            how = row["note"] or "a backend of its own"
            if not row["kit_knows"]:
                how += " (unknown to this kit)"
            names.add_row(
                row["name"],
                OK if row["sequence_parallel"] else "-",
                _yes_no(row.get("dbo")),
                _yes_no(row.get("cuda_graphs")),
                how,
            )
        if accepted["readable"]:
            names.caption = (
                "SP: sequence-parallel MoE; DBO: --enable-dbo takes it; graphs: CUDA graphs "
                "stay on with DP 2 (read from the installed vLLM's configs)"
            )
        console.print(names if accepted["readable"] else f"vLLM's names: {accepted['why']}")

    fixes = Table(title="Hotfixes (vllm.general_plugins)", show_header=True)
    fixes.add_column("patch", no_wrap=True)
    fixes.add_column("status", no_wrap=True)
    fixes.add_column("why", overflow="fold")
    fixes.add_column("upstream", no_wrap=True)
    colour = {
        "applied": "green",
        "not needed": "dim",
        "needed": "yellow",
        "refused": "red",
        "error": "red",
    }
    for row in report["patches"]:
        status = row["status"]
        fixes.add_row(
            row["name"],
            f"[{colour.get(status, 'white')}]{status}[/]",
            row["reason"],
            row["upstream"],
        )
    console.print(fixes)


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else OK if value else NO


def cmd_doctor(args: argparse.Namespace) -> int:
    from vllm_ep_kit.commands import doctor

    report = doctor.collect()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_doctor(report, _console(args.width, pipe_width=DOCTOR_PIPE_WIDTH))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: argument --x: why`` and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _get_values(self, action, arg_strings):
        # Python 3.11's argparse drops a value of "--" (``--width=--``) and hands the
        # option an empty list, bypassing its type; the type must judge it.
        if arg_strings == ["--"] and action.nargs is None and action.option_strings:
            return self._get_value(action, "--")
        return super()._get_values(action, arg_strings)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def _positive_seconds(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``, else an error saying what was expected."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _str_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


def cmd_check(args: argparse.Namespace) -> int:
    from vllm_ep_kit import backends
    from vllm_ep_kit.commands import check as ep_check
    from vllm_ep_kit.commands import jobs
    from vllm_ep_kit.harness import probes, torchrun

    console = _console(args.width, stderr=args.json, quiet=not torchrun.is_lead())
    try:
        world_sizes, gpu_count = jobs.world_for_job(
            "--world-sizes", args.world_sizes, [2, 4], probes.gpu_count()
        )
    except jobs.JobArgumentError as exc:
        print(f"vllm-ep-kit check: error: {exc}", file=sys.stderr)
        return 2
    too_many = jobs.cpu_rank_limit("--world-sizes", world_sizes, gpu_count)
    if too_many:
        print(f"vllm-ep-kit check: error: {too_many}", file=sys.stderr)
        return 2
    try:
        # the arguments first: usability below imports vLLM, seconds before any answer
        ep_check.validate_arguments(
            world_sizes, args.tp, args.backends, args.dtypes, gpu_count=gpu_count
        )
        plan = ep_check.make_plan(
            world_sizes,
            args.tp,
            args.backends,
            args.dtypes,
            gpu_count=gpu_count,
            usable=backends.usable_backend_names(),
            unusable={row.name: row.reason for row in backends.usability() if not row.usable},
        )
    except ep_check.CheckArgumentError as exc:
        print(f"vllm-ep-kit check: error: {exc}", file=sys.stderr)
        return 2
    if not plan.backends:
        print(
            "vllm-ep-kit check: error: no checkable all-to-all backend is usable here "
            "(see `vllm-ep-kit doctor`)",
            file=sys.stderr,
        )
        return 2
    for layout, why in plan.skipped:
        console.print(f"[yellow]not run[/yellow] {layout}: {why}")
    total = sum(len(run.cases) for run in plan.runs)
    done = 0

    def on_start(backend, layout, n_cases):
        console.print(
            f"starting {backend} on {layout.world_size} ranks ({layout.describe()}, "
            f"{plan.device_backend}): {n_cases} cases"
        )

    def on_result(result):
        nonlocal done
        done += 1
        mark = "[green]pass[/green]" if result.passed else "[red]FAIL[/red]"
        console.print(
            f"[{done}/{total}] {result.backend} {result.layout} {result.dtype} "
            f"tokens={result.tokens}: {mark} (max error {result.max_error:.3g}, "
            f"{result.seconds * 1e3:.1f} ms)"
            + (f" {result.note}" if not result.passed and result.note else "")
        )

    def on_error(run, message):
        console.print(f"[red]{run.backend} on {run.layout.describe()} failed:[/red]")
        console.print(message, markup=False, highlight=False)

    results = ep_check.run_check(
        plan, on_result=on_result, on_start=on_start, on_error=on_error, timeout_s=args.timeout
    )
    if args.json and torchrun.is_lead():
        json.dump(
            {
                "results": [r.as_dict() for r in results],
                "not_run": [{"layout": lay, "reason": why} for lay, why in plan.skipped],
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    elif not args.json:
        table = Table(title="EP dispatch + combine vs reference")
        for col in (
            "backend",
            "layout",
            "dtype",
            "tokens",
            "dispatch exact",
            "max error",
            "result",
            "time (ms)",
        ):
            table.add_column(col)
        table.add_column("why it failed", overflow="fold")
        for r in results:
            table.add_row(
                r.backend,
                r.layout,
                r.dtype,
                r.tokens,
                "n/a" if r.dispatch_exact is None else OK if r.dispatch_exact else NO,
                f"{r.max_error:.3g}",
                "[green]pass[/green]" if r.passed else "[red]FAIL[/red]",
                f"{r.seconds * 1e3:.1f}",
                "" if r.passed else r.note,
            )
        console.print(table)
    failed = sum(not r.passed for r in results)
    console.print(f"{len(results) - failed} passed, {failed} failed")
    return exit_codes.check(results)


def _bench_table(report: dict, console: Console) -> None:
    table = Table(
        title=f"Dispatch + combine, {report['meta'].get('world_size', '?')} ranks "
        f"({report['meta'].get('timer', '')})"
    )
    for col in (
        "backend",
        "hidden",
        "dtype",
        "tokens/rank",
        "dispatch ms",
        "combine ms",
        "total ms",
        "GB/s",
        "vs all_to_all",
        "vs link",
        "round trip",
    ):
        table.add_column(col, justify="right" if col not in ("backend", "dtype") else "left")

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    for r in report["results"]:
        check = {"ok": "[green]ok[/green]", "FAILED": "[red]FAILED[/red]"}.get(
            r["check"], "[dim]not checked[/dim]"
        )
        table.add_row(
            r["backend"],
            str(r["hidden"]),
            r["dtype"],
            str(r["tokens"]),
            num(r["dispatch_ms"], ".3f"),
            num(r["combine_ms"], ".3f"),
            num(r["total_ms"], ".3f"),
            num(r["gbps"], ".3g"),
            num(r["vs_baseline"], ".2f") + ("x" if r["vs_baseline"] else ""),
            num(r["vs_link"] and 100 * r["vs_link"], ".0f") + ("%" if r["vs_link"] else ""),
            check,
        )
    console.print(table)
    for link in report.get("links", []):
        console.print(
            f"link limit ({link['backend']} run): "
            + (
                f"{link['gbps']:.1f} GB/s peer copy (slowest GPU)"
                if link.get("gbps")
                else f"not measured: {link.get('why', '')}"
            )
        )


def _bench_plot(report: dict, path, console: Console) -> None:
    from vllm_ep_kit.commands.bench.plot import plot_report

    try:
        console.print(f"plot: {plot_report(report, path)}")
    except ImportError:
        console.print(
            "[yellow]plot not drawn:[/yellow] matplotlib is not installed here; "
            f"elsewhere run `vllm-ep-kit bench --from-json {path.with_suffix('.json')}`"
        )
    except ValueError as exc:
        console.print(f"[yellow]plot not drawn:[/yellow] {exc}")


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vllm_ep_kit.commands.bench import job as bench_job
    from vllm_ep_kit.commands.bench.plan import BASELINE, BenchArgumentError
    from vllm_ep_kit.harness import torchrun

    lead = torchrun.is_lead()
    console = _console(args.width, stderr=args.json, quiet=not lead)
    try:
        if args.from_json:
            source = Path(args.from_json)
            saved = bench_job.load_report(source)
            _bench_table(saved, console)
            _bench_plot(saved, source.with_suffix(".png"), console)
            return 0
        request = bench_job.BenchRequest(
            **{name: getattr(args, name) for name in bench_job.BenchRequest.__dataclass_fields__}
        )
        job = bench_job.plan_job(request, lead=lead)
    except BenchArgumentError as exc:
        print(f"vllm-ep-kit bench: error: {exc}", file=sys.stderr)
        return 2
    for what, why in job.plan.skipped:
        console.print(f"[yellow]not run[/yellow] {what}: {why}")
    if not job.plan.runs:
        print(
            "vllm-ep-kit bench: error: no benchmarkable all-to-all backend is usable here "
            "(see `vllm-ep-kit doctor`)",
            file=sys.stderr,
        )
        return 2
    console.print(
        f"bench: {job.world} ranks, {job.timer}, {job.settings.warmup} warm-up + "
        f"{job.settings.repeats} timed repeats per point; writing {job.out}"
    )

    def on_start(run):
        console.print(
            f"starting {run.backend} on {job.world} ranks ({run.layout.describe()}, "
            f"{job.plan.device_backend}): {len(run.points)} points, each beside {BASELINE}"
        )

    def on_point(run, row, done):
        console.print(
            f"[{done}/{len(run.points)}] {run.backend} hidden={row['hidden']} "
            f"{row['dtype']} tokens={row['tokens']}: {row['total_ms']:.3f} ms "
            f"(baseline {row['baseline_ms']:.3f} ms), round trip {row['check']}"
        )

    def on_error(run, message):
        console.print(f"[red]{run.backend} failed:[/red]")
        console.print(message, markup=False, highlight=False)

    report = bench_job.run_job(
        job,
        " ".join(["vllm-ep-kit", *sys.argv[1:]]),
        on_start=on_start,
        on_point=on_point,
        on_error=on_error,
        timeout_s=args.timeout,
        write=lead,
    )
    if lead:
        if args.json:
            json.dump(report, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            _bench_table(report, console)
        _bench_plot(report, job.out / "bench.png", console)
        console.print(f"results: {job.out / 'bench.json'}")
    for failure in report["failures"]:
        console.print(
            f"[red]{failure['backend']}: failed after {failure['points_measured']}/"
            f"{failure['points_planned']} points: {failure['error']}[/red]"
        )
    bad = exit_codes.failed_points(report)
    if bad:
        console.print(f"[red]{len(bad)} point(s) failed the round-trip check[/red]")
    return exit_codes.bench(report)


def _finding_line(finding, form: str) -> str:
    if form == "github":  # a workflow annotation: shown on the line of the PR's diff
        text = finding.text().replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return f"::error file={finding.path},line={finding.line},title={finding.rule}::{text}"
    return finding.format()


def _explain(root, path: str, form: str, generator) -> int:
    """``lint-ci --explain PATH``: which steps run it or are selected by a change to it."""
    from vllm_ep_kit.lint.lint import explain

    rows = explain(root, path, generator)
    if form == "json":
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        how = " and ".join(
            w
            for w, on in (
                ("runs it", row["runs_it"]),
                ("is selected by a change to it", row["selected_by_it"]),
            )
            if on
        )
        print(
            f"{row['where']}: {row['step']!r} {how}; {row['device']}, {row['gpus']} GPU(s) "
            f"asked, its job sees {row['sees']}"
            + (", optional (runs only when asked for)" if row["optional"] else "")
        )
    automatic = [r for r in rows if r["runs_it"] and not r["optional"]]
    optional = sum(r["runs_it"] for r in rows) - len(automatic)
    if automatic:
        verdict = ""
    elif optional:
        verdict = f" -- only {generator.optional_runs()} run it"
    else:
        verdict = " -- no build runs it"
    print(
        f"{path}: run by {len(automatic)} non-optional step(s), {optional} optional{verdict}",
        file=sys.stderr,
    )
    return 0


def _lint_generator(root, as_of: str | None, rev: str | None):
    """The generator to read the tree as (ValueError: one line on the flag at fault)."""
    from vllm_ep_kit.lint import conventions
    from vllm_ep_kit.lint.lint import tree_generator

    if rev is not None:
        date = conventions.revision_date(rev)
        if date is None:
            known = ", ".join(c.rev for c in conventions.HISTORY)
            raise ValueError(
                f"--generator-rev: {rev!r} is not a ci-infra commit that changed the "
                f"conventions (known: {known}); use --as-of DATE for any other"
            )
        return conventions.generator(date)
    if as_of is not None:
        try:
            conventions.utc(as_of)
        except ValueError:
            raise ValueError(
                f"--as-of: {as_of!r} is not a date (expected YYYY-MM-DD or an ISO 8601 time)"
            ) from None
    return tree_generator(root, as_of)


def cmd_lint_ci(args: argparse.Namespace) -> int:
    """Exit 0 clean, 1 findings, 2 usage error, 3 internal error (a bug of ours)."""
    from pathlib import Path

    from vllm_ep_kit.lint.lint import lint
    from vllm_ep_kit.lint.rules import RULE_NAMES

    root = Path(args.root)
    if not root.is_dir():
        print(f"vllm-ep-kit lint-ci: error: --root: {root} is not a directory", file=sys.stderr)
        return 2
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        print(
            f"vllm-ep-kit lint-ci: error: FILES: no such file: {', '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    for flag, names in (("--select", args.select), ("--ignore", args.ignore)):
        unknown = sorted(set(names or []) - set(RULE_NAMES))
        if unknown:
            print(
                f"vllm-ep-kit lint-ci: error: {flag}: unknown rule {', '.join(unknown)}; "
                f"rules: {', '.join(RULE_NAMES)}",
                file=sys.stderr,
            )
            return 2
    try:
        generator = _lint_generator(root, args.as_of, args.generator_rev)
    except ValueError as exc:
        print(f"vllm-ep-kit lint-ci: error: {exc}", file=sys.stderr)
        return 2
    if args.explain is not None:
        target = Path(args.explain)
        if target.is_absolute():
            if not target.resolve().is_relative_to(root.resolve()):
                print(
                    f"vllm-ep-kit lint-ci: error: --explain: {args.explain} is outside "
                    f"--root {root}",
                    file=sys.stderr,
                )
                return 2
            target = target.resolve().relative_to(root.resolve())
        if str(target) in ("", "."):
            print(
                "vllm-ep-kit lint-ci: error: --explain: expected a path in the repository "
                "(a test, a script or a folder)",
                file=sys.stderr,
            )
            return 2
        if not (root / target).exists():
            print(
                f"vllm-ep-kit lint-ci: error: --explain: {target.as_posix()} does not exist "
                f"under --root {root}",
                file=sys.stderr,
            )
            return 2
        return _explain(root, target.as_posix(), args.format, generator)
    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(Path(args.baseline).read_text())
            if not isinstance(baseline, list):
                raise ValueError(f"expected a JSON list, got {type(baseline).__name__}")
        except (OSError, ValueError) as exc:
            print(
                f"vllm-ep-kit lint-ci: error: --baseline: {args.baseline}: not a lint-ci "
                f"--format json output ({exc})",
                file=sys.stderr,
            )
            return 2
    try:
        findings = lint(
            root,
            [Path(f) for f in args.files] or None,
            select=set(args.select) if args.select else None,
            ignore=set(args.ignore or []),
            generator=generator,
        )
    except Exception as exc:  # noqa: BLE001 (a bug of ours: say so, exit 3, no traceback)
        print(
            f"vllm-ep-kit lint-ci: internal error: {type(exc).__name__}: {exc} (please "
            "report it with the file that caused it)",
            file=sys.stderr,
        )
        return 3
    if baseline is not None:
        from vllm_ep_kit.lint.lint import without_baseline

        findings = without_baseline(findings, baseline)
    if args.format == "json":
        print(
            json.dumps(
                [
                    {
                        "path": f.path,
                        "line": f.line,
                        "rule": f.rule,
                        "message": f.message,
                        "fix": f.hint,
                        "also": list(f.also),
                    }
                    for f in findings
                ],
                indent=2,
            )
        )
    else:
        for finding in findings:
            print(_finding_line(finding, args.format))
    print(f"lint-ci: {len(findings)} finding(s), read as {generator.describe()}", file=sys.stderr)
    return exit_codes.lint_ci(findings)


def cmd_bundle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vllm_ep_kit.commands import bundle, jobs

    out = Path(args.out)
    why = jobs.unusable_out_dir(out)
    if why:
        print(f"vllm-ep-kit bundle: error: OUT: {out} {why}", file=sys.stderr)
        return 2
    for name, value in (("--have", args.have), ("--jit-cache", args.jit_cache)):
        if value is not None and not Path(value).exists():
            print(f"vllm-ep-kit bundle: error: {name}: {value} does not exist", file=sys.stderr)
            return 2
    if args.jit_cache is not None and not Path(args.jit_cache).is_dir():
        print(
            f"vllm-ep-kit bundle: error: --jit-cache: {args.jit_cache} is not a folder",
            file=sys.stderr,
        )
        return 2
    try:
        have = bundle.read_have(Path(args.have) if args.have else None)
    except (OSError, UnicodeDecodeError) as exc:
        print(
            f"vllm-ep-kit bundle: error: --have: {args.have}: not a text file of package "
            f"names ({type(exc).__name__})",
            file=sys.stderr,
        )
        return 2
    plan = bundle.plan(
        include_vllm=args.vllm,
        have=have,
        skip={bundle.normalise(n) for n in args.skip},
        progress=lambda m: print(m, file=sys.stderr),
    )
    manifest = bundle.write(
        plan,
        out,
        args.python_version,
        args.platform,
        Path(args.jit_cache) if args.jit_cache else None,
        progress=lambda m: print(m, file=sys.stderr),
    )
    print(json.dumps(manifest, indent=2))
    print(f"bundle ready: on the target run `source {out}/bootstrap.sh`", file=sys.stderr)
    return exit_codes.bundle(manifest)


VERDICT_COLOUR = {"ok": "green", "risky": "yellow", "will fail": "red"}


def _print_preflight(report: dict, console: Console) -> None:
    table = Table(
        title=f"preflight: {' '.join(report['command'])}",
        caption=f"host: {report['host']['source']}; vLLM {report['vllm']}",
        show_header=True,
    )
    table.add_column("check", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("why", overflow="fold")
    table.add_column("source", overflow="fold")
    for row in report["checks"]:
        colour = VERDICT_COLOUR.get(row["verdict"], "white")
        table.add_row(row["name"], f"[{colour}]{row['verdict']}[/]", row["reason"], row["source"])
    console.print(table)
    verdict = report["verdict"]
    console.print(f"[{VERDICT_COLOUR.get(verdict, 'white')}]{verdict}[/]", highlight=False)


def cmd_preflight(args: argparse.Namespace) -> int:
    from vllm_ep_kit.commands import preflight

    serve = list(args.serve)
    if serve and serve[0] == "--":
        serve.pop(0)
    if not serve:
        print(
            "vllm-ep-kit preflight: error: no serve command: give it after --, as "
            "`vllm-ep-kit preflight -- MODEL --data-parallel-size 2 ...`",
            file=sys.stderr,
        )
        return exit_codes.BAD_ARGUMENT
    try:
        host = preflight.host_from(args.host)
        report = preflight.run(serve, host)
    except (preflight.PreflightUsageError, preflight.HostFileError) as exc:
        print(f"vllm-ep-kit preflight: error: {exc}", file=sys.stderr)
        return exit_codes.BAD_ARGUMENT
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_preflight(report, _console(args.width, pipe_width=DOCTOR_PIPE_WIDTH))
    return exit_codes.preflight(report)


def cmd_patches_export(args: argparse.Namespace) -> int:
    from vllm_ep_kit.commands import patches_export

    try:
        report = patches_export.export(args.vllm_tree, fmt=args.format, check=args.check)
    except patches_export.NotATree as exc:
        from vllm_ep_kit.patches import all_patches

        for patch in all_patches():
            print(f"{patch.name}: {patches_export.CANNOT}: {exc}")
        return exit_codes.FAILED
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return exit_codes.patches_export(report)
    if args.format == "patch":
        for diff in report["diffs"]:
            sys.stdout.write(diff["text"])
    for row in report["rows"]:
        line = patches_export.row_line(row)
        print(line, file=sys.stderr if args.format == "patch" else sys.stdout)
    return exit_codes.patches_export(report)


def _add_run_options(command: argparse.ArgumentParser) -> None:
    """What every command that runs ranks takes: its watchdog, JSON output, table width."""
    command.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=300.0,
        help="watchdog: seconds without progress before ranks are stopped",
    )
    command.add_argument("--json", action="store_true", help="machine-readable results")
    command.add_argument(
        "--width",
        type=_positive_int,
        default=None,
        help="table width in columns (default: the terminal's; wide in a pipe)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vllm-ep-kit",
        description="Tests, hotfixes and tools for vLLM's expert-parallel communication.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = sub.add_parser(
        "doctor",
        help="what works on this machine (GPUs, links, "
        "handles and their exchange, versions, usable all-to-all backends)",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument(
        "--width",
        type=_positive_int,
        default=None,
        help="table width in columns (default: the terminal's; wide in a pipe)",
    )
    doctor.set_defaults(func=cmd_doctor)

    check = sub.add_parser(
        "check",
        help="EP correctness: dispatch + combine of every usable "
        "all-to-all backend against the exact reference",
    )
    check.add_argument(
        "--world-sizes",
        type=_int_list,
        default=None,
        metavar="N[,N]",
        help="ranks per run (default 2,4; one GPU each where GPUs exist; "
        "under torchrun: the job's ranks)",
    )
    check.add_argument(
        "--tp",
        type=_int_list,
        default=[1, 2],
        metavar="N[,N]",
        help="tensor-parallel sizes; DP fills the rest (default 1,2)",
    )
    check.add_argument(
        "--backends",
        type=_str_list,
        default=None,
        metavar="NAME[,NAME]",
        help="all-to-all backends (default: every usable checkable one)",
    )
    check.add_argument(
        "--dtypes",
        type=_str_list,
        default=["bf16", "fp32"],
        metavar="D[,D]",
        help="payload dtypes (default bf16,fp32)",
    )
    _add_run_options(check)
    check.set_defaults(func=cmd_check)

    bench = sub.add_parser(
        "bench",
        help="dispatch + combine latency and bandwidth of every "
        "usable all-to-all backend beside all_to_all_single and the link limit",
    )
    bench.add_argument(
        "--world-size",
        type=_positive_int,
        default=None,
        help="ranks (default: every visible GPU, at least 2; under torchrun: the job's ranks)",
    )
    bench.add_argument(
        "--backends",
        type=_str_list,
        default=None,
        metavar="NAME[,NAME]",
        help="backends (default: every usable benchmarkable one)",
    )
    bench.add_argument(
        "--tokens",
        type=_int_list,
        default=None,
        metavar="N[,N]",
        help="tokens per rank (default 1,2,4..8192 on GPUs; 1,16,256 on CPU)",
    )
    bench.add_argument(
        "--hidden",
        type=_int_list,
        default=None,
        metavar="H[,H]",
        help="hidden sizes (default 2048,7168 on GPUs; 2048 on CPU)",
    )
    bench.add_argument(
        "--dtypes",
        type=_str_list,
        default=None,
        metavar="D[,D]",
        help="payload dtypes (default bf16,fp8; fp8 carries block scales)",
    )
    bench.add_argument(
        "--top-k", type=_positive_int, default=None, help="experts per token (default 8)"
    )
    bench.add_argument("--experts", type=_positive_int, default=None, help="experts (default 256)")
    bench.add_argument(
        "--warmup",
        type=_non_negative_int,
        default=None,
        help="untimed repeats per point (default 5)",
    )
    bench.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        help="timed repeats, median taken (default 20)",
    )
    bench.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="new folder for bench.json, bench.png and per-rank partial rows "
        "(default bench-<date>-<time>)",
    )
    bench.add_argument(
        "--from-json",
        default=None,
        metavar="FILE",
        help="print and plot a saved bench.json instead of measuring",
    )
    _add_run_options(bench)
    bench.set_defaults(func=cmd_bench)

    lint_ci = sub.add_parser(
        "lint-ci",
        help="lint Buildkite test areas as vLLM's pipeline "
        "generator reads them (docs/ci.md lists the rules)",
    )
    lint_ci.add_argument(
        "files",
        nargs="*",
        metavar="FILES",
        help="test-area files (default: every job_dirs folder of "
        ".buildkite/ci_config*.yaml, else .buildkite/test_areas)",
    )
    lint_ci.add_argument("--root", default=".", help="repository root (default: .)")
    lint_ci.add_argument(
        "--format",
        choices=("text", "json", "github"),
        default="text",
        help="text (file:line: rule: message), json, or GitHub annotations",
    )
    lint_ci.add_argument(
        "--select", type=_str_list, default=None, metavar="RULE[,RULE]", help="only these rules"
    )
    lint_ci.add_argument(
        "--ignore", type=_str_list, default=None, metavar="RULE[,RULE]", help="never these rules"
    )
    lint_ci.add_argument(
        "--explain",
        default=None,
        metavar="PATH",
        help="which steps run PATH (a test, script or folder) or are selected "
        "by a change to it, on which device, and whether optional",
    )
    era = lint_ci.add_mutually_exclusive_group()
    era.add_argument(
        "--as-of",
        default=None,
        metavar="DATE",
        help="read the tree as the generator of DATE did (default: the date of the tree's "
        "last commit under .buildkite/, else the newest)",
    )
    era.add_argument(
        "--generator-rev",
        default=None,
        metavar="REV",
        help="read the tree as this ci-infra commit's generator (docs/ci.md lists them)",
    )
    lint_ci.add_argument(
        "--baseline",
        default=None,
        metavar="FILE",
        help="a --format json output: only findings not in it count",
    )
    lint_ci.set_defaults(func=cmd_lint_ci)

    bundle = sub.add_parser(
        "bundle",
        help="folder for an air-gapped GPU host with torch: "
        "pruned FlashInfer, optional vLLM sources, traced wheels, bootstrap",
    )
    bundle.add_argument("out", metavar="OUT", help="empty or new folder to write")
    bundle.add_argument("--python-version", default="3.12", help="target Python (default 3.12)")
    bundle.add_argument(
        "--platform",
        default="manylinux_2_28_x86_64",
        help="target wheel platform (default manylinux_2_28_x86_64)",
    )
    bundle.add_argument(
        "--have",
        default=None,
        metavar="FILE",
        help="the target's `pip freeze` (or one name per line): not shipped",
    )
    bundle.add_argument(
        "--skip",
        default=[],
        type=_str_list,
        metavar="DIST[,DIST]",
        help="distributions not to ship (e.g. optional heavy ones)",
    )
    bundle.add_argument("--vllm", action="store_true", help="include vLLM's Python sources")
    bundle.add_argument(
        "--jit-cache",
        default=None,
        metavar="DIR",
        help="a FlashInfer JIT cache built on a matching host, to ship along",
    )
    bundle.set_defaults(func=cmd_bundle)

    preflight = sub.add_parser(
        "preflight",
        help="will this `vllm serve` command work on this machine (or --host), "
        "before the model loads",
        description="Checks a `vllm serve` command against a host with the installed "
        "vLLM's own parser and config rules, the backend registry and the known bugs. "
        "Exit 0: nothing will fail; 1: something will; 2: a usage error.",
    )
    preflight.add_argument("--json", action="store_true", help="the report as JSON")
    preflight.add_argument(
        "--host",
        default=None,
        metavar="FILE",
        help="YAML/JSON describing the machine to check for (default: this one)",
    )
    preflight.add_argument(
        "--width",
        type=_positive_int,
        default=None,
        help="table width in columns (default: the terminal's; 100 in a pipe)",
    )
    preflight.add_argument(
        "serve",
        nargs=argparse.REMAINDER,
        metavar="-- SERVE_ARGS",
        help="the arguments of `vllm serve` (the model first)",
    )
    preflight.set_defaults(func=cmd_preflight)

    patches = sub.add_parser(
        "patches", help="the hotfixes as changes to a vLLM source tree (export)"
    )
    patches_sub = patches.add_subparsers(dest="patches_command", required=True, metavar="ACTION")
    export = patches_sub.add_parser(
        "export",
        help="write each fix a vLLM source tree needs into it, as its upstream change",
        description="Probes each hotfix against the tree's own code (the plugin's "
        "detection), writes the fixes it needs into its files and probes again; a fix that "
        "does not verify leaves every file as it was. Exit 0: nothing left to fix; 1: a "
        "fix is needed (--check) or cannot be applied.",
    )
    export.add_argument(
        "--vllm-tree",
        required=True,
        metavar="DIR",
        help="a vLLM checkout, or a release's sources (DIR/src/vllm, DIR/deps)",
    )
    export.add_argument(
        "--check", action="store_true", help="only probe: which fixes the tree needs"
    )
    export.add_argument(
        "--format",
        choices=("write", "patch"),
        default="write",
        help="write: change the files (default); patch: print unified diffs, change nothing",
    )
    export.add_argument("--json", action="store_true", help="the report as JSON")
    export.set_defaults(func=cmd_patches_export)
    return parser


NEXT_TO = frozenset({"torch", "vllm"})  # what the kit installs next to, not with


def main(argv: list[str] | None = None) -> int:
    from vllm_ep_kit.harness.skips import NotRunnableHere
    from vllm_ep_kit.harness.torch_logs import quiet_opaque_type_deprecations

    quiet_opaque_type_deprecations()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        # The rank runner's teardown (its finally blocks) has stopped the ranks by now.
        print(f"vllm-ep-kit {args.command}: interrupted", file=sys.stderr)
        return 130
    except NotRunnableHere as exc:  # a requirement of the run is missing on this machine
        print(f"vllm-ep-kit {args.command}: cannot run here: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        # the kit installs next to vLLM; without it only lint-ci works (pyproject.toml)
        if (exc.name or "").partition(".")[0] not in NEXT_TO:
            raise
        print(
            f"vllm-ep-kit {args.command}: cannot run here: it needs torch and vLLM, and "
            f"{exc.name} is not installed (pip install 'vllm-ep-kit[vllm]', or install the "
            "kit into vLLM's environment)",
            file=sys.stderr,
        )
        return 1


def entry() -> None:
    """The ``vllm-ep-kit`` program: :func:`main`, then an exit that skips the interpreter's
    teardown of every module (about 2 s once vLLM is imported, on a 2-core machine).
    Output is flushed and the exit handlers run first; tests call :func:`main`."""
    import atexit
    import os

    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    entry()
