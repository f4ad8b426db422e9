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
    E2M1_VALUES,
    FORMATS,
    _e2m1_table,
    alignment_problem,
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
    packed, scale = quantize("nvfp4", row, 0)
    assert packed.dtype == torch.uint8 and scale.dtype == torch.float8_e4m3fn
    assert packed[0, :2].tolist() == [7 | (13 << 4), 1 | (3 << 4)]  # even column low nibble
    assert scale.float().tolist() == [[1.0]]
    torch.testing.assert_close(dequantize(packed, scale), row, rtol=0, atol=0)


def test_nvfp4_rounds_to_the_nearest_e2m1_value():
    # amax 12 -> scale 2: 12/2 = 6; 2.2/2 = 1.1 -> 1; -7/2 = -3.5, a tie between 3 and 4
    # that goes to the smaller magnitude (the oracle reads its own bytes: any rule is exact)
    row = torch.tensor([[12.0, 2.2, -7.0] + [0.0] * 13])
    packed, scale = quantize("nvfp4", row, 0)
    assert dequantize(packed, scale)[0, :3].tolist() == [12.0, 2.0, -6.0]


def test_mxfp8_scale_is_a_power_of_two_byte():
    # amax 1792 = 448 * 4: exponent 2, stored as 127 + 2; the values / 4 are exact in e4m3
    row = torch.tensor([[1792.0, -1.0, 8.0] + [0.5] * 29])
    values, scale = quantize("mxfp8", row, 0)
    assert scale.dtype == torch.uint8 and scale.tolist() == [[129]]
    assert values.float()[0, :3].tolist() == [448.0, -0.25, 2.0]
    torch.testing.assert_close(dequantize(values, scale), row, rtol=0, atol=0)


def test_fp8_block_scale_by_hand():
    row = torch.cat([torch.full((1, 128), 896.0), torch.full((1, 128), -0.5)], dim=1)
    values, scale = quantize("fp8", row, 0)
    assert scale.tolist() == [[2.0, pytest.approx(0.5 / 448.0, rel=1e-6)]]
    torch.testing.assert_close(dequantize(values, scale), row, rtol=0, atol=0)


@pytest.mark.parametrize("name", QUANTISED)
def test_quantisation_error_is_bounded_per_block(name):
    fmt = FORMATS[name]
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(5)) * 3
    values, scale = quantize(name, x, 0)
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
    torch.testing.assert_close(dequantize(back, back_scale), tokens.values(), rtol=0, atol=0)


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


def test_the_e2m1_table_is_the_sixteen_signed_codes():
    assert _e2m1_table("cpu").tolist() == list(E2M1_VALUES) + [-v for v in E2M1_VALUES]


def test_nvfp4_sends_each_code_and_reads_it_back():
    # a block scaled to amax 6 (scale 1): every signed code once, then zeros
    values = list(E2M1_VALUES[1:]) + [-v for v in E2M1_VALUES[1:]]
    row = torch.tensor([values + [0.0, 0.0]])
    packed, scale = quantize("nvfp4", row, 0)
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)[0].tolist()
    assert codes == [*range(1, 8), *range(9, 16), 0, 0]
    torch.testing.assert_close(dequantize(packed, scale), row, rtol=0, atol=0)


def test_nvfp4_zero_has_one_code_and_a_block_too_small_for_its_scale_sends_zeros():
    # -0.2 on a scale-1 block rounds to zero: code 0, never 8 (-0); a block whose amax / 6
    # is under e4m3's smallest step (2^-9) gets scale 0 and sends code 0 throughout
    row = torch.tensor([[6.0, -0.2, 0.2] + [0.0] * 13 + [1e-3, -1e-3] + [0.0] * 14])
    packed, scale = quantize("nvfp4", row, 0)
    assert scale.float().tolist() == [[1.0, 0.0]]
    assert packed[0, 0].item() == 7 and packed[0, 1:].eq(0).all()
    assert dequantize(packed, scale)[0].tolist() == [6.0] + [0.0] * 31


def test_mxfp8_all_zero_block_gets_the_smallest_scale_byte():
    # 2^-127 (byte 0): no block is read with a larger scale than its values need
    values, scale = quantize("mxfp8", torch.zeros(1, 64), 0)
    assert scale.tolist() == [[0, 0]] and values.float().eq(0).all()


@pytest.mark.parametrize("name", QUANTISED)
@pytest.mark.parametrize("alignment", [0, 256])
def test_quantising_reads_any_leading_shape_as_rows(name, alignment):
    x = torch.randn(2, 3, 512, generator=torch.Generator().manual_seed(3))
    values, scale = quantize(name, x, alignment)
    rows = [quantize(name, x[i], alignment) for i in range(2)]
    torch.testing.assert_close(
        values.float(), torch.stack([v for v, _ in rows]).float(), rtol=0, atol=0
    )
    torch.testing.assert_close(
        scale.float(), torch.stack([s for _, s in rows]).float(), rtol=0, atol=0
    )
    assert scale.shape == (2, 3, FORMATS[name].scale_columns(512, alignment))
    torch.testing.assert_close(
        dequantize(values, scale), torch.stack([dequantize(*r) for r in rows]), rtol=0, atol=0
    )


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_quantising_runs_where_its_input_is(name):
    """No table or padding on the host (see the oracle's test of the same)."""
    x = torch.randn(3, 512, device="meta")
    values, scale = quantize(name, x, 1024)
    assert values.device.type == "meta" and values.dtype == FORMATS[name].value_dtype
    if FORMATS[name].quantised:
        assert scale.device.type == "meta" and scale.shape[-1] == 1024 // FORMATS[name].group
    assert dequantize(values, scale).device.type == "meta"


def test_unquantised_formats_have_no_scale_columns():
    assert [FORMATS[name].scale_columns(64, 0) for name in ("bf16", "fp16", "fp32")] == [0, 0, 0]
    assert FORMATS["bf16"].scale_row_bytes(64, 32) == 0


@pytest.mark.parametrize(
    ("name", "hidden", "alignment", "problem"),
    [
        ("mxfp8", 1024, 0, ""),
        ("mxfp8", 2880, 256, ""),
        ("bf16", 100, 0, ""),
        (
            "mxfp8",
            2880,
            0,
            "hidden=2880: mxfp8 scale rows of 90 bytes are not a multiple of 16, which "
            "FlashInfer's two-sided alltoallv needs; pad the scales (scale_alignment) as vLLM does",
        ),
        ("nvfp4", 32 * 3, 0, "hidden=96: nvfp4 scale rows of 6 bytes are not a multiple of 16"),
        ("nvfp4", 16 * 3, 0, "hidden=48: nvfp4 value rows of 24 bytes are not a multiple of 16"),
    ],
)
def test_alignment_problems_name_the_rows_that_do_not_fit(name, hidden, alignment, problem):
    got = alignment_problem(name, hidden, alignment)
    assert got.startswith(problem) and bool(got) == bool(problem), got
