"""Token maps shown with Captum's text visualisation, empty maps included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import visualization as captum_viz

from captum_unicam import viz
from captum_unicam.errors import InputError

WORDS = [
    ["[CLS]", "the", "zebra", "ran", "[SEP]", "[PAD]"],
    ["[CLS]", "<b>", "&", "[SEP]", "[PAD]", "[PAD]"],
]
MASK = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])


def test_text_records_scale_trim_and_score():
    maps = torch.tensor([[0.0, 1.0, 4.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    with np.errstate(all="raise"):  # no division by zero for the empty map
        records = viz.text_records(
            WORDS,
            maps,
            attention_mask=MASK,
            kind="UniCAM residual",
            true_class=["food", "sports"],
            pred_class=["food", "food"],
            pred_prob=[0.9, 0.4],
        )
    first, second = records
    assert first.raw_input_ids == WORDS[0][:5]
    np.testing.assert_allclose(first.word_attributions, [0.0, 0.25, 1.0, 0.5, 0.0])
    assert first.attr_score == 7.0 and first.attr_class == "UniCAM residual"
    assert first.true_class == "food" and first.pred_prob == pytest.approx(0.9)
    assert second.raw_input_ids == WORDS[1][:4]
    np.testing.assert_array_equal(second.word_attributions, np.zeros(4))
    assert second.attr_class == f"UniCAM residual ({viz.EMPTY_MAP_NOTE})"


def test_records_feed_captum_visualize_text():
    pytest.importorskip("IPython")
    maps = torch.tensor([[0.0, 1.0, 4.0, 2.0, 0.0, 0.0], [0.0] * 6])
    shown = captum_viz.visualize_text(viz.text_records(WORDS, maps, attention_mask=MASK))
    assert "zebra" in shown.data and captum_viz._get_color(1.0) in shown.data


def test_html_side_by_side_with_captum_colours_and_escaping():
    maps = {
        "UniCAM residual": torch.tensor([[0.0, 0, 3, 0, 0, 9], [0, 1, 0, 0, 0, 0]]),
        "Grad-CAM Base": torch.zeros(2, 6),
    }
    page = viz.token_maps_html(WORDS, maps, attention_mask=MASK, captions=["food", "sports"])
    assert page.startswith("<table") and page.endswith("</table>")
    assert "<th>UniCAM residual</th><th>Grad-CAM Base</th>" in page
    # the padding value 9 is dropped, so the cue gets the full colour, as Captum draws 1.0
    want = captum_viz.format_word_importances(["zebra"], [1.0])
    want = want.replace("<td>", "").replace("</td>", "")
    assert want in page
    assert "&lt;b&gt;" in page and "&amp;" in page and "<b>" not in page.replace("<b>Legend", "")
    assert page.count(viz.EMPTY_MAP_NOTE) == 2  # the Grad-CAM column of both sentences
    assert "[PAD]" not in page


def test_errors():
    with pytest.raises(InputError, match=r"\(N, T\)"):
        viz.text_records(WORDS, torch.zeros(3, 6))
    with pytest.raises(InputError, match="attention_mask"):
        viz.text_records(WORDS, torch.zeros(2, 6), attention_mask=torch.ones(2, 5))
    with pytest.raises(InputError, match="tokens"):
        viz.text_records([["a"], ["b"]], torch.zeros(2, 6))
    with pytest.raises(InputError, match="at least one"):
        viz.token_maps_html(WORDS, {})
