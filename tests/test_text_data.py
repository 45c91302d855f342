"""The generated text task: determinism, the cue's rate and class, its token positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_unicam.data.text import (
    CLASSES,
    CUE_WORDS,
    TOPIC_WORDS,
    TextTopics,
    load_tokenizer,
)
from captum_unicam.errors import InputError


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_every_word_is_one_token(tokenizer):
    words = [w for ws in TOPIC_WORDS.values() for w in ws] + list(CUE_WORDS)
    assert all(len(tokenizer.tokenize(w)) == 1 for w in words)
    assert len(set(tokenizer.convert_tokens_to_ids(words))) == len(words)


def test_seeded_and_cue_free_by_default(tokenizer):
    a = TextTopics(50, seed=3, tokenizer=tokenizer)
    b = TextTopics(50, seed=3, tokenizer=tokenizer)
    assert a.sentences == b.sentences and torch.equal(a.input_ids, b.input_ids)
    assert TextTopics(50, seed=4).sentences != a.sentences
    assert not a.has_cue.any() and not a.cue_masks.any()
    assert not any(c in s.split() for s in a.sentences for c in CUE_WORDS)


def test_cue_rate_class_and_positions(tokenizer):
    task = TextTopics(2000, seed=0, cue_strength=0.8, tokenizer=tokenizer)
    rate = task.has_cue.float().mean().item()
    assert abs(rate - 0.8) < 0.03  # binomial sd 0.009
    for i in range(len(task)):
        words = task.sentences[i].split()
        cue = task.cue_words[i]
        if cue is None:
            assert not task.cue_masks[i].any()
            continue
        assert cue == CUE_WORDS[int(task.labels[i])]
        assert words.count(cue) == 1
        # words are single tokens: token position = word position + 1 ([CLS])
        (pos,) = task.cue_masks[i].nonzero().flatten().tolist()
        assert pos == words.index(cue) + 1
        assert int(task.input_ids[i, pos]) == tokenizer.convert_tokens_to_ids(cue)
    assert torch.equal(
        task.attention_mask.sum(1), torch.tensor([len(s.split()) + 2 for s in task.sentences])
    )


def test_labels_balanced_and_topic_words_match_class():
    task = TextTopics(4000, seed=1, topic_noise=0.0)
    counts = torch.bincount(task.labels, minlength=4)
    assert (counts - 1000).abs().max() < 100
    for s, y in zip(task.sentences[:200], task.labels[:200].tolist()):
        topical = [w for w in s.split() if any(w in ws for ws in TOPIC_WORDS.values())]
        assert len(topical) == 2 and all(w in TOPIC_WORDS[CLASSES[y]] for w in topical)


def test_item_and_errors(tokenizer):
    task = TextTopics(5, seed=0, cue_strength=1.0, tokenizer=tokenizer)
    item = task[2]
    assert item["has_cue"] and item["cue_mask"].sum() == 1 and item["input_ids"].shape == (16,)
    with pytest.raises(InputError, match="size"):
        TextTopics(0)
    with pytest.raises(InputError, match="cue_strength"):
        TextTopics(5, cue_strength=1.5)
    with pytest.raises(InputError, match="max_length"):
        TextTopics(5, max_length=8)


def _text_kd():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "experiments" / "text_kd.py"
    spec = importlib.util.spec_from_file_location("text_kd", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scenario_cue_mass_and_naive_difference_by_hand():
    kd = _text_kd()
    maps = torch.tensor([[1.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 4.0, 0.0]])
    cue = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    assert kd.cue_mass(maps, cue) == [0.75, None, 0.5]  # an empty map is left out, not 0/0
    with np.errstate(all="raise"):
        normed = kd._normalised(maps)
    torch.testing.assert_close(
        normed, torch.tensor([[1 / 3, 1.0, 0, 0], [0, 0, 0, 0], [0.5, 0.5, 1.0, 0]])
    )
    got = kd.interval([0.2, None, 0.4], n_bootstrap=50, seed=0)
    assert got["n"] == 2 and got["mean"] == pytest.approx(0.3)
    assert 0.2 <= got["low"] <= got["high"] <= 0.4
    assert kd.interval([None], 10, 0)["mean"] is None
