"""How a repository adopts lint-ci: the pre-commit hook this repository offers, the
Buildkite step docs/ci.md documents, and an install that brings neither torch nor vLLM."""

from __future__ import annotations

import shlex
import shutil
import tomllib
from pathlib import Path

import yaml

from vllm_ep_kit.cli import build_parser
from vllm_ep_kit.harness.fresh_python import run_json
from vllm_ep_kit.lint.lint import lint

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
STEP_EXAMPLE = ROOT / "docs/examples/lint-ci-step.yaml"

# A fresh interpreter in which torch and vLLM cannot be imported, as in the environment
# pre-commit builds for the hook; it runs the kit's command line and reports.
WITHOUT_TORCH = """
import contextlib, io, json, sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "vllm"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from vllm_ep_kit.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out, \\
        contextlib.redirect_stderr(io.StringIO()) as err:
    rc = main(ARGV)
print(json.dumps({"rc": rc, "out": out.getvalue(), "err": err.getvalue(),
                  "torch": any(m.partition(".")[0] == "torch" for m in sys.modules)}))
"""


def run_without_torch(*argv: str) -> dict:
    return run_json(WITHOUT_TORCH.replace("ARGV", repr(list(argv))))


def test_the_package_installs_without_torch_or_vllm_which_come_as_an_extra():
    names = [
        shlex.split(d.replace(">", " ").replace("=", " "))[0]
        for d in PYPROJECT["project"]["dependencies"]
    ]
    assert "torch" not in names and "vllm" not in names
    extra = PYPROJECT["project"]["optional-dependencies"]["vllm"]
    assert any(d.startswith("vllm>=") for d in extra)


def test_lint_ci_runs_where_torch_and_vllm_cannot_be_imported(tmp_path):
    shutil.copytree(ROOT / ".buildkite", tmp_path / ".buildkite")
    (tmp_path / ".buildkite/test_areas/misc.yaml").write_text(
        "group: g\nsteps:\n  - label: unit\n    commands: [pytest -v tests/test_gone.py]\n"
    )
    data = run_without_torch("lint-ci", "--root", str(tmp_path), "--select", "path-exists")
    assert data["rc"] == 1, data
    assert "path-exists: step 'unit' runs tests/test_gone.py" in data["out"]
    assert data["torch"] is False


def test_the_other_commands_say_in_one_line_that_they_need_torch_and_vllm():
    data = run_without_torch("doctor")
    assert data["rc"] == 1, data
    assert data["err"] == (
        "vllm-ep-kit doctor: cannot run here: it needs torch and vLLM, and torch is not "
        "installed (pip install 'vllm-ep-kit[vllm]', or install the kit into vLLM's "
        "environment)\n"
    )


def test_the_pre_commit_hook_runs_the_kits_command_with_arguments_it_accepts():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    (hook,) = hooks
    assert hook["id"] == "lint-ci" and hook["language"] == "python"
    # its rules read the whole tree: one run per commit, not one per changed file
    assert hook["pass_filenames"] is False
    program, *argv = shlex.split(hook["entry"])
    assert program in PYPROJECT["project"]["scripts"]
    args = build_parser().parse_args([*argv, "--baseline", "base.json"])
    assert args.command == "lint-ci" and args.baseline == "base.json"


def test_the_documented_buildkite_step_is_clean_and_runs_lint_ci_with_a_baseline(tmp_path):
    (tmp_path / "tests").mkdir()
    areas = tmp_path / ".buildkite/test_areas"
    areas.mkdir(parents=True)
    shutil.copy(STEP_EXAMPLE, areas / "lint.yaml")
    assert [f.format() for f in lint(tmp_path)] == []
    (step,) = yaml.safe_load(STEP_EXAMPLE.read_text())["steps"]
    program, *argv = shlex.split(step["commands"][-1])
    assert program in PYPROJECT["project"]["scripts"]
    args = build_parser().parse_args(argv)
    assert args.command == "lint-ci" and args.baseline
    assert "docs/examples/lint-ci-step.yaml" in (ROOT / "docs/ci.md").read_text()
