"""Token payload formats, one registry: how a token row is quantised, sent and read back.

The all-to-all kernels move bytes; what the bytes mean is the sender's and
receiver's business.  Each format here says how many bytes a row and its block
scales take, how fp32 values become those bytes and how they turn back, so the
oracle compares a combine with the exact values the sources sent.  The
quantisers are this kit's own torch code (no GPU kernel): MXFP8 and NVFP4
payloads run through the NVLink kernels on Hopper too, where vLLM would not
quantise to them.

* ``fp8``: e4m3 values with an fp32 scale per 128 columns (vLLM's block fp8).
* ``mxfp8``: e4m3 values with a power-of-two (ue8m0 byte) scale per 32 columns.
* ``nvfp4``: e2m1 values, two per byte (even column in the low nibble), with an
  e4m3 scale per 16 columns; the per-tensor global scale is 1, ties round to the
  smaller magnitude (the oracle reads back its own bytes, so any rule is exact).
* ``scale_alignment`` pads the scale row as if the hidden size were a multiple
  of it (vLLM's ``mx_alignment``): gpt-oss' hidden 2880 has 90 MXFP8 scale
  bytes, not a multiple of 16 (which the two-sided kernels refuse), and is sent
  as 96.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
# bytes: FlashInfer's two-sided alltoallv refuses other rows ("input.size(1) must be aligned
# to 16 bytes"); the one-sided MoeAlltoAll moved 90-byte scale rows exactly (unpadded
# MXFP8 scale rows, 1x H200).  Cases are checked against the
# stricter rule so that every backend can run them.
ROW_ALIGN = 16
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # magnitudes of codes 0..7


@dataclass(frozen=True)
class PayloadFormat:
    """One way of putting a token row on the wire."""

    name: str
    value_dtype: torch.dtype  # the hidden-state tensor's dtype in ``Tokens``
    group: int = 0  # columns per block scale (0: unquantised)
    scale_dtype: torch.dtype | None = None
    scale_bytes: int = 0  # per block scale
    values_per_byte: float = 1.0  # 2 for packed fp4; below 1 for wider types
    # fp32 [n, hidden] -> (values, scales [n, groups])
    quantize: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    # (values, scales) -> fp32, any leading shape
    dequantize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def quantised(self) -> bool:
        return self.group > 0

    def x_bytes(self, hidden: int) -> int:
        return int(hidden / self.values_per_byte)

    def scale_columns(self, hidden: int, alignment: int) -> int:
        """Block scales per row of ``hidden`` values, the row padded to a multiple of
        ``alignment`` columns (0: unpadded); unquantised formats have none."""
        if not self.quantised:
            return 0
        padded = -(-hidden // alignment) * alignment if alignment else hidden
        return padded // self.group

    def scale_row_bytes(self, hidden: int, alignment: int) -> int:
        return self.scale_columns(hidden, alignment) * self.scale_bytes


def _groups(x: torch.Tensor, group: int) -> torch.Tensor:
    return x.float().unflatten(-1, (-1, group))


def _pad_columns(scale: torch.Tensor, columns: int, fill) -> torch.Tensor:
    """``scale`` with ``fill`` columns appended up to ``columns`` (never fewer than it has)."""
    return torch.nn.functional.pad(scale, (0, columns - scale.shape[-1]), value=fill)


def _quantize_fp8(x: torch.Tensor, group: int = 128):
    groups = _groups(x, group)
    scale = (groups.abs().amax(dim=-1) / FP8_MAX).clamp(min=1e-12)
    return (groups / scale.unsqueeze(-1)).flatten(-2).to(torch.float8_e4m3fn), scale


def _dequantize_block(x: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    """Values times their block's scale.  Shapes only, no data-dependent sizes: it runs
    inside a CUDA graph capture."""
    groups = _groups(x, group)
    return (groups * scale.float()[..., : groups.shape[-2]].unsqueeze(-1)).flatten(-2)


def _quantize_mxfp8(x: torch.Tensor):
    groups = _groups(x, 32)
    amax = groups.abs().amax(dim=-1)
    # the smallest power of two 2^e with amax / 2^e <= 448, at least ue8m0's smallest 2^-127
    # (which all-zero blocks get: log2(0) is -inf); no fp32 amax needs more than 2^119
    exponent = torch.ceil(torch.log2(amax / FP8_MAX)).clamp(min=-127)
    values = (groups / torch.exp2(exponent).unsqueeze(-1)).flatten(-2)
    return values.to(torch.float8_e4m3fn), (exponent + 127).to(torch.uint8)


def _dequantize_mxfp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    groups = _groups(x, 32)
    power = torch.exp2(scale[..., : groups.shape[-2]].float() - 127.0)
    return (groups * power.unsqueeze(-1)).flatten(-2)


def _e2m1_table(device) -> torch.Tensor:
    """The values of codes 0..15 (bit 3 the sign, bits 0-2 a magnitude of ``E2M1_VALUES``)
    computed on ``device``: no host copy, so dequantising runs inside a CUDA graph capture
    (a captured copy of a host list reads freed memory on replay)."""
    code = torch.arange(16, device=device)
    exponent, mantissa = ((code >> 1) & 3).float(), (code & 1).float()
    magnitude = torch.where(
        exponent == 0, 0.5 * mantissa, torch.exp2(exponent - 1) * (1 + 0.5 * mantissa)
    )
    return torch.where(code >> 3 == 1, -magnitude, magnitude)


def _quantize_nvfp4(x: torch.Tensor):
    groups = _groups(x, 16)
    scale = (groups.abs().amax(dim=-1) / 6.0).to(torch.float8_e4m3fn)
    scaled = groups / scale.float().unsqueeze(-1)
    # the nearest code; a tie goes to the lower code: the smaller magnitude, and +0 over -0.
    # A block under e4m3's smallest scale has scale 0: its values become NaN (0/0) or +-inf,
    # whose distances to the codes are all NaN or all inf, and argmin answers code 0
    codes = (scaled.unsqueeze(-1) - _e2m1_table(x.device)).abs().argmin(dim=-1).flatten(-2)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed.to(torch.uint8), scale


def _dequantize_nvfp4(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    codes = torch.stack([x & 0xF, x >> 4], dim=-1).flatten(-2).long()
    return _dequantize_block(_e2m1_table(x.device)[codes], scale, 16)


FORMATS: dict[str, PayloadFormat] = {
    f.name: f
    for f in (
        PayloadFormat("bf16", torch.bfloat16, values_per_byte=0.5),
        PayloadFormat("fp16", torch.float16, values_per_byte=0.5),
        PayloadFormat("fp32", torch.float32, values_per_byte=0.25),
        PayloadFormat(
            "fp8",
            torch.float8_e4m3fn,
            128,
            torch.float32,
            4,
            1.0,
            _quantize_fp8,
            lambda x, s: _dequantize_block(x, s, 128),
        ),
        PayloadFormat(
            "mxfp8",
            torch.float8_e4m3fn,
            32,
            torch.uint8,
            1,
            1.0,
            _quantize_mxfp8,
            _dequantize_mxfp8,
        ),
        PayloadFormat(
            "nvfp4",
            torch.uint8,
            16,
            torch.float8_e4m3fn,
            1,
            2.0,
            _quantize_nvfp4,
            _dequantize_nvfp4,
        ),
    )
}
SCALE_FILL = {"fp8": 1.0, "mxfp8": 127, "nvfp4": 1.0}  # padding columns: scale 1


def quantize(name: str, x: torch.Tensor, alignment: int):
    """(values, scales or None) of fp32 ``x`` (any leading shape, rows of hidden values) in
    format ``name``, each scale row padded to ``alignment`` columns' worth (0: unpadded)."""
    fmt = FORMATS[name]
    if not fmt.quantised:
        return x.to(fmt.value_dtype), None
    assert fmt.quantize is not None, f"{name}: a quantised format without quantize"
    values, scale = fmt.quantize(x)
    columns = fmt.scale_columns(x.shape[-1], alignment)
    return values, _pad_columns(scale, columns, SCALE_FILL[name])


def format_of(x: torch.Tensor, scale: torch.Tensor | None) -> PayloadFormat:
    """The format a (values, scales) pair is in, told by their dtypes."""
    if scale is None:
        for fmt in FORMATS.values():
            if not fmt.quantised and fmt.value_dtype == x.dtype:
                return fmt
        raise ValueError(f"values of dtype {x.dtype} without scales: no such format")
    for fmt in FORMATS.values():
        if fmt.quantised and (fmt.value_dtype, fmt.scale_dtype) == (x.dtype, scale.dtype):
            return fmt
    raise ValueError(f"values {x.dtype} with scales {scale.dtype}: no such format")


def dequantize(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """fp32 values of ``x`` (any leading shape), read as the format its dtypes say."""
    fmt = format_of(x, scale)
    if scale is None:
        return x.float()
    assert fmt.dequantize is not None, f"{fmt.name}: a quantised format without dequantize"
    return fmt.dequantize(x, scale)


@overload
def to_wire(t: torch.Tensor) -> torch.Tensor: ...
@overload
def to_wire(t: None) -> None: ...
def to_wire(t: torch.Tensor | None) -> torch.Tensor | None:
    """A tensor as the kernels move it: one-byte float types as raw bytes."""
    if t is not None and t.dtype.is_floating_point and t.dtype.itemsize == 1:
        return t.view(torch.uint8)
    return t


def from_wire(name: str, x: torch.Tensor, scale: torch.Tensor | None):
    """Received wire tensors back in format ``name``'s dtypes."""
    fmt = FORMATS[name]
    values = x.view(fmt.value_dtype)
    return values, None if scale is None else scale.view(fmt.scale_dtype or scale.dtype)


def alignment_problem(name: str, hidden: int, alignment: int) -> str:
    """ "" when the kernels can move ``name`` rows of ``hidden`` values, else why not."""
    fmt = FORMATS[name]
    if fmt.quantised and hidden % fmt.group:
        return f"hidden={hidden}: {name} needs a multiple of its {fmt.group}-column blocks"
    if fmt.quantised and alignment and alignment % fmt.group:
        return f"scale_alignment={alignment}: expected a multiple of {fmt.group}"
    for what, size in (
        ("value", fmt.x_bytes(hidden)),
        ("scale", fmt.scale_row_bytes(hidden, alignment)),
    ):
        if fmt.quantised and size % ROW_ALIGN:
            return (
                f"hidden={hidden}: {name} {what} rows of {size} bytes are not a multiple "
                f"of {ROW_ALIGN}, which FlashInfer's two-sided alltoallv needs; pad the "
                f"scales (scale_alignment) as vLLM does"
            )
    return ""
