"""GPU steps state their device and GPU count; only ``device: cpu`` steps may omit the count.

Upstream's disaggregated split added a FlashInfer step with no device: it ran on
whatever the default pool was, which was not the hardware it needed.
"""

from __future__ import annotations

RULE = "gpu-device"


def check(ctx) -> list:
    findings = []
    for area in ctx.areas:
        for i, step in area.indexed_steps():
            label = step.get("label", f"#{i}")
            device = step.get("device")
            if device is None:
                findings.append(area.finding(
                    ("steps", i), RULE, f"step {label!r} names no device",
                    "add `device: h100` (or the pool it needs), or `device: cpu`"))
            elif device != "cpu" and "num_devices" not in step:
                findings.append(area.finding(
                    ("steps", i, "device"), RULE,
                    f"GPU step {label!r} (device {device}) states no num_devices",
                    "add `num_devices: N`"))
    return findings
