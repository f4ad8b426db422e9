"""``preflight`` against real serve commands, and against bad input.

The corpus (``preflight_corpus.yaml``) holds serve command lines from vLLM's issues,
pull requests, recipes and docs, each with the host it ran on, the model's config
(written to a folder here: nothing is downloaded) and the outcome its source shows;
cases that vLLM's own code decides cite that code.  Each runs through the installed
vLLM's parser and config rules with the host standing in: a failing case must be
flagged "will fail" by the check and with the words its source gives, a working case
must not be flagged "will fail" (risky is allowed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_ep_kit import cli
from vllm_ep_kit.commands import exit_codes, preflight
from vllm_ep_kit.commands.preflight import host as hosts
from vllm_ep_kit.commands.preflight import model as models
from vllm_ep_kit.commands.preflight import workspace
from vllm_ep_kit.commands.preflight.checks import WILL_FAIL
from vllm_ep_kit.patches.base import Serving

CORPUS = yaml.safe_load((Path(__file__).parent / "preflight_corpus.yaml").read_text())["cases"]
FAILING = [c for c in CORPUS if c["expect"]["verdict"] == WILL_FAIL]
WORKING = [c for c in CORPUS if c["expect"]["verdict"] == "no failure"]
H200 = {
    "gpu": "H200",
    "count": 8,
    "memory_gib": 141,
    "capability": "9.0",
    "nvlink": True,
    "packages": ["flashinfer"],
}
TINY_MOE = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "moe_intermediate_size": 128,
    "num_experts": 16,
    "num_experts_per_tok": 4,
    "torch_dtype": "bfloat16",
}

pytestmark = pytest.mark.vllm


def model_folder(root: Path, name: str, config: dict) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def ep_serve(folder: Path, *extra: str, dp: int = 2) -> list[str]:
    """``vllm serve``'s arguments for the model in ``folder``, EP over ``dp`` DP ranks."""
    return [str(folder), "-dp", str(dp), "--enable-expert-parallel", *extra]


def run_case(case: dict, root: Path) -> dict:
    folder = model_folder(root, case["id"], case["config"])
    argv = [str(folder) if word == "{model}" else word for word in case["argv"]]
    return preflight.run(argv, hosts.from_dict(case["host"], case["id"]))


def failures(report: dict) -> list[dict]:
    return [c for c in report["checks"] if c["verdict"] == WILL_FAIL]


def test_the_corpus_is_large_and_mixed():
    """At least 25 cases, failing and working, every one with its source."""
    assert len(CORPUS) >= 25
    assert len(FAILING) >= 10 and len(WORKING) >= 10
    assert all(c["source"].startswith("https://") for c in CORPUS)
    assert len({c["id"] for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", FAILING, ids=[c["id"] for c in FAILING])
def test_a_failing_case_is_flagged_with_its_reason(case, tmp_path):
    report = run_case(case, tmp_path)
    flagged = failures(report)
    expect = case["expect"]
    assert report["verdict"] == WILL_FAIL, report["checks"]
    assert any(c["name"] == expect["check"] and expect["says"] in c["reason"] for c in flagged), (
        f"expected {expect['check']!r} to say {expect['says']!r}; flagged: {flagged}"
    )
    assert exit_codes.preflight(report) == exit_codes.FAILED


@pytest.mark.parametrize("case", WORKING, ids=[c["id"] for c in WORKING])
def test_a_working_case_is_not_flagged_to_fail(case, tmp_path):
    report = run_case(case, tmp_path)
    assert failures(report) == [], failures(report)
    assert exit_codes.preflight(report) == exit_codes.PASSED


USAGE = [c for c in CORPUS if c["expect"]["verdict"] == "usage error"]


@pytest.mark.parametrize("case", USAGE, ids=[c["id"] for c in USAGE])
def test_arguments_the_installed_vllm_refuses_get_its_own_error(case, tmp_path):
    with pytest.raises(preflight.PreflightUsageError, match=case["expect"]["says"]):
        run_case(case, tmp_path)


# ------------------------------------------------------------------ the command line


@pytest.fixture
def h200_file(tmp_path) -> Path:
    path = tmp_path / "h200.yaml"
    path.write_text(yaml.safe_dump(H200))
    return path


def test_cli_reports_json_and_exits_1_on_a_failure(h200_file, tmp_path, capsys):
    folder = model_folder(tmp_path, "moe", TINY_MOE)
    argv = ["--host", str(h200_file), "--json", "--"]
    rc = cli.main(["preflight", *argv, *ep_serve(folder, "--enable-dbo")])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert [c["name"] for c in failures(report)] == ["vllm config"]
    assert failures(report)[0]["source"].startswith("vllm/config/vllm.py:")


def test_cli_table_names_each_check_and_the_verdict(h200_file, tmp_path, capsys):
    folder = model_folder(tmp_path, "moe", TINY_MOE)
    rc = cli.main(
        [
            "preflight",
            "--host",
            str(h200_file),
            "--",
            "vllm",
            "serve",
            *ep_serve(folder, "--all2all-backend", "flashinfer_nvlink_two_sided"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("layout", "vllm config", "backend", "quantisation", "workspace"):
        assert name in out
    assert out.strip().splitlines()[-1] == "ok"
    assert max(len(line) for line in out.splitlines()) <= 100


@pytest.mark.parametrize(
    ("serve", "says"),
    [
        (["{model}", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["{model}", "--tensor-parallel-size", "two"], "invalid int value: 'two'"),
        (["{empty}"], "has no config.json"),
        (["{model}", "--help"], "vllm serve --help"),
        ([], "no serve command"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(serve, says, h200_file, tmp_path, capsys):
    folder = model_folder(tmp_path, "moe", TINY_MOE)
    (tmp_path / "empty").mkdir()
    words = [{"{model}": str(folder), "{empty}": str(tmp_path / "empty")}.get(w, w) for w in serve]
    rc = cli.main(["preflight", "--host", str(h200_file), "--", *words])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("vllm-ep-kit preflight: error:") and says in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read it"),
        ("gpu: [unclosed", "not YAML or JSON"),
        ("gpu: H200\n", "'count' is a required property"),
        ("count: -1\n", "count: -1 is less than the minimum of 0"),
        ("count: 8\nnccl: latest\n", "nccl: 'latest' does not match"),
        ("count: 8\npackages: [deepep]\n", "packages.0: 'deepep' is not one of"),
        ("count: 8\nvendor: amd\ncapability: '9.0'\n", "capability: CUDA's"),
    ],
)
def test_a_bad_host_file_gets_one_line(content, says, tmp_path, capsys):
    path = tmp_path / "host.yaml"
    if content is not None:
        path.write_text(content)
    rc = cli.main(["preflight", "--host", str(path), "--", "some/model"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and says in err and len(err.splitlines()) == 1, err


SERVE_WORDS = st.sampled_from(
    [
        "--tensor-parallel-size",
        "-tp",
        "--data-parallel-size",
        "-dp",
        "--pipeline-parallel-size",
        "--data-parallel-size-local",
        "--enable-expert-parallel",
        "--all2all-backend",
        "--enable-dbo",
        "--enforce-eager",
        "--quantization",
        "--dtype",
        "--nnodes",
        "--max-num-batched-tokens",
        "--moe-backend",
        "--enable-eplb",
        "--eplb-config",
        "--compilation-config",
        "deepep_v2",
        "moonep",
        "flashinfer_nvlink_one_sided",
        "fp8",
        "bfloat16",
        "float16",
        "0",
        "1",
        "2",
        "3",
        "8",
        "-1",
        "{}",
        '{"mode": 3}',
        "--",
        "vllm",
        "serve",
        "{model}",
        "--port",
        "x",
    ]
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(words=st.lists(SERVE_WORDS | st.text(max_size=8), max_size=10))
def test_no_argument_list_gets_a_traceback(words, h200_file, tmp_path, capsys):
    folder = model_folder(tmp_path, "moe", TINY_MOE)
    serve = [str(folder) if w == "{model}" else w for w in words]
    rc = cli.main(["preflight", "--host", str(h200_file), "--", *serve])
    out, err = capsys.readouterr()
    assert rc in (0, 1, 2)
    assert "Traceback" not in out + err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------ pieces


def test_model_facts_read_a_multimodal_models_language_part(tmp_path):
    config = {
        "architectures": ["Llama4ForConditionalGeneration"],
        "text_config": {**TINY_MOE, "num_local_experts": 16, "num_experts": None},
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]},
    }
    facts = models.read(str(model_folder(tmp_path, "mm", config)))
    assert isinstance(facts, models.ModelFacts)
    assert (facts.hidden_size, facts.num_experts, facts.top_k) == (256, 16, 4)
    assert (facts.quant_format, facts.weight_block) == ("fp8-block", (128, 128))


def test_a_model_neither_on_disk_nor_cached_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    facts = models.read("nobody/no-such-model")
    assert isinstance(facts, str) and "never downloaded" in facts


@pytest.mark.parametrize(
    ("quant", "expected"),
    [
        ({"quant_method": "fp8"}, "fp8"),
        ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8-block"),
        ({"quant_method": "modelopt_fp4"}, "nvfp4"),
        ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "nvfp4"),
        ({"quant_method": "mxfp4"}, "mxfp4"),
        ({"quant_method": "awq"}, None),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"g": {"input_activations": {"type": "float", "num_bits": 8}}},
            },
            "fp8",
        ),
    ],
)
def test_quant_format_of_each_scheme(quant, expected):
    assert models.quant_format(quant) == expected


def test_the_plugin_state_reads_the_environment(monkeypatch):
    from vllm_ep_kit import patches

    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    monkeypatch.delenv(patches.ENV_DISABLE, raising=False)
    assert preflight.plugin_state("mnnvl_workspace_ep_group") == ""
    monkeypatch.setenv(patches.ENV_DISABLE, "mnnvl_workspace_ep_group")
    assert "disables it" in preflight.plugin_state("mnnvl_workspace_ep_group")
    assert preflight.plugin_state("nixl_ep_tcp_store_group") == ""
    monkeypatch.setenv(patches.ENV_DISABLE, "no_such_patch")
    assert "refuses its configuration" in preflight.plugin_state("mnnvl_workspace_ep_group")
    monkeypatch.delenv(patches.ENV_DISABLE)
    monkeypatch.setenv("VLLM_PLUGINS", "some_other_plugin")
    assert "leaves it out" in preflight.plugin_state("mnnvl_workspace_ep_group")


@pytest.mark.parametrize(
    ("serving", "bitten"),
    [
        (Serving("flashinfer_nvlink_one_sided", 2, 4, True), {"mnnvl_workspace_ep_group"}),
        (Serving("flashinfer_nvlink_two_sided", 1, 4, True), {"two_sided_dispatch_x_sf_guard"}),
        (
            Serving("flashinfer_nvlink_two_sided", 2, 2, True, activation_format="fp8-block"),
            {"mnnvl_workspace_ep_group"},
        ),
        (Serving("flashinfer_nvlink_one_sided", 2, 4, False), set()),
        (Serving("nixl_ep", 1, 2, True), {"nixl_ep_tcp_store_group"}),
        (Serving("nixl_ep", 1, 2, True, elastic_ep=True), set()),
        (Serving("allgather_reducescatter", 2, 4, True), set()),
    ],
)
def test_which_serve_setups_reach_each_known_bug(serving, bitten):
    from vllm_ep_kit import patches

    assert {p.name for p in patches.all_patches() if p.bites(serving)} == bitten


# ------------------------------------------------------------------ workspace


def test_two_sided_workspace_matches_the_h200_measurement():
    """FlashInfer's two-sided workspace on 2 H200 ranks was a (2, 17303616) uint64 tensor."""
    figure = workspace.two_sided(2, workspace.SM_COUNTS["H200"])
    assert figure.bytes_per_gpu - (2 << 20) - 2 * 256 == 17303616 * 8


WORKSPACE_LAYOUTS = [(1, 2), (2, 2), (1, 3), (1, 4), (2, 3), (3, 2)]
SHAPE = {"max_num_tokens": 64, "top_k": 4, "num_experts": 24, "hidden_size": 256}


def rank_recorded_workspaces(ctx, shape):
    """What vLLM's two FlashInfer managers ask the kit's recorder for on this rank."""
    from tests.drivers.flashinfer_recorder import FlashInferAllocationRecorder
    from tests.drivers.mnnvl_managers import build_manager, ensure_workspace, manager_backends

    seen = {}
    for backend in manager_backends():
        recorder = FlashInferAllocationRecorder()
        with recorder.installed():
            manager = build_manager(backend)
            ensure_workspace(manager, backend, shape)
            manager.cleanup()
        seen[backend] = [
            {"kind": a.kind, "rows": a.rows, "details": a.details} for a in recorder.allocations
        ]
    return seen


def recorded_bytes(allocations: list[dict], sms: int) -> int:
    """The per-GPU figure of what the managers asked for: FlashInfer's sizing of the
    recorded request (one-sided: as vLLM sized it where it asked for a size)."""
    from vllm_ep_kit.patches.flashinfer_managers import (
        ROUTING_BYTES_PER_SLOT,
        one_sided_workspace_bytes,
        two_sided_workspace_bytes,
    )

    total = 0
    for alloc in allocations:
        rows, details = alloc["rows"], alloc["details"]
        if alloc["kind"] == "one_sided":
            # vLLM <= 0.32 asks FlashInfer's helper for the size itself; 0.33 hands the
            # activations' bytes to FlashInfer's one-sided class, which adds each top-k
            # slot's expert id and weight (the recorder stands in for that class)
            total += details.get("workspace_size_per_rank") or one_sided_workspace_bytes(
                rows,
                details["max_num_tokens"],
                details["dispatch_bytes_per_token"] + ROUTING_BYTES_PER_SLOT * details["top_k"],
                2 * details["hidden_size"],
            )
        elif alloc["kind"] == "two_sided_workspace":
            total += two_sided_workspace_bytes(rows, sms)[0]
        else:
            total += two_sided_workspace_bytes(rows, sms)[1]
    return total


@pytest.mark.flashinfer
@pytest.mark.parametrize(
    ("tp", "dp"), WORKSPACE_LAYOUTS, ids=[f"tp{t}dp{d}" for t, d in WORKSPACE_LAYOUTS]
)
def test_workspace_figure_is_what_vllms_managers_allocate(tp, dp, tmp_path):
    """Preflight's figure for each FlashInfer backend equals what vLLM's real managers,
    on real ranks of the layout over gloo, ask the kit's FlashInfer recorder for."""
    from vllm_ep_kit.harness import run_ranks
    from vllm_ep_kit.patches.flashinfer_managers import WorkspaceShape
    from vllm_ep_kit.reference.layout import ParallelLayout

    layout = ParallelLayout(tp=tp, dp=dp)
    shape = WorkspaceShape(**SHAPE, x_bytes_per_token=2 * SHAPE["hidden_size"])
    ranks = run_ranks(
        rank_recorded_workspaces,
        layout.world_size,
        shape,
        backend="gloo",
        layout=layout,
        timeout_s=240,
    )
    config = {**TINY_MOE, "num_experts": SHAPE["num_experts"]}
    folder = model_folder(tmp_path, "moe", config)
    sms = workspace.SM_COUNTS["H200"]
    for backend in ranks[0]:
        argv = ep_serve(
            folder,
            *("-tp", str(tp), "--all2all-backend", backend),
            *("--max-num-batched-tokens", str(SHAPE["max_num_tokens"])),
            dp=dp,
        )
        report = preflight.run(argv, hosts.from_dict(H200, "H200"))
        for rank, seen in enumerate(ranks):
            assert seen[backend], f"rank {rank}: {backend} allocated nothing"
            assert report["workspace"]["bytes_per_gpu"] == recorded_bytes(seen[backend], sms), (
                f"{backend} rank {rank}: preflight {report['workspace']}, vLLM asked {seen[backend]}"
            )


def test_microbatching_and_graphs_are_read_from_vllms_configs():
    """What doctor's DBO and graphs columns show comes from vLLM's own configs: its
    microbatching rule refuses what its assert does not list, and its compilation
    config turns graphs off for DeepEP high throughput only where DP > 1."""
    from vllm_ep_kit.commands.preflight import vllm_side

    takes = {
        name: vllm_side.takes_microbatching(name)
        for name in ("deepep_low_latency", "allgather_reducescatter", "deepep_v2", "passthrough")
    }
    assert takes == {
        "deepep_low_latency": True,
        "allgather_reducescatter": False,
        "deepep_v2": False,
        "passthrough": None,  # vLLM refuses it without a MoE kernel of its own, DBO or not
    }
    assert not vllm_side.graphs_kept("deepep_high_throughput", data_parallel_size=2)
    assert vllm_side.graphs_kept("deepep_high_throughput", data_parallel_size=1)
    assert vllm_side.graphs_kept("deepep_low_latency", data_parallel_size=2)


class BugOnTwoSidedBf16:
    """A hotfix whose bug the installed vLLM has (its probe says so), reached by the
    two-sided backend with unquantised activations: the installed releases carry none of
    the kit's bugs, so the verdicts for a present one are decided on this stand-in."""

    name = "stand_in_bug"
    upstream = "vllm-project/vllm#1"

    def bites(self, serving):
        if serving.all2all_backend == "flashinfer_nvlink_two_sided":
            return "dies at the first dispatch" if serving.activation_format == "bf16" else ""
        return ""

    def probe(self):
        return True, "the bug is there"


def two_sided_command(dp: int = 4):
    from vllm_ep_kit.commands.preflight.checks import Command

    return Command(
        backend="flashinfer_nvlink_two_sided",
        given_backend="flashinfer_nvlink_two_sided",
        tensor_parallel=1,
        data_parallel=dp,
        pipeline_parallel=1,
        data_parallel_local=None,
        nnodes=1,
        expert_parallel=True,
        elastic_ep=False,
        enforce_eager=False,
        dbo=False,
        quantization=None,
        dtype="auto",
    )


@pytest.mark.parametrize(
    ("fmt", "disabled", "verdict"),
    [
        ("bf16", "", "ok"),  # the plugin fixes it
        ("bf16", "stand_in_bug", WILL_FAIL),  # the plugin is told not to
        (None, "stand_in_bug", "risky"),  # the model's format unknown: it may reach it
        ("fp8-block", "stand_in_bug", None),  # not reached: no row
    ],
)
def test_a_present_bug_fails_the_command_unless_the_plugin_fixes_it(
    fmt, disabled, verdict, monkeypatch
):
    from vllm_ep_kit import patches

    monkeypatch.setattr(patches, "all_patches", lambda: [BugOnTwoSidedBf16()])
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    monkeypatch.setenv(patches.ENV_DISABLE, disabled)
    rows = preflight._known_bugs(two_sided_command(), fmt)
    assert [r.verdict for r in rows] == ([verdict] if verdict else [])
    if verdict == WILL_FAIL:
        assert "dies at the first dispatch" in rows[0].reason
        assert rows[0].source == "vllm-project/vllm#1"


def test_without_host_file_it_checks_this_machine(tmp_path):
    """No --host: the host is this machine as the kit's probes see it."""
    from vllm_ep_kit.harness import probes

    folder = model_folder(tmp_path, "moe", TINY_MOE)
    report = preflight.run(ep_serve(folder))
    layout = next(c for c in report["checks"] if c["name"] == "layout")
    assert report["host"]["source"] == "this machine"
    assert report["host"]["count"] == probes.gpu_count()
    if probes.gpu_count() == 0:
        assert layout["verdict"] == WILL_FAIL and "has none" in layout["reason"]
    else:
        assert "has none" not in layout["reason"]


def test_doctors_probes_of_this_machine_judge_each_backend():
    """Checked on this machine, a backend's needs go through doctor's probes too."""
    from vllm_ep_kit import backends
    from vllm_ep_kit.harness import probes

    agrs = preflight._probed(backends.get("allgather_reducescatter"))
    one_sided = preflight._probed(backends.get("flashinfer_nvlink_one_sided"))
    assert agrs.verdict == "ok", agrs
    if probes.gpu_count() < 2:
        assert one_sided.verdict == WILL_FAIL and "GPU" in one_sided.reason, one_sided


def test_the_program_flushes_its_report_and_exits_with_its_status(h200_file, tmp_path):
    """``vllm-ep-kit`` (``cli.entry``) skips the interpreter's teardown: its report must
    still be whole and its exit status the command's."""
    import subprocess
    import sys

    folder = model_folder(tmp_path, "moe", TINY_MOE)
    program = "import sys; from vllm_ep_kit.cli import entry; sys.argv[0] = 'vllm-ep-kit'; entry()"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            program,
            "preflight",
            "--json",
            "--host",
            str(h200_file),
            "--",
            *ep_serve(folder, "--enable-dbo"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert json.loads(done.stdout)["verdict"] == WILL_FAIL


def test_the_two_sided_workspace_needs_the_sm_count_a_host_file_can_give(tmp_path):
    folder = model_folder(tmp_path, "moe", TINY_MOE)
    argv = ep_serve(folder, "--all2all-backend", "flashinfer_nvlink_two_sided")
    unknown = {**H200, "gpu": "RTX PRO 6000"}
    report = preflight.run(argv, hosts.from_dict(unknown, "pro6000"))
    sized = next(c for c in report["checks"] if c["name"] == "workspace")
    assert sized["verdict"] == "risky" and "sms" in sized["reason"]
    assert report["workspace"] is None
    report = preflight.run(argv, hosts.from_dict({**unknown, "sms": 188}, "pro6000"))
    assert report["workspace"]["bytes_per_gpu"] == workspace.two_sided(2, 188).bytes_per_gpu
