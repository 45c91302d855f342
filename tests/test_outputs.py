"""Reading forward outputs as logits and layer outputs as hidden states, on real Hugging Face
classes built from tiny local configs (random weights, nothing downloaded)."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest
import torch
import transformers as tf

from captum_unicam._outputs import hidden_of, logits_of
from captum_unicam.errors import InputError


def _bert():
    torch.manual_seed(0)
    cfg = tf.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        max_position_embeddings=16,
    )
    return tf.BertForSequenceClassification(cfg).eval()


def _vision(kind):
    torch.manual_seed(0)
    common = {
        "image_size": 16,
        "patch_size": 8,
        "num_hidden_layers": 1,
        "hidden_size": 16,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "num_labels": 5,
    }
    if kind == "vit":
        return tf.ViTForImageClassification(tf.ViTConfig(**common)).eval()
    return tf.DeiTForImageClassification(tf.DeiTConfig(**common)).eval()


def test_bert_sequence_classifier_output_gives_its_logits():
    model = _bert()
    ids = torch.randint(0, 40, (3, 6))
    out = model(input_ids=ids)
    assert isinstance(out, tf.modeling_outputs.SequenceClassifierOutput)
    got = logits_of(out)
    assert got is out.logits
    # independent oracle: the same model with return_dict=False returns a tuple
    legacy = model(input_ids=ids, return_dict=False)
    assert isinstance(legacy, tuple)
    assert torch.equal(logits_of(legacy), got)
    assert got.shape == (3, 3)


def test_bert_output_with_loss_still_gives_logits_not_loss():
    model = _bert()
    ids = torch.randint(0, 40, (4, 5))
    out = model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0]))
    assert out.loss is not None and out.loss.dim() == 0
    assert logits_of(out).shape == (4, 3)
    assert torch.equal(logits_of(out), model(input_ids=ids).logits)


@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_vision_transformer_outputs(kind):
    model = _vision(kind)
    x = torch.randn(2, 3, 16, 16)
    out = model(pixel_values=x)
    assert type(out).__name__.endswith("ImageClassifierOutput")
    assert torch.equal(logits_of(out), out["logits"])
    assert logits_of(out).shape == (2, 5)


def test_plain_forms():
    t = torch.randn(2, 3)
    assert logits_of(t) is t
    assert logits_of({"logits": t, "aux": 1}) is t
    assert logits_of(OrderedDict(logits=t)) is t
    assert logits_of((t, torch.zeros(1))) is t
    assert logits_of([t]) is t
    Named = namedtuple("Named", "scores extra")
    assert logits_of(Named(t, None)) is t  # a named tuple: first element


@pytest.mark.parametrize(
    "value, words",
    [
        ({"scores": torch.zeros(2)}, ["dict", "'scores'", "logits"]),
        ((), ["empty tuple"]),
        (("a", torch.zeros(1)), ["tuple of length 2", "str"]),
        (3.0, ["float"]),
        (None, ["NoneType"]),
    ],
)
def test_logits_error_names_what_was_received(value, words):
    with pytest.raises(InputError) as info:
        logits_of(value, model="Student")
    message = str(info.value)
    assert "Student" in message
    for word in words:
        assert word in message


def test_base_model_output_has_no_logits():
    model = _bert().bert
    out = model(input_ids=torch.randint(0, 40, (2, 4)))
    with pytest.raises(InputError, match="last_hidden_state"):
        logits_of(out)
    # but it is read as hidden states
    assert hidden_of(out) is out.last_hidden_state


def test_hidden_of_layer_outputs_of_real_layers():
    model = _bert()
    seen = []
    handle = model.bert.encoder.layer[-1].register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        out = model(input_ids=torch.randint(0, 40, (2, 6)), output_hidden_states=True)
    finally:
        handle.remove()
    hidden = hidden_of(seen[0])
    assert hidden.shape == (2, 6, 16)
    assert torch.equal(hidden, out.hidden_states[-1])
    # the tuple form that Hugging Face layers return with attention weights
    weights = torch.rand(2, 2, 6, 6)
    assert hidden_of((hidden, weights)) is hidden
    assert hidden_of([hidden]) is hidden
    assert hidden_of({"last_hidden_state": hidden}) is hidden


@pytest.mark.parametrize("value", [(), (None, torch.zeros(1)), "text", {"x": 1}])
def test_hidden_of_error(value):
    with pytest.raises(InputError, match="`block 3`"):
        hidden_of(value, layer="block 3")
