"""vLLM's other all-to-all backends: what each needs (doctor reports it), no transport yet.

Their layer-matrix cells say "not runnable here" with the reason instead of running
another backend's plumbing under their name.  What each needs is stated here once, with
the place in vLLM's sources that shows it (``source``); where the installed vLLM has a
check of its own (``vllm_has``), doctor asks it.
"""

from __future__ import annotations

from vllm_ep_kit.backends import registry
from vllm_ep_kit.backends.spec import Backend, Needs

COMMUNICATOR = "vllm/distributed/device_communicators"
PREPARE_FINALIZE = "vllm/model_executor/layers/fused_moe/prepare_finalize"
# DeepEP moves block-quantised fp8 as it is (high throughput: any block shape; low
# latency: 128x128 blocks only); other quantisations go as bf16 and are quantised after.
DEEPEP_FORMATS = {
    "deepep_high_throughput": ("bf16", "fp8-block"),
    "deepep_low_latency": ("bf16", "fp8-block"),
}
DEEPEP_FILES = {"deepep_high_throughput": "deepep_ht.py", "deepep_low_latency": "deepep_ll.py"}

for _name in ("deepep_high_throughput", "deepep_low_latency"):
    registry.register(
        Backend(
            _name,
            Needs(min_gpus=2, modules=("deep_ep",)),
            vllm_name=_name,
            vllm_has="vllm.utils.import_utils:has_deep_ep",
            layer_quants=("bf16", "fp8"),
            takes_sp=True,
            source=f"{COMMUNICATOR}/all2all.py (DeepEPAll2AllManagerBase: assert has_deep_ep())",
            formats=DEEPEP_FORMATS[_name],
            formats_source=f"{PREPARE_FINALIZE}/{DEEPEP_FILES[_name]}",
        )
    )
registry.register(
    Backend(
        "deepep_v2",
        Needs(min_gpus=2, modules=("deep_ep",), nccl="2.30.4"),
        note="DeepEP v2 (ElasticBuffer); NCCL GIN between nodes",
        vllm_name="deepep_v2",
        vllm_has="vllm.utils.import_utils:has_deep_ep_v2",
        takes_sp=True,
        source="vllm/utils/import_utils.py (DEEPEP_V2_MIN_NCCL_VERSION_RAW, has_deep_ep_v2); "
        f"{COMMUNICATOR}/all2all.py (DeepEPV2All2AllManager)",
        formats=("bf16", "fp8-block", "mxfp8"),
        formats_source=f"{PREPARE_FINALIZE}/deepep_v2.py (combine requires bfloat16)",
    )
)
for _name in ("mori_high_throughput", "mori_low_latency"):
    registry.register(
        Backend(
            _name,
            Needs(min_gpus=2, modules=("mori",), rocm=True),
            note="AMD ROCm backend (gfx942, gfx950)",
            vllm_name=_name,
            vllm_has="vllm.utils.import_utils:has_mori",
            takes_sp=True,
            source=f"{COMMUNICATOR}/all2all.py (MoriAll2AllManager: on_gfx942() or on_gfx950())",
            formats=("bf16", "fp8", "fp8-block", "mxfp4"),
            formats_source="vllm/model_executor/layers/fused_moe/all2all_utils.py (MoRI)",
        )
    )
registry.register(
    Backend(
        "moonep",
        Needs(min_gpus=2, nvlink=True, multicast=True, modules=("moonep",)),
        note="MoonEP; unquantized BF16 models only",
        vllm_name="moonep",
        vllm_has="vllm.utils.import_utils:has_moonep",
        source="vllm/utils/import_utils.py (check_moonep_system_support: NVSwitch multicast); "
        "vllm/config/vllm.py (moonep: BF16 models only)",
        formats=("bf16",),
        refuses=("quantized",),
        formats_source="vllm/config/vllm.py (VllmConfig: 'currently supports unquantized BF16 "
        "models only'); "
        f"{PREPARE_FINALIZE}/moonep.py",
        graphs="vLLM runs it eager: it turns CUDA graphs off (vllm/config/vllm.py, 'MoonEP: "
        "Disabling CUDA Graphs')",
    )
)
registry.register(
    Backend(
        "nixl_ep",
        Needs(min_gpus=2, modules=("nixl_ep",)),
        vllm_name="nixl_ep",
        vllm_has="vllm.utils.import_utils:has_nixl_ep",
        takes_sp=True,
        source=f"{COMMUNICATOR}/all2all.py (NixlEPAll2AllManager)",
        formats=("bf16", "fp8-block"),
        formats_source=f"{PREPARE_FINALIZE}/nixl_ep.py",
    )
)
registry.register(
    Backend(
        "passthrough",
        Needs(min_gpus=2, modules=("flashinfer",)),
        note="no exchange of its own: set by vLLM for the FlashInfer MoE-EP kernels "
        "(--moe-backend), which dispatch and combine themselves",
        vllm_name="passthrough",
        takes_sp=True,
        source="vllm/config/kernel.py (FLASHINFER_MOE_EP_BACKENDS bind all2all_backend "
        "'passthrough'); vllm/engine/arg_utils.py (not a --all2all-backend choice)",
    )
)
registry.register(
    Backend(
        "pplx",
        Needs(min_gpus=2, modules=("pplx_kernels",)),
        note="Perplexity's kernels; later releases fall back to allgather_reducescatter",
        vllm_name="pplx",
        source="vllm/config/parallel.py (removed: falls back to allgather_reducescatter)",
    )
)
