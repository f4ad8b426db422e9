"""vLLM's other all-to-all backends: what each needs (doctor reports it), no transport yet.

Their layer-matrix cells say "not runnable here" with the reason instead of
running another backend's plumbing under their name.
"""

from __future__ import annotations

from vllm_ep_kit.backends import registry
from vllm_ep_kit.backends.spec import Backend, Needs

for _name in ("deepep_high_throughput", "deepep_low_latency"):
    registry.register(
        Backend(
            _name,
            Needs(min_gpus=2, modules=("deep_ep",)),
            vllm_name=_name,
            layer_quants=("bf16", "fp8"),
            takes_sp=True,
        )
    )
registry.register(
    Backend(
        "mori_high_throughput",
        Needs(min_gpus=2, modules=("mori",)),
        note="AMD ROCm backend",
        vllm_name="mori_high_throughput",
    )
)
registry.register(Backend("nixl_ep", Needs(min_gpus=2, modules=("nixl",)), vllm_name="nixl_ep"))
