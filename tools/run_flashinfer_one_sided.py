"""One-sided FlashInfer all-to-all vs the oracle on this host's GPUs (docs/gpu-validation.md)."""

import json
import sys

from vllm_ep_kit.flashinfer_direct import default_cases, rank_one_sided_roundtrip
from vllm_ep_kit.testing import run_ranks

if __name__ == "__main__":
    world = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    results = run_ranks(
        rank_one_sided_roundtrip, world, default_cases(world), backend="gloo", timeout_s=300
    )
    print(json.dumps([[r.as_dict() for r in per_rank] for per_rank in results], indent=1))
    sys.exit(0 if all(r.passed for per_rank in results for r in per_rank) else 1)
