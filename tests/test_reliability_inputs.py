"""Model inputs: every tensor the model cannot handle gets a clear error; layouts it can handle give the same result.

Complements tests/test_model.py (wrong band count of modality 1, H x W mismatch, wrong rank, integer
input, CLIP patch size), which these tests do not repeat.
"""
import pytest
import torch

from conftest import build, inputs

NOCLIP, CLIP = "m3amba_tiny_noclip", "m3amba_tiny"


@pytest.fixture(scope="module")
def model():
    return build(NOCLIP).eval()


def test_wrong_band_count_of_modality_two_suggests_in_chans(model):
    x1, x2 = inputs(model)
    with pytest.raises(ValueError, match=r"modality 2 has 3 bands .* in_chans=\(5, 3\)"):
        model(x1, torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("bad", [
    lambda x: x[None],                 # 5-D
    lambda x: x[0, 0],                 # 2-D
    lambda x: x.numpy(),               # not a tensor
])
def test_wrong_rank_or_type(model, bad):
    x1, x2 = inputs(model)
    with pytest.raises(ValueError, match=r"modality 1 must be a \(B, C, H, W\) tensor"):
        model(bad(x1), x2)


def test_batch_size_mismatch_and_empty_image(model):
    x1, x2 = inputs(model)
    with pytest.raises(ValueError, match="share batch size"):
        model(x1, x2[:1])
    with pytest.raises(ValueError, match="0x8 pixels; H and W must be at least 1"):
        model(x1[:, :, :0], x2[:, :, :0])


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_and_boolean_inputs_say_how_to_convert(model, dtype):
    x1, x2 = inputs(model)
    with pytest.raises(TypeError, match=r"floating-point tensor, got torch\.\w+; convert with x\.float\(\)"):
        model(x1.to(dtype), x2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_float_inputs_of_another_dtype_than_the_weights_say_how_to_convert(model, dtype):
    x1, x2 = inputs(model)
    with pytest.raises(TypeError, match=rf"modality 1 is {dtype} but the model's weights are torch.float32; "
                                        rf"convert the input with x.to\(torch.float32\) or the model"):
        model(x1.to(dtype), x2.to(dtype))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_float64_and_half_models_run_on_cpu(dtype, tol):
    base = build(NOCLIP).eval()
    x1, x2 = inputs(base)
    ref = base(x1, x2)
    other = build(NOCLIP).eval()
    other.load_state_dict(base.state_dict())
    other.to(dtype)
    with torch.no_grad():
        out = other(x1.to(dtype), x2.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref.detach(), atol=tol, rtol=tol)


def test_cpu_autocast_accepts_float32_inputs(model):
    x1, x2 = inputs(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x1, x2)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()


def test_non_contiguous_and_channels_last_inputs_give_the_same_result(model):
    x1, x2 = inputs(model)
    with torch.no_grad():
        ref = model(x1, x2)
        wide = torch.randn(2, 10, 8, 8)
        wide[:, ::2] = x1
        views = {
            "transposed view": (x1.transpose(2, 3).contiguous().transpose(2, 3), x2.transpose(2, 3).contiguous().transpose(2, 3)),
            "strided channel view": (wide[:, ::2], x2),
            "channels_last": (x1.contiguous(memory_format=torch.channels_last),
                              x2.contiguous(memory_format=torch.channels_last)),
            "expanded batch": (x1[:1].expand(2, -1, -1, -1), x2[:1].expand(2, -1, -1, -1)),
        }
        for name, (a, b) in views.items():
            assert not (a.is_contiguous() and b.is_contiguous()), name
            want = ref if name != "expanded batch" else model(x1[:1].repeat(2, 1, 1, 1), x2[:1].repeat(2, 1, 1, 1))
            torch.testing.assert_close(model(a, b), want, atol=1e-5, rtol=1e-5, msg=name)


def test_batch_of_zero_gives_an_empty_output_without_clip_and_a_clear_error_with_it():
    model = build(NOCLIP).eval()
    x1, x2 = inputs(model, batch=2)
    with torch.no_grad():
        out = model(x1[:0], x2[:0])
        everything = model.forward_all(x1[:0], x2[:0])
    assert out.shape == (0, 4, 8, 8)
    assert all(t.shape == (0, 4, 8, 8) for t in everything[:3])
    clip = build(CLIP).eval()
    x1, x2 = inputs(clip, batch=2)
    with pytest.raises(ValueError, match=r"empty batch \(B=0\) cannot go through the CLIP tower"):
        clip(x1[:0], x2[:0])


def test_nan_or_inf_input_is_refused_with_counts_per_band(model):
    x1, x2 = inputs(model)
    x1 = x1.clone()
    x1[0, 1, 3, 3] = float("nan")
    x1[1, 1, 0, 0] = float("inf")
    x1[1, 4, 2, 2] = float("-inf")
    with pytest.raises(ValueError, match=r"modality 1 holds 3 NaN/Inf values \(band 1: 2, band 4: 1\).*"
                                         r"spread through the selective scan.*nonfinite='mask' or 'fill'"):
        model(x1, x2)
    x2 = x2.clone()
    x2[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="modality 2 holds 1 NaN/Inf"):
        model(inputs(model)[0], x2)


def test_why_non_finite_inputs_are_refused_one_nan_pixel_spreads_over_the_map():
    model = build(NOCLIP).eval()
    model.check_finite_inputs = False  # the opt-out, to show what the check prevents
    x1, x2 = inputs(model)
    x1 = x1.clone()
    x1[0, 0, 4, 4] = float("nan")
    with torch.no_grad():
        out = model(x1, x2)
    assert torch.isnan(out[0]).float().mean() > 0.9   # one pixel poisoned (nearly) the whole map
    assert torch.isfinite(out[1]).all()               # the other sample of the batch is unaffected


def test_input_on_another_device_than_the_model(model):
    x1, x2 = inputs(model)
    with pytest.raises(ValueError, match=r"modality 1 is on meta but the model is on cpu; move the input"):
        model(x1.to("meta"), x2.to("meta"))
