"""``vllm-ep-kit bench``: dispatch + combine speed of vLLM's all-to-all backends.

Each backend runs its sweep (tokens per rank x hidden x dtype) inside one set
of ranks, and every point is timed side by side with ``torch.distributed``'s
``all_to_all_single`` carrying the same routed rows (the baseline), in the
same processes, one right after the other; the peer-copy bandwidth of the
GPUs (the link limit) is measured in the same ranks.  ``plan`` validates the
arguments, ``traffic`` counts the bytes, ``timing`` times, ``drivers`` knows
each backend's calls, ``rank`` runs a sweep, ``report`` merges ranks into
ratios, ``plot`` draws them.
"""
