"""FSS, RS and evaluate_kd on token layers of Hugging Face text models as they come: the
attention mask respected, checked against dcor on the mean-pooled valid tokens computed by
hand. Tiny configs built locally, random weights, nothing downloaded."""

from __future__ import annotations

import dcor
import numpy as np
import pytest
import torch
import transformers as tf

from captum_unicam import feature_similarity_score, relevance_score
from captum_unicam.errors import InputError
from captum_unicam.metrics import evaluate_kd

LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
LENGTHS = (6, 4, 5, 3, 6, 2, 4, 5, 6, 3)


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


def _batch(pad_to, seed=1, lengths=LENGTHS):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    mask = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    for i, length in enumerate(lengths):
        ids[i, :length] = torch.randint(1, 30, (length,), generator=gen)
        mask[i, :length] = 1
    return ids, mask


def _by_hand(model, ids, mask, block=-1, pooling="mean"):
    """The block's hidden states, pooled by hand in numpy over the valid tokens."""
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    h = hidden.hidden_states[block].numpy()
    m = mask.numpy().astype(float)
    if pooling == "cls":
        return h[:, 0]
    return np.stack([h[i][m[i] == 1].mean(axis=0) for i in range(len(h))])


def test_fss_and_rs_on_token_layers_equal_dcor_on_pooled_valid_tokens():
    student, base = _bert(0), _bert(5)
    ids, mask = _batch(8)
    y = np.eye(3)[LABELS.numpy()]
    for pooling in ("mean", "cls"):
        kw = {"attention_mask": mask, "pooling": pooling, "perturbation": None}
        xs, xb = (
            _by_hand(student, ids, mask, pooling=pooling),
            _by_hand(base, ids, mask, pooling=pooling),
        )
        fss = feature_similarity_score(
            student,
            student.bert.encoder.layer[-1],
            ids,
            base_forward_func=base,
            base_layer=base.bert.encoder.layer[-1],
            **kw,
        )
        assert float(fss) == pytest.approx(dcor.u_distance_correlation_sqr(xs, xb), abs=1e-9)
        rs = relevance_score(student, student.bert.encoder.layer[-1], ids, target=LABELS, **kw)
        assert float(rs) == pytest.approx(dcor.u_distance_correlation_sqr(xs, y), abs=1e-9)
        rs_d = relevance_score(
            student,
            student.bert.encoder.layer[-1],
            ids,
            target=LABELS,
            base_forward_func=base,
            base_layer=base.bert.encoder.layer[-1],
            **kw,
        )
        assert float(rs_d) == pytest.approx(dcor.partial_distance_correlation(xs, y, xb), abs=1e-9)
    # an early block: block 0's output is hidden_states[1]
    fss0 = feature_similarity_score(
        student,
        student.bert.encoder.layer[0],
        ids,
        base_forward_func=base,
        base_layer=base.bert.encoder.layer[0],
        attention_mask=mask,
        perturbation=None,
    )
    want = dcor.u_distance_correlation_sqr(
        _by_hand(student, ids, mask, 1), _by_hand(base, ids, mask, 1)
    )
    assert float(fss0) == pytest.approx(want, abs=1e-9)


def test_more_padding_leaves_the_metrics_unchanged_and_the_mask_is_found_in_the_args():
    student, base = _bert(0), _bert(5)
    layer, base_layer = student.bert.encoder.layer[-1], base.bert.encoder.layer[-1]
    values = []
    for pad_to in (6, 12):
        ids, mask = _batch(pad_to)
        values.append(
            [
                float(
                    feature_similarity_score(
                        student,
                        layer,
                        ids,
                        base_forward_func=base,
                        base_layer=base_layer,
                        attention_mask=mask,
                        perturbation=None,
                    )
                ),
                float(
                    relevance_score(
                        student, layer, ids, target=LABELS, attention_mask=mask, perturbation=None
                    )
                ),
                # the mask as the first forward argument, as model(input_ids, attention_mask)
                float(
                    relevance_score(
                        student,
                        layer,
                        ids,
                        target=LABELS,
                        perturbation=None,
                        additional_forward_args=(mask,),
                    )
                ),
            ]
        )
    np.testing.assert_allclose(values[1], values[0], rtol=1e-9, atol=1e-12)
    assert values[0][1] == pytest.approx(values[0][2], abs=1e-12)
    # without the mask, padding enters the statistics: a different value
    ids, mask = _batch(12)
    unmasked = float(relevance_score(student, layer, ids, target=LABELS, perturbation=None))
    assert abs(unmasked - values[0][1]) > 1e-6


def test_token_metrics_refuse_bad_masks_and_masked_token_ids():
    student = _bert(0)
    ids, mask = _batch(6)
    layer = student.bert.encoder.layer[-1]
    with pytest.raises(InputError, match="attention_mask"):
        relevance_score(student, layer, ids, target=LABELS, attention_mask=mask[:, :4] * 2)
    with pytest.raises(InputError, match="pooling"):
        relevance_score(student, layer, ids, target=LABELS, attention_mask=mask, pooling="max")
    with pytest.raises(InputError, match="token ids are accepted for raw features"):
        relevance_score(student, layer, ids, target=LABELS, attributions=torch.ones(10, 1, 6, 1))


def test_evaluate_kd_on_dict_batches_equals_dcor_on_pooled_valid_tokens():
    student, base = _bert(0), _bert(5)
    layers = {
        "B0": (student.bert.encoder.layer[0], base.bert.encoder.layer[0]),
        "B1": (student.bert.encoder.layer[-1], base.bert.encoder.layer[-1]),
    }
    batches = []
    for seed, pad_to in ((1, 7), (2, 9)):
        ids, mask = _batch(pad_to, seed=seed)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": LABELS})
    result = evaluate_kd(
        student,
        layers,
        batches,
        base_forward_func=base,
        perturbation=None,
        progress=False,
        n_bootstrap=20,
        n_permutations=20,
    )
    y = np.eye(3)[LABELS.numpy()]
    for b, batch in enumerate(batches):
        for name, block in (("B0", 1), ("B1", -1)):
            xs = _by_hand(student, batch["input_ids"], batch["attention_mask"], block)
            xb = _by_hand(base, batch["input_ids"], batch["attention_mask"], block)
            got = {m: v[b] for m, v in result.values[name]["none"].items()}
            assert got["fss"] == pytest.approx(dcor.u_distance_correlation_sqr(xs, xb), abs=1e-9)
            assert got["rs_student"] == pytest.approx(
                dcor.u_distance_correlation_sqr(xs, y), abs=1e-9
            )
            assert got["rs_distilled"] == pytest.approx(
                dcor.partial_distance_correlation(xs, y, xb), abs=1e-9
            )
    # one batch: the dataset estimate is the exact statistic of that batch
    one = evaluate_kd(
        student,
        layers,
        batches[:1],
        base_forward_func=base,
        perturbation=None,
        progress=False,
        n_bootstrap=20,
        n_permutations=20,
    )
    xs = _by_hand(student, batches[0]["input_ids"], batches[0]["attention_mask"])
    xb = _by_hand(base, batches[0]["input_ids"], batches[0]["attention_mask"])
    summary = one.summary()["by_layer"]["B1"]["none"]
    assert summary["rs_residual"]["mean"] == pytest.approx(
        dcor.partial_distance_correlation(xb, y, xs), abs=1e-9
    )


# -- vision transformers in evaluate_kd, as they come ------------------------------------


def _vit(seed):
    torch.manual_seed(seed)
    cfg = tf.ViTConfig(
        image_size=16,
        patch_size=4,
        num_hidden_layers=2,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    model = tf.ViTForImageClassification(cfg).double().eval()
    # the first block: the last one reaches the logits through the class token only, so its
    # patch tokens get no gradient
    return model, model.vit.layers[0]


def _gradcam_by_hand(model, layer, x, y):
    """Grad-CAM of the target logits on the block's patch grid, written out."""
    store = {}

    def hook(module, args, out):
        store["a"] = out
        out.retain_grad()

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            model(pixel_values=x).logits.gather(1, y[:, None]).sum().backward()
    finally:
        handle.remove()
    a, g = store["a"].detach(), store["a"].grad
    model.zero_grad()
    a, g = (
        a[:, 1:].transpose(1, 2).reshape(-1, 16, 4, 4),
        g[:, 1:].transpose(1, 2).reshape(-1, 16, 4, 4),
    )
    return (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).relu()


def test_evaluate_kd_on_hugging_face_vits_with_gradcam_and_unicam_maps():
    (student, l_s), (base, l_b) = _vit(0), _vit(1)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(10, 3, 16, 16, generator=gen, dtype=torch.float64)
    y = LABELS
    result = evaluate_kd(
        student,
        {"L": (l_s, l_b)},
        [(x, y)],
        base_forward_func=base,
        maps=("gradcam", "distilled"),
        reference=None,
        leakage=False,
        progress=False,
        n_bootstrap=20,
        n_permutations=20,
    )
    cams = _gradcam_by_hand(student, l_s, x, y), _gradcam_by_hand(base, l_b, x, y)
    assert cams[0].shape == (10, 1, 4, 4) and float(cams[0].max()) > 0
    want = feature_similarity_score(
        student, l_s, x, base_forward_func=base, base_layer=l_b, attributions=cams
    )
    assert result.values["L"]["gradcam"]["fss"][0] == pytest.approx(float(want), abs=1e-9)
    assert np.isfinite(result.values["L"]["distilled"]["rs_student"][0])
