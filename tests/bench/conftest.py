"""What the bench tests share: the names of the backends bench drives, and one rank's row
of a measured point as the bench ranks write it."""

AGRS = "allgather_reducescatter"
ONE = "flashinfer_nvlink_one_sided"
TWO = "flashinfer_nvlink_two_sided"


def rank_row(
    rank,
    *,
    dispatch=1.0,
    combine=1.0,
    total=2.0,
    base=1.0,
    nbytes=1e6,
    base_bytes=1e6,
    error=0.0,
    tokens=8,
    hidden=512,
    dtype="bf16",
    backend=AGRS,
):
    return {
        "backend": backend,
        "tokens": tokens,
        "hidden": hidden,
        "dtype": dtype,
        "rank": rank,
        "dispatch_ms": dispatch,
        "combine_ms": combine,
        "total_ms": total,
        "remote_bytes": nbytes,
        "check_error": error,
        "baseline": "torch_all_to_all",
        "baseline_ms": base,
        "baseline_remote_bytes": base_bytes,
    }
