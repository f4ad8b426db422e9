"""PNG of a bench report: bandwidth per backend beside the baseline and the link limit.

matplotlib is optional (air-gapped GPU hosts often lack it): ``bench`` writes
its JSON there and ``vllm-ep-kit bench --from-json`` draws it elsewhere.
"""

from __future__ import annotations

from pathlib import Path


def plot_report(report: dict, path: Path) -> Path:
    """One panel per (hidden, dtype): GB/s over tokens per rank.  Raises ImportError."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    panels = sorted({(r["hidden"], r["dtype"]) for r in rows})
    if not panels:
        raise ValueError("the report has no measured points to plot")
    link = min((lk["gbps"] for lk in report.get("links", []) if lk.get("gbps")), default=None)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (hidden, dtype) in zip(axes[0], panels, strict=True):
        mine = [r for r in rows if r["hidden"] == hidden and r["dtype"] == dtype]
        for backend in dict.fromkeys(r["backend"] for r in mine):
            pts = sorted((r["tokens"], r["gbps"]) for r in mine if r["backend"] == backend)
            ax.plot(*zip(*pts, strict=True), marker="o", label=backend)
        base: dict[int, list[float]] = {}
        for r in mine:
            base.setdefault(r["tokens"], []).append(r["baseline_gbps"])
        pts = sorted((n, sorted(v)[len(v) // 2]) for n, v in base.items())
        ax.plot(
            *zip(*pts, strict=True),
            linestyle="--",
            color="black",
            label=f"{mine[0]['baseline']} (same tokens)",
        )
        if link:
            ax.axhline(link, color="red", linestyle=":", label=f"peer copy {link:.0f} GB/s")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per rank")
        ax.set_ylabel("GB/s leaving a rank (dispatch + combine)")
        ax.set_title(f"hidden {hidden}, {dtype}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    meta = report.get("meta", {})
    fig.suptitle(
        f"{meta.get('world_size', '?')} ranks, {meta.get('device', '')}, {meta.get('timer', '')}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
