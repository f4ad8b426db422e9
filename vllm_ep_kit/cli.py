"""Command line: the one place that prints.  Everything below returns data."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

OK = "[green]yes[/green]"
NO = "[red]no[/red]"


def _print_doctor(report: dict, console: Console) -> None:
    versions = Table(title="Versions", show_header=True)
    versions.add_column("component")
    versions.add_column("version")
    for name, value in report["versions"].items():
        versions.add_row(name, value or "[dim]none[/dim]")
    console.print(versions)

    caps = Table(title="Capabilities", show_header=True)
    caps.add_column("capability")
    caps.add_column("ok")
    caps.add_column("detail", overflow="fold")
    for cap in report["capabilities"]:
        caps.add_row(cap["name"], OK if cap["ok"] else NO, cap["detail"])
    console.print(caps)

    table = Table(title="All-to-all backends", show_header=True)
    table.add_column("backend")
    table.add_column("usable here")
    table.add_column("why / note", overflow="fold")
    for row in report["backends"]:
        why = row["reason"] if not row["usable"] else (row["note"] or "ok")
        table.add_row(row["name"], OK if row["usable"] else NO, why)
    console.print(table)


def cmd_doctor(args: argparse.Namespace) -> int:
    from vllm_ep_kit import doctor

    report = doctor.collect()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_doctor(report, Console(width=args.width))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-ep-kit",
        description="Tests, hotfixes and tools for vLLM's expert-parallel communication.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = sub.add_parser("doctor", help="what works on this machine (GPUs, links, "
                            "handles, ptrace, versions, usable all-to-all backends)")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--width", type=int, default=None, help="table width in columns")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
