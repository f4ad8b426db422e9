"""The payload formats' quantisers against hand-computed bytes and error bounds.

The kernel tests send these bytes through FlashInfer's all-to-alls and compare
the combine with the oracle of the dequantised values; a quantiser that
misreads its own bytes would cancel out there, so here each format meets
values worked out by hand.
"""

from __future__ import annotations

import pytest
import torch

from vllm_ep_kit.reference.formats import (
    FORMATS,
    dequantize,
    format_of,
    from_wire,
    quantize,
    to_wire,
)
from vllm_ep_kit.reference.moe import RoutingCase, source_tokens

QUANTISED = sorted(name for name, fmt in FORMATS.items() if fmt.quantised)


def test_nvfp4_bytes_by_hand():
    # one block of 16 with amax 6: scale 1.0; codes 6 -> 7, -3 -> 8 | 5, 0.5 -> 1, 1.5 -> 3
    row = torch.tensor([[6.0, -3.0, 0.5, 1.5] + [0.0] * 12])
    packed, scale = quantize("nvfp4", row)
    assert packed.dtype == torch.uint8 and scale.dtype == torch.float8_e4m3fn
    assert packed[0, :2].tolist() == [7 | (13 << 4), 1 | (3 << 4)]  # even column low nibble
    assert scale.float().tolist() == [[1.0]]
    assert torch.equal(dequantize(packed, scale), row)


def test_nvfp4_rounds_to_the_nearest_e2m1_value():
    # amax 12 -> scale 2: 12/2 = 6; 2.2/2 = 1.1 -> 1; -7/2 = -3.5, a tie between 3 and 4
    # that goes to the smaller magnitude (the oracle reads its own bytes: any rule is exact)
    row = torch.tensor([[12.0, 2.2, -7.0] + [0.0] * 13])
    packed, scale = quantize("nvfp4", row)
    assert dequantize(packed, scale)[0, :3].tolist() == [12.0, 2.0, -6.0]


def test_mxfp8_scale_is_a_power_of_two_byte():
    # amax 1792 = 448 * 4: exponent 2, stored as 127 + 2; the values / 4 are exact in e4m3
    row = torch.tensor([[1792.0, -1.0, 8.0] + [0.5] * 29])
    values, scale = quantize("mxfp8", row)
    assert scale.dtype == torch.uint8 and scale.tolist() == [[129]]
    assert values.float()[0, :3].tolist() == [448.0, -0.25, 2.0]
    assert torch.equal(dequantize(values, scale), row)


def test_fp8_block_scale_by_hand():
    row = torch.cat([torch.full((1, 128), 896.0), torch.full((1, 128), -0.5)], dim=1)
    values, scale = quantize("fp8", row)
    assert scale.tolist() == [[2.0, pytest.approx(0.5 / 448.0, rel=1e-6)]]
    assert torch.equal(dequantize(values, scale), row)


@pytest.mark.parametrize("name", QUANTISED)
def test_quantisation_error_is_bounded_per_block(name):
    fmt = FORMATS[name]
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(5)) * 3
    values, scale = quantize(name, x)
    err = (dequantize(values, scale) - x).abs().unflatten(1, (-1, fmt.group))
    amax = x.abs().unflatten(1, (-1, fmt.group)).amax(dim=-1, keepdim=True)
    # e4m3 keeps 3 mantissa bits (half-ulp 1/16 of the leading power of two); e2m1's
    # widest step is 2 (between 4 and 6) on a block scaled to amax 6, rounded to e4m3
    bound = {"fp8": 1 / 16, "mxfp8": 1 / 16, "nvfp4": 1 / 6 + 1 / 16}[name]
    assert bool((err <= amax * bound + 1e-6).all()), float((err / amax).max())


def test_padded_scale_rows_for_gpt_oss_hidden():
    # 2880 / 32 = 90 scale bytes: not a multiple of 16, so vLLM pads K to 3072 (96 bytes)
    with pytest.raises(ValueError, match="pad the scales"):
        RoutingCase(tokens=(2,), hidden=2880, dtype="mxfp8")
    case = RoutingCase(tokens=(2,), hidden=2880, dtype="mxfp8", scale_alignment=256)
    assert (case.x_bytes_per_token, case.scale_bytes_per_token) == (2880, 96)
    tokens = source_tokens(case, 0)
    assert tokens.x_scale.shape == (2, 96)
    assert tokens.x_scale[:, 90:].eq(127).all()  # padding columns: scale 2^0
    assert tokens.values().shape == (2, 2880)
    nvfp4 = RoutingCase(tokens=(2,), hidden=2880, dtype="nvfp4", scale_alignment=256)
    assert (nvfp4.x_bytes_per_token, nvfp4.scale_bytes_per_token) == (1440, 192)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_wire_round_trip_keeps_every_byte(name):
    hidden = 512 if FORMATS[name].quantised else 64
    tokens = source_tokens(RoutingCase(tokens=(3,), hidden=hidden, dtype=name), 0)
    x, scale = to_wire(tokens.x), to_wire(tokens.x_scale)
    assert x.dtype.itemsize > 1 or x.dtype == torch.uint8  # one-byte floats go as bytes
    back, back_scale = from_wire(name, x, scale)
    assert format_of(back, back_scale) is FORMATS[name]
    assert torch.equal(dequantize(back, back_scale), tokens.values())


@pytest.mark.parametrize(
    "hidden, alignment, error",
    [
        (1000, 0, "multiple of its 32-column blocks"),
        (1024, 48, "scale_alignment=48"),
        (2880, 0, "not a multiple of 16"),
    ],
)
def test_cases_refuse_rows_the_kernels_cannot_move(hidden, alignment, error):
    with pytest.raises(ValueError, match=error):
        RoutingCase(tokens=(1,), hidden=hidden, dtype="mxfp8", scale_alignment=alignment)


def test_unknown_pairs_are_refused():
    with pytest.raises(ValueError, match="no such format"):
        format_of(torch.zeros(1, dtype=torch.int32), None)
    with pytest.raises(ValueError, match="no such format"):
        format_of(torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1))
