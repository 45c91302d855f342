"""Token maps, pooled token representations and vision transformer grids, against hand
computation, autograd oracles, pytorch-grad-cam's ViT reshape, and real tiny transformers."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torchvision
import transformers as tf
from hypothesis import given
from hypothesis import strategies as st
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

from captum_unicam.attr._layout import (
    check_mask,
    choose_layout,
    forward_mask_kwargs,
    grid_side,
    mask_from_args,
    pool_tokens,
    token_gradcam,
    vit_grid,
)
from captum_unicam.attr.unicam import UniCAM
from captum_unicam.errors import InputError

# -- token maps: hand computation --------------------------------------------


def _hand_map(a, g, mask, relu=True):
    """Explicit loops, float64: the rule as written in the docstring."""
    n, t, c = a.shape
    out = torch.zeros(n, t, dtype=torch.float64)
    for i in range(n):
        valid = [j for j in range(t) if mask is None or mask[i, j]]
        for j in valid:
            total = 0.0
            for k in range(c):
                alpha = sum(float(g[i, u, k]) for u in valid) / len(valid)
                total += alpha * float(a[i, j, k])
            out[i, j] = max(total, 0.0) if relu else total
    return out


def test_token_gradcam_equals_hand_computation():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    for relu in (True, False):
        got = token_gradcam(a, g, mask, relu_attributions=relu)
        assert got.shape == (3, 5)
        torch.testing.assert_close(got, _hand_map(a, g, mask, relu), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(token_gradcam(a, g), _hand_map(a, g, None), rtol=1e-12, atol=1e-12)
    # padding is exactly 0, even without the ReLU and with huge padding activations
    a_pad = a.clone()
    a_pad[1, 3:] = 1e6
    got = token_gradcam(a_pad, g, mask, relu_attributions=False)
    assert (got[1, 3:] == 0).all() and (got[2, 1:] == 0).all()
    torch.testing.assert_close(got[1, :3], _hand_map(a, g, mask, False)[1, :3])


@given(
    n=st.integers(1, 3),
    t=st.integers(1, 6),
    c=st.integers(1, 4),
    extra=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_padding_further_leaves_token_maps_and_pooling_unchanged(n, t, c, extra, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, t, c, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = (torch.arange(t) < lengths[:, None]).long()
    w = torch.randn(c, generator=gen, dtype=torch.float64)

    def score(h, m):  # a score read from the pooled representation
        return (pool_tokens(h, m) @ w).tanh().sum()

    def maps(h, m):
        h = h.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(score(h, m), h)
        return token_gradcam(h, grad, m), pool_tokens(h, m).detach()

    m1, p1 = maps(a, mask)
    junk = torch.randn(n, extra, c, generator=gen, dtype=torch.float64) * 50
    a2 = torch.cat([a, junk], dim=1)
    mask2 = torch.cat([mask, torch.zeros(n, extra, dtype=torch.long)], dim=1)
    m2, p2 = maps(a2, mask2)
    torch.testing.assert_close(m2[:, :t], m1, rtol=1e-12, atol=1e-12)
    assert (m2[:, t:] == 0).all()
    torch.testing.assert_close(p2, p1, rtol=1e-12, atol=1e-12)


def test_pool_tokens_by_hand_and_cls():
    a = torch.arange(2 * 3 * 2, dtype=torch.float64).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    got = pool_tokens(a, mask)
    want = torch.tensor([[(0 + 2) / 2, (1 + 3) / 2], [(6 + 8 + 10) / 3, (7 + 9 + 11) / 3]])
    torch.testing.assert_close(got, want.double())
    torch.testing.assert_close(pool_tokens(a), a.mean(1))
    assert torch.equal(pool_tokens(a, mask, "cls"), a[:, 0])
    with pytest.raises(InputError, match="left padding"):
        pool_tokens(a, torch.tensor([[0, 1, 1], [1, 1, 1]]), "cls")
    with pytest.raises(InputError, match="pooling"):
        pool_tokens(a, mask, "max")


@pytest.mark.parametrize(
    "mask, match",
    [
        (torch.ones(2, 4), r"\(2, 3\)"),
        (torch.tensor([[1, 2, 0], [1, 1, 1]]), "only 0"),
        (torch.tensor([[0, 0, 0], [1, 1, 1]]), r"Sequences \[0\]"),
        ([[1, 1, 1]] * 2, "list"),
    ],
)
def test_bad_masks(mask, match):
    with pytest.raises(InputError, match=match):
        check_mask(mask, 2, 3)
    with pytest.raises(InputError):
        token_gradcam(torch.ones(2, 3, 1), torch.ones(2, 3, 1), mask)


def test_token_gradcam_rejects_bad_shapes():
    with pytest.raises(InputError, match=r"\(N, T, C\)"):
        token_gradcam(torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4))
    with pytest.raises(InputError, match="shape of `activation`"):
        token_gradcam(torch.ones(2, 3, 4), torch.ones(2, 3, 5))


# -- a real tiny BERT: padding, gradients and UniCAM through the hooks -----------


def _bert(seed):
    torch.manual_seed(seed)
    cfg = tf.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return tf.BertForSequenceClassification(cfg).double().eval()


def _batch(pad_to, seed=1):
    gen = torch.Generator().manual_seed(seed)
    lengths = [6, 4, 5, 3, 6, 2, 4, 5]
    ids = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    mask = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    for i, length in enumerate(lengths):
        ids[i, :length] = torch.randint(1, 30, (length,), generator=gen)
        mask[i, :length] = 1
    return ids, mask


def _gradcam_tokens(model, ids, mask, target):
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hidden = out.hidden_states[-1]
    logit = out.logits.gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(logit, hidden)
    return token_gradcam(hidden, grad, mask, relu_attributions=False)


def test_bert_gradcam_token_maps_do_not_change_with_more_padding():
    model = _bert(0)
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ids, mask = _batch(6)
    ids2, mask2 = _batch(11)
    m1 = _gradcam_tokens(model, ids, mask, target)
    m2 = _gradcam_tokens(model, ids2, mask2, target)
    torch.testing.assert_close(m2[:, :6], m1, rtol=1e-9, atol=1e-12)
    assert (m2[:, 6:] == 0).all()
    assert (m1[mask == 0] == 0).all() and (m1[mask == 1] != 0).any()


# -- vision transformers -------------------------------------------------------


@pytest.mark.parametrize(
    "t, k, want",
    [
        (17, None, (4, 1)),
        (18, None, (4, 2)),
        (5, None, (2, 1)),
        (16, 0, (4, 0)),
        (12, None, None),
        (16, None, None),
        (2, None, None),
        (2, 1, (1, 1)),
    ],
)
def test_grid_side(t, k, want):
    assert grid_side(t, k) == want


def test_vit_grid_equals_pytorch_grad_cam_reshape_and_deit_by_hand():
    a = torch.randn(2, 17, 6)
    torch.testing.assert_close(vit_grid(a), vit_reshape_transform(a, height=4, width=4))
    d = torch.randn(2, 18, 6)
    want = torch.stack([d[:, 2 + 4 * r + col] for r in range(4) for col in range(4)], dim=2)
    torch.testing.assert_close(vit_grid(d), want.reshape(2, 6, 4, 4))
    with pytest.raises(InputError, match="reshape_transform"):
        vit_grid(torch.randn(2, 12, 6))


def _tv_vit(seed):
    torch.manual_seed(seed)
    return torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=3,
    ).eval()


def test_unicam_on_torchvision_vit_with_vit_grid_equals_grad_cam_reshape():
    student, base = _tv_vit(0), _tv_vit(1)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    layers = student.encoder.layers[-1], base.encoder.layers[-1]
    ours = UniCAM(student, layers[0], base, layers[1], reshape_transform=vit_grid)
    theirs = UniCAM(
        student,
        layers[0],
        base,
        layers[1],
        reshape_transform=partial(vit_reshape_transform, height=4, width=4),
    )
    got = ours.attribute(x, target=target, features="both")
    want = theirs.attribute(x, target=target, features="both")
    for g, w in zip(got, want):
        assert g.shape == (8, 1, 4, 4)
        torch.testing.assert_close(g, w)
    assert any(float(g.max()) > 0 for g in got)


@pytest.mark.parametrize("kind, k", [("vit", 1), ("deit", 2)])
def test_hf_vision_transformers_lay_out_and_explain(kind, k):
    common = dict(  # noqa: C408
        image_size=16,
        patch_size=4,
        num_hidden_layers=1,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        if kind == "vit":
            models.append(tf.ViTForImageClassification(tf.ViTConfig(**common)).eval())
        else:
            models.append(tf.DeiTForImageClassification(tf.DeiTConfig(**common)).eval())
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    seen = []
    body = models[0].vit if kind == "vit" else models[0].deit
    handle = body.layers[-1].register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        models[0](pixel_values=x)
    finally:
        handle.remove()
    assert seen[0].shape == (6, 16 + k, 16)
    assert grid_side(seen[0].shape[1]) == (4, k)
    assert choose_layout(seen[0], inputs=(x,)) == "grid"
    want = seen[0][:, k:].transpose(1, 2).reshape(6, 16, 4, 4)
    torch.testing.assert_close(vit_grid(seen[0]), want)
    bodies = [m.vit if kind == "vit" else m.deit for m in models]
    cam = UniCAM(
        lambda p: models[0](pixel_values=p).logits,
        bodies[0].layers[-1],
        lambda p: models[1](pixel_values=p).logits,
        bodies[1].layers[-1],
        reshape_transform=vit_grid,
    )
    maps = cam.attribute(x, target=[0, 1, 2, 0, 1, 2])
    assert maps.shape == (6, 1, 4, 4) and bool(torch.isfinite(maps).all())


def test_choose_layout():
    assert choose_layout(torch.ones(2, 3, 4, 4)) == "feature_map"
    assert choose_layout(torch.ones(2, 8)) == "feature_map"
    assert choose_layout(torch.ones(2, 17, 8), attention_mask=torch.ones(2, 17)) == "tokens"
    assert choose_layout(torch.ones(2, 17, 8), inputs=torch.ones(2, 17).long()) == "tokens"
    assert choose_layout(torch.ones(2, 17, 8), inputs=(torch.ones(2, 3, 32, 32),)) == "grid"
    # neither text nor images (a Conv1d on signals, float embeddings): LayerGradCam's reading
    assert choose_layout(torch.ones(2, 17, 8)) == "feature_map"
    assert choose_layout(torch.ones(2, 12, 8), inputs=torch.ones(2, 12, 8)) == "feature_map"
    with pytest.raises(InputError, match="reshape_transform"):
        choose_layout(torch.ones(2, 12, 8), inputs=torch.ones(2, 3, 30, 30))


def test_mask_from_args_follows_hugging_face_order():
    ids = torch.tensor([[5, 6, 0], [7, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert mask_from_args(ids, (mask,)) is mask
    assert mask_from_args((ids,), mask) is mask
    assert mask_from_args((ids, mask), None) is mask  # the second input
    assert mask_from_args((ids, ids * 0 + 3), (mask,)) is None  # the second argument is not 0/1
    assert mask_from_args(ids, (mask * 2,)) is None  # not 0/1
    assert mask_from_args(ids, (mask.float(),)) is None  # floats are not a mask
    assert mask_from_args(ids.float(), (mask,)) is None  # not token ids
    assert mask_from_args(ids, (mask[:, :2],)) is None  # another shape
    assert mask_from_args(ids, ()) is None and mask_from_args(ids, None) is None
    assert forward_mask_kwargs(mask, (mask,)) == {}
    assert forward_mask_kwargs(None, ()) == {}
    assert forward_mask_kwargs(mask, ())["attention_mask"] is mask
