"""UniCAM on Hugging Face and torchvision transformers as they come (no wrappers): token maps
with an attention mask, vision transformers on their patch grid, reference mode with
sequences of other lengths. Tiny configs built locally, random weights, nothing downloaded."""

from __future__ import annotations

import dcor
import numpy as np
import pytest
import torch
import torchvision
import transformers as tf
from captum.attr import visualization as captum_viz
from torch import nn

from captum_unicam import stats, viz
from captum_unicam.attr._layout import pool_tokens, token_gradcam, vit_grid
from captum_unicam.attr.unicam import UniCAM
from captum_unicam.errors import InputError

LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


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


def _batch(pad_to, seed=1, lengths=(6, 4, 5, 3, 6, 2, 4, 5)):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    mask = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    for i, length in enumerate(lengths):
        ids[i, :length] = torch.randint(1, 30, (length,), generator=gen)
        mask[i, :length] = 1
    return ids, mask


def _last_hidden(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]


def _oracle(student, base, ids, mask, target, pooling="mean", explained="student"):
    """pdCor of the pooled last-block tokens by autograd (stats, written from the
    definitions), then the token rule by hand (token_gradcam)."""
    hs, hb = _last_hidden(student, ids, mask).detach(), _last_hidden(base, ids, mask).detach()
    h = (hs if explained == "student" else hb).requires_grad_(True)
    xs = pool_tokens(h if explained == "student" else hs, mask, pooling)
    xb = pool_tokens(h if explained == "base" else hb, mask, pooling)
    y = torch.nn.functional.one_hot(target, 3).double()
    score = (
        stats.partial_distance_correlation(xs, y, xb)
        if explained == "student"
        else stats.partial_distance_correlation(xb, y, xs)
    )
    (grad,) = torch.autograd.grad(score, h)
    return token_gradcam(h, grad, mask), score.detach()


def _cam(student, base, **kw):
    return UniCAM(student, student.bert.encoder.layer[-1], base, base.bert.encoder.layer[-1], **kw)


def test_bert_token_maps_equal_the_oracle_and_ignore_padding():
    student, base = _bert(0), _bert(5)
    cam = _cam(student, base)
    got = {}
    for pad_to in (6, 11):
        ids, mask = _batch(pad_to)
        (d, r), (s_d, s_r) = cam.attribute(
            ids, target=LABELS, attention_mask=mask, features="both", return_score=True
        )
        assert d.shape == r.shape == (8, pad_to)
        want_d, want_sd = _oracle(student, base, ids, mask, LABELS)
        want_r, want_sr = _oracle(student, base, ids, mask, LABELS, explained="base")
        torch.testing.assert_close(d, want_d, rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(r, want_r, rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(s_d, want_sd, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(s_r, want_sr, rtol=1e-9, atol=1e-12)
        assert (d[mask == 0] == 0).all() and (r[mask == 0] == 0).all()
        assert float(d.max()) > 0 and float(r.max()) > 0
        got[pad_to] = (d, r, s_d, s_r)
    # padding the same sentences further changes neither the maps nor the scores
    for a, b in zip(got[6][:2], got[11][:2]):
        torch.testing.assert_close(b[:, :6], a, rtol=1e-7, atol=1e-12)
        assert (b[:, 6:] == 0).all()
    torch.testing.assert_close(got[11][2], got[6][2], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[11][3], got[6][3], rtol=1e-9, atol=1e-12)


def test_score_equals_dcor_on_mean_pooled_and_cls_tokens():
    student, base = _bert(0), _bert(5)
    ids, mask = _batch(9)
    for pooling in ("mean", "cls"):
        s_d, s_r = _cam(student, base, token_pooling=pooling).score(
            ids, target=LABELS, attention_mask=mask
        )
        xs = pool_tokens(_last_hidden(student, ids, mask), mask, pooling).detach().numpy()
        xb = pool_tokens(_last_hidden(base, ids, mask), mask, pooling).detach().numpy()
        y = np.eye(3)[LABELS.numpy()]
        assert float(s_d) == pytest.approx(dcor.partial_distance_correlation(xs, y, xb), abs=1e-9)
        assert float(s_r) == pytest.approx(dcor.partial_distance_correlation(xb, y, xs), abs=1e-9)


def test_mask_read_from_the_forward_arguments_and_predicted_targets():
    """HF's positional order model(input_ids, attention_mask): the mask among
    additional_forward_args is found; target=None reads the ModelOutput's logits."""
    student, base = _bert(0), _bert(5)
    ids, mask = _batch(8)
    cam = _cam(student, base)
    explicit = cam.attribute(ids, target=LABELS, attention_mask=mask)
    found = cam.attribute(ids, target=LABELS, additional_forward_args=(mask,))
    torch.testing.assert_close(found, explicit, rtol=0, atol=0)
    predicted = student(input_ids=ids, attention_mask=mask).logits.argmax(1)
    assert len(set(predicted.tolist())) > 1  # two classes predicted: labels with structure
    torch.testing.assert_close(
        cam.score(ids, attention_mask=mask), cam.score(ids, predicted, attention_mask=mask)
    )
    with pytest.raises(InputError, match="attention_mask"):
        cam.attribute(ids, target=LABELS, attention_mask=mask[:3])


def test_reference_mode_with_sequences_of_other_lengths():
    student, base = _bert(0), _bert(5)
    ref_ids, ref_mask = _batch(10, seed=3)
    cam = _cam(student, base, reference=(ref_ids, LABELS, None, ref_mask))
    ids, mask = _batch(6)
    ids2, mask2 = _batch(9)
    m6 = cam.attribute(ids, target=LABELS, attention_mask=mask)
    m9 = cam.attribute(ids2, target=LABELS, attention_mask=mask2)
    assert m6.shape == (8, 6) and m9.shape == (8, 9)
    torch.testing.assert_close(m9[:, :6], m6, rtol=1e-7, atol=1e-12)
    assert (m9[:, 6:] == 0).all() and (m6[mask == 0] == 0).all() and float(m6.max()) > 0
    # each input's map is its own: scored with the reference set alone
    torch.testing.assert_close(
        cam.attribute(ids[2:4], target=LABELS[2:4], attention_mask=mask[2:4]),
        m6[2:4],
        rtol=1e-9,
        atol=1e-12,
    )
    # oracle for input 0: the 1 + m batch of that input and the reference set (pads to 10)
    pad_ids = torch.zeros(1, 10, dtype=torch.long)
    pad_mask = torch.zeros(1, 10, dtype=torch.long)
    pad_ids[0, :6], pad_mask[0, :6] = ids[0], mask[0]
    want, _ = _oracle(
        student,
        base,
        torch.cat([pad_ids, ref_ids]),
        torch.cat([pad_mask, ref_mask]),
        torch.cat([LABELS[:1], LABELS]),
    )
    torch.testing.assert_close(m6[0], want[0, :6], rtol=1e-6, atol=1e-10)
    scores = cam.score(ids, target=LABELS, attention_mask=mask)
    assert scores[0].shape == (8,)


def test_deeper_representation_layer_through_an_early_block():
    """Maps on block 0, the representation at the pooler: autograd from the pooler back to
    block 0's tokens (an oracle with its own hook), padding still exactly 0."""
    student, base = _bert(0), _bert(5)
    ids, mask = _batch(7)
    cam = UniCAM(
        student,
        student.bert.encoder.layer[0],
        base,
        base.bert.encoder.layer[0],
        student_feature_layer=student.bert.pooler,
        base_feature_layer=base.bert.pooler,
    )
    d = cam.attribute(ids, target=LABELS, attention_mask=mask)

    store = {}

    def leaf_hook(module, args, out):
        store["a"] = out.detach().requires_grad_(True)
        return store["a"]

    handle = student.bert.encoder.layer[0].register_forward_hook(leaf_hook)
    try:
        with torch.enable_grad():
            xs = student.bert.pooler(
                student.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            )
    finally:
        handle.remove()
    xb = base.bert(input_ids=ids, attention_mask=mask).pooler_output.detach()
    y = torch.nn.functional.one_hot(LABELS, 3).double()
    (grad,) = torch.autograd.grad(stats.partial_distance_correlation(xs, y, xb), store["a"])
    want = token_gradcam(store["a"], grad, mask)
    assert d.shape == (8, 7)
    torch.testing.assert_close(d, want, rtol=1e-6, atol=1e-10)
    assert (d[mask == 0] == 0).all() and float(d.max()) > 0


# -- vision transformers ---------------------------------------------------------


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


def _hf_vision(kind, seed):
    torch.manual_seed(seed)
    common = dict(  # noqa: C408
        image_size=16,
        patch_size=4,
        num_hidden_layers=1,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    if kind == "vit":
        model = tf.ViTForImageClassification(tf.ViTConfig(**common)).eval()
        return model, model.vit.layers[-1]
    model = tf.DeiTForImageClassification(tf.DeiTConfig(**common)).eval()
    return model, model.deit.layers[-1]


@pytest.mark.parametrize("kind", ["torchvision", "vit", "deit"])
def test_vision_transformer_token_layers_map_to_the_patch_grid(kind):
    if kind == "torchvision":
        (student, base), size, side = (_tv_vit(0), _tv_vit(1)), 32, 4
        layers = student.encoder.layers[-1], base.encoder.layers[-1]
    else:
        (student, l_s), (base, l_b) = _hf_vision(kind, 0), _hf_vision(kind, 1)
        layers, size, side = (l_s, l_b), 16, 4
    x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(2))
    target = [0, 1, 2, 0, 1, 2]
    auto = UniCAM(student, layers[0], base, layers[1])  # ModelOutput read as logits
    by_hand = UniCAM(student, layers[0], base, layers[1], reshape_transform=vit_grid)
    got = auto.attribute(x, target=target, features="both")
    want = by_hand.attribute(x, target=target, features="both")
    for g, w in zip(got, want):
        assert g.shape == (6, 1, side, side)
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert any(float(g.max()) > 0 for g in got)
    torch.testing.assert_close(auto.score(x, target=target), by_hand.score(x, target=target))


class _PatchNet(nn.Module):
    """Images to 12 patch tokens (a 3 x 4 grid, no special token): not a square grid."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, 12, 8)
        return self.head(self.block(tokens).mean(1))


def test_a_token_layer_that_cannot_be_laid_out_names_reshape_transform():
    torch.manual_seed(0)
    student, base = _PatchNet().eval(), _PatchNet().eval()
    x = torch.randn(6, 3, 24, 32)
    cam = UniCAM(student, student.block, base, base.block)
    with pytest.raises(InputError, match="reshape_transform"):
        cam.attribute(x, target=[0, 1, 2, 0, 1, 2])
    assert not student.block._forward_hooks and not base.block._forward_hooks

    def grid(a):
        return a.transpose(1, 2).reshape(a.shape[0], a.shape[2], 3, 4)

    maps = UniCAM(student, student.block, base, base.block, reshape_transform=grid).attribute(
        x, target=[0, 1, 2, 0, 1, 2]
    )
    assert maps.shape == (6, 1, 3, 4)


def test_native_token_maps_feed_captum_visualize_text():
    student, base = _bert(0), _bert(5)
    ids, mask = _batch(8)
    residual = _cam(student, base).attribute(
        ids, target=LABELS, attention_mask=mask, features="residual"
    )
    words = [[f"w{int(i)}" for i in row] for row in ids]
    records = viz.text_records(words, residual, attention_mask=mask, kind="UniCAM residual")
    assert len(records) == 8
    assert all(isinstance(r, captum_viz.VisualizationDataRecord) for r in records)
    for i, record in enumerate(records):
        valid = residual[i][mask[i] == 1]
        assert record.raw_input_ids == [w for w, m in zip(words[i], mask[i]) if m]
        if float(valid.max()) > 0:  # the map over its valid tokens, scaled by its largest value
            np.testing.assert_allclose(
                np.asarray(record.word_attributions, dtype=float),
                (valid / valid.max()).numpy(),
                rtol=1e-12,
            )
    assert captum_viz.visualize_text(records) is not None


@pytest.mark.parametrize("kind", ["torchvision", "deit"])
def test_vision_transformers_in_reference_mode(kind):
    if kind == "torchvision":
        (student, base), size = (_tv_vit(0), _tv_vit(1)), 32
        layers = student.encoder.layers[-1], base.encoder.layers[-1]
    else:
        (student, l_s), (base, l_b) = _hf_vision(kind, 0), _hf_vision(kind, 1)
        layers, size = (l_s, l_b), 16
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, size, size, generator=gen)
    ref = (torch.randn(6, 3, size, size, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2]))
    auto = UniCAM(student, layers[0], base, layers[1], reference=ref)
    by_hand = UniCAM(student, layers[0], base, layers[1], reference=ref, reshape_transform=vit_grid)
    got = auto.attribute(x, target=[0, 1, 2], features="both")
    want = by_hand.attribute(x, target=[0, 1, 2], features="both")
    for g, w in zip(got, want):
        assert g.shape == (3, 1, 4, 4)
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    torch.testing.assert_close(auto.attribute(x[1:2], target=[1]), got[0][1:2])
    assert auto.score(x, target=[0, 1, 2])[0].shape == (3,)


def test_sanity_check_on_a_hugging_face_vit_as_it_comes():
    """The cascading randomisation explains the ModelOutput-returning model itself: the
    maps (read at the last block, labels given) cannot change when only the classifier is
    re-initialised, and do when the encoder is."""
    from captum_unicam.sanity import cascading_randomisation

    (student, l_s), (base, l_b) = _hf_vision("vit", 0), _hf_vision("vit", 1)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    state = {k: v.clone() for k, v in student.state_dict().items()}
    rows = cascading_randomisation(
        student,
        {"UniCAM": UniCAM(student, l_s, base, l_b)},
        x,
        target=[0, 1, 2, 0, 1, 2],
        blocks=["classifier", "vit"],
        n_bootstrap=20,
    ).rows
    assert [r["randomised"] for r in rows] == ["none", "classifier", "vit"]
    assert rows[1]["spearman"]["mean"] == pytest.approx(1.0, abs=1e-12)
    assert rows[2]["spearman"]["mean"] < 0.9
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in state.items())


def test_ids_and_mask_as_two_inputs_as_captum_passes_them():
    """inputs=(input_ids, attention_mask): the mask is the model's second positional
    argument, found there; the maps equal those with attention_mask=."""
    student, base = _bert(0), _bert(5)
    ids, mask = _batch(7)
    cam = _cam(student, base)
    two = cam.attribute((ids, mask), target=LABELS)
    assert isinstance(two, tuple) and len(two) == 1  # Captum's convention for tuple inputs
    torch.testing.assert_close(
        two[0], cam.attribute(ids, target=LABELS, attention_mask=mask), rtol=0, atol=0
    )
