"""Shapes, gradients and the timm-style API of every registered variant."""
import pytest
import torch

import m3amba
from conftest import build, inputs

ALL_VARIANTS = m3amba.list_models("m3amba*")


def test_every_variant_is_registered():
    assert set(ALL_VARIANTS) >= {
        "m3amba_base", "m3amba_small", "m3amba_tiny",
        "m3amba_base_noclip", "m3amba_small_noclip", "m3amba_tiny_noclip",
    }


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_variant_shapes_and_every_trainable_parameter_gets_a_gradient(name):
    model = build(name, in_chans=(5, 2), num_classes=4)
    x1, x2 = inputs(model)
    out = model.forward_all(x1, x2)
    for logits in out[:3]:
        assert logits.shape == (2, 4, model.img_size, model.img_size)
        assert torch.isfinite(logits).all()
    (out.logits_m1.square().mean() + out.logits_m2.square().mean() + out.logits_fused.square().mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    # an unused parameter would force DDP into find_unused_parameters=True
    assert no_grad == []


def test_forward_equals_fused_head_of_forward_all():
    model = build("m3amba_tiny").eval()
    x1, x2 = inputs(model)
    torch.testing.assert_close(model(x1, x2), model.forward_all(x1, x2).logits_fused)


def test_variant_widths_follow_their_configs():
    from m3amba.models import get_model_config
    base = get_model_config("m3amba_base")["model_args"]
    assert (base["embed_dim"], base["depth"], base["d_state"], base["ssm_ratio"], base["mlp_ratio"]) == (384, 9, 16, 2.0, 4.0)
    assert base["clip_model"] == "ViT-B-32-quickgelu"
    model = m3amba.create_model("m3amba_small_noclip", in_chans=(3, 1), num_classes=2)
    assert model.embed_dim == get_model_config("m3amba_small_noclip")["model_args"]["embed_dim"]
    assert len(model.layers) == get_model_config("m3amba_small_noclip")["model_args"]["depth"]
    ss2d = model.layers[0].fused.op
    assert ss2d.d_inner == 2 * model.embed_dim and ss2d.dt_rank == -(-model.embed_dim // 16)


def test_feature_api_is_consistent_with_forward():
    model = build("m3amba_tiny_noclip", depth=3).eval()
    x1, x2 = inputs(model)
    feats = model.forward_features(x1, x2)
    assert all(f.shape == (2, model.img_size, model.img_size, model.num_features) for f in feats)
    torch.testing.assert_close(model.forward_head(feats), model(x1, x2))
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(pooled, model.head.norm(feats.fused).mean(dim=(1, 2)))

    final, inter = model.forward_intermediates(x1, x2)
    assert len(inter) == 3
    for a, b in zip(final, feats):
        torch.testing.assert_close(a, b)
    for a, b in zip(inter[-1], feats):
        torch.testing.assert_close(a, b)
    only = model.forward_intermediates(x1, x2, indices=[0], stop_early=True, intermediates_only=True, norm=True)
    assert len(only) == 1
    torch.testing.assert_close(only[0].m1, model.head_m1.norm(inter[0].m1))
    last2 = model.forward_intermediates(x1, x2, indices=2, intermediates_only=True)
    torch.testing.assert_close(last2[0].fused, inter[1].fused)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x1, x2, indices=[5])


def test_reset_classifier_and_feature_extractor():
    model = build("m3amba_tiny_noclip", num_classes=4)
    model.reset_classifier(7)
    x1, x2 = inputs(model)
    assert model.num_classes == 7 and model(x1, x2).shape[1] == 7
    assert model.get_classifier().out_channels == 7
    extractor = build("m3amba_tiny_noclip", num_classes=0)
    assert extractor(x1, x2).shape == (2, extractor.num_features, extractor.img_size, extractor.img_size)


def test_no_weight_decay_names_state_space_parameters():
    model = build("m3amba_tiny")
    names = model.no_weight_decay()
    assert names and all(n.rsplit(".", 1)[-1] in {"A_logs", "Ds", "A_logs_fused"} for n in names)
    assert "layers.0.cross1.op.A_logs_fused" in names


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build("m3amba_tiny_noclip", depth=2, drop_path_rate=0.0)
    x1, x2 = inputs(model)
    def loss():
        return sum(t.sum() for t in model.forward_all(x1, x2)[:3])

    loss().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    loss().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], msg=n)


def test_scan_backend_choice_does_not_change_outputs():
    model = build("m3amba_tiny_noclip").double().eval()
    x1, x2 = inputs(model, dtype=torch.float64)
    model.set_scan_backend("reference")
    ref = model(x1, x2)
    model.set_scan_backend("torch")
    torch.testing.assert_close(model(x1, x2), ref, rtol=1e-10, atol=1e-10)


def test_clip_embeddings_can_be_precomputed():
    model = build("m3amba_tiny").eval()
    x1, x2 = inputs(model)
    e1, e2 = model.encode_clip(x1, x2)
    assert e1.shape == (2, model.clip_encoder.embed_dim)
    torch.testing.assert_close(model(x1, x2, clip_embeds=(e1, e2)), model(x1, x2))
    # the prediction really depends on both CLIP embeddings
    e1.requires_grad_(True)
    e2.requires_grad_(True)
    model(x1, x2, clip_embeds=(e1, e2)).sum().backward()
    assert e1.grad.abs().sum() > 0 and e2.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="clip_embeds"):
        model(x1, x2, clip_embeds=(e1[:, :3], e2))


def test_clip_embed_trainable_controls_the_linear_embedding():
    frozen = build("m3amba_tiny")
    assert not any(p.requires_grad for a in frozen.fusion_embeds for p in a.to_rgb.parameters())
    assert not any(p.requires_grad for p in frozen.clip_encoder.parameters())
    trainable = build("m3amba_tiny", clip_embed_trainable=True)
    x1, x2 = inputs(trainable)
    trainable(x1, x2).sum().backward()
    assert trainable.fusion_embeds[0].to_rgb.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in trainable.clip_encoder.parameters())


def test_clip_tower_stays_frozen_in_eval_and_out_of_the_state_dict():
    model = build("m3amba_tiny")
    model.train()
    assert not model.clip_encoder.visual.training
    state = model.state_dict()
    assert not any(k.startswith("clip_encoder.") for k in state)
    other = build("m3amba_tiny")
    result = other.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in other.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_no_clip_ablation_works_at_any_size():
    model = build("m3amba_tiny_noclip")
    x1 = torch.randn(1, 5, 12, 20)
    x2 = torch.randn(1, 2, 12, 20)
    assert model(x1, x2).shape == (1, 4, 12, 20)


@pytest.mark.parametrize("bad, match", [
    (lambda x1, x2: (x1[:, :3], x2), "modality 1 has 3 bands"),
    (lambda x1, x2: (x1, x2[:, :, :4]), "share batch size and H x W"),
    (lambda x1, x2: (x1[0], x2), r"\(B, C, H, W\)"),
])
def test_bad_inputs_get_clear_errors(bad, match):
    model = build("m3amba_tiny")
    x1, x2 = inputs(model)
    with pytest.raises(ValueError, match=match):
        model(*bad(x1, x2))


def test_integer_input_and_wrong_size_for_clip_model():
    model = build("m3amba_tiny")
    x1, x2 = inputs(model)
    with pytest.raises(TypeError, match="floating-point"):
        model(x1.to(torch.int32), x2)
    with pytest.raises(ValueError, match="8x8 patches"):
        model(torch.randn(1, 5, 16, 16), torch.randn(1, 2, 16, 16))


def test_in_chans_must_be_a_pair():
    with pytest.raises(ValueError, match="two modalities"):
        m3amba.create_model("m3amba_tiny_noclip", in_chans=144)


def test_features_only_returns_the_chosen_layers_maps():
    full = build("m3amba_tiny_noclip", depth=3).eval()
    x1, x2 = inputs(full)
    _, inter = full.forward_intermediates(x1, x2)
    extractor = build("m3amba_tiny_noclip", depth=3, features_only=True, out_indices=(0, -2)).eval()
    own = extractor.model.state_dict()
    extractor.model.load_state_dict({k: v for k, v in full.state_dict().items() if k in own})
    feats = extractor(x1, x2)
    assert extractor.out_indices == (0, 1) and len(extractor.model.layers) == 2
    assert [f["module"] for f in extractor.feature_info] == ["layers.0", "layers.1"]
    for got, want in zip(feats, inter[:2]):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="features_only"):
        build("m3amba_tiny_noclip", out_indices=(0,))
