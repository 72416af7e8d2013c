"""What an image is conditioned on, as one object the whole engine passes around.

A :class:`Condition` holds one row per image.  The loop and its options never look inside it; they ask it for
what they need:

* ``null()``        the unconditional rows of the same batch (the second half of classifier-free guidance);
* ``cat(other)``    rows stacked ([cond; uncond] for guidance);
* ``select(rows)``  rows kept, dropped or repeated (search controllers re-batching a run);
* ``with_null(m)``  rows where ``m`` is True replaced by the null condition (training's condition dropout);
* ``keys()``        a hashable identity per row (watermark list choice, captions);
* ``values``        what a verifier or reward scores against (class ids for class conditions);
* ``encode(t)``     the trunk's embedding of the rows (an :class:`Encoded`), through the encoder of transformer
                    ``t`` that fits this kind of condition.

Two kinds: class labels (:class:`ClassCondition`) and text (:class:`TextCondition`, read by the transformer's text
encoder, ``arvision.models.text``); further kinds are further subclasses with their own encoder, not edits of the
loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from arvision.errors import ArvisionError


class Encoded(NamedTuple):
    """What a condition gives the trunk: ``emb`` (B, C) the pooled embedding (first step's input, AdaLN input);
    for text also ``states`` (B, T, C) per-word states and ``valid`` (B, T) bool, read by cross-attention."""

    emb: torch.Tensor
    states: torch.Tensor | None = None
    valid: torch.Tensor | None = None


class Condition:
    """Base of every condition: one row per image."""

    @property
    def batch(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def null(self) -> Condition:
        raise NotImplementedError

    def cat(self, other: Condition) -> Condition:
        raise NotImplementedError

    def select(self, rows: torch.Tensor) -> Condition:
        raise NotImplementedError

    def with_null(self, drop: torch.Tensor) -> Condition:
        raise NotImplementedError

    def keys(self) -> list:
        raise NotImplementedError

    @property
    def values(self):
        raise NotImplementedError

    def encode(self, transformer) -> Encoded:
        """-> the condition's embedding (prefix token and AdaLN input; per-word states for text)."""
        raise NotImplementedError

    def to(self, device) -> Condition:
        raise NotImplementedError


@dataclass(frozen=True)
class ClassCondition(Condition):
    """Class ids (B,) int64 in ``0..num_classes``; id ``num_classes`` is the null (unconditional) class."""

    labels: torch.Tensor
    num_classes: int

    def __post_init__(self):
        if self.labels.ndim != 1 or self.labels.dtype != torch.long:
            raise ArvisionError(f"class labels must be a (B,) int64 tensor, got {tuple(self.labels.shape)} "
                                f"{self.labels.dtype}")
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) > self.num_classes):
            raise ArvisionError(f"class id(s) out of range 0..{self.num_classes} ({self.num_classes} = null): "
                                f"{self.labels.tolist()}")

    @classmethod
    def of(cls, labels, num_classes: int, device=None) -> ClassCondition:
        return cls(torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1), num_classes)

    @property
    def batch(self) -> int:
        return self.labels.shape[0]

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def null(self) -> ClassCondition:
        return ClassCondition(torch.full_like(self.labels, self.num_classes), self.num_classes)

    def cat(self, other: Condition) -> ClassCondition:
        if not isinstance(other, ClassCondition) or other.num_classes != self.num_classes:
            raise ArvisionError("cannot stack class conditions of different kinds or class counts")
        return ClassCondition(torch.cat([self.labels, other.labels]), self.num_classes)

    def select(self, rows: torch.Tensor) -> ClassCondition:
        return ClassCondition(self.labels[rows], self.num_classes)

    def with_null(self, drop: torch.Tensor) -> ClassCondition:
        return ClassCondition(torch.where(drop.to(self.device), self.num_classes, self.labels), self.num_classes)

    def keys(self) -> list[int]:
        return self.labels.tolist()

    @property
    def values(self) -> torch.Tensor:
        return self.labels

    def encode(self, transformer) -> Encoded:
        if transformer.class_emb is None:
            raise ArvisionError("this model is conditioned on text, not class labels: give prompts")
        return Encoded(transformer.class_emb(self.labels))

    def to(self, device) -> ClassCondition:
        return ClassCondition(self.labels.to(device), self.num_classes)


@dataclass(frozen=True)
class TextCondition(Condition):
    """Prompts: ``ids`` (B, T) int64 token ids of the model's text tokenizer (``arvision.models.text``; padding
    = id 0 for every encoder, so the ids alone say which positions are words) and ``texts`` the B strings they
    came from ("" = the null text, guidance's unconditional half)."""

    ids: torch.Tensor
    texts: tuple[str, ...]
    null_ids: torch.Tensor  # (T,) the null text's ids

    def __post_init__(self):
        if self.ids.ndim != 2 or self.ids.dtype != torch.long or self.ids.shape[0] != len(self.texts):
            raise ArvisionError(f"text ids must be (B, T) int64 with one text per row, got {tuple(self.ids.shape)} "
                                f"{self.ids.dtype} for {len(self.texts)} texts")

    @classmethod
    def of(cls, texts, tokenizer, device=None) -> TextCondition:
        """Prompts (a string or a list of them) through ``tokenizer`` (the model's text tokenizer)."""
        texts = (texts,) if isinstance(texts, str) else tuple(texts)
        return cls(tokenizer(list(texts), device), texts, tokenizer([""], device)[0])

    @property
    def batch(self) -> int:
        return self.ids.shape[0]

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def null(self) -> TextCondition:
        return TextCondition(self.null_ids.expand_as(self.ids).clone(), ("",) * self.batch, self.null_ids)

    def cat(self, other: Condition) -> TextCondition:
        if not isinstance(other, TextCondition) or other.ids.shape[1] != self.ids.shape[1]:
            raise ArvisionError("cannot stack text conditions with other kinds of conditions")
        return TextCondition(torch.cat([self.ids, other.ids]), self.texts + other.texts, self.null_ids)

    def select(self, rows: torch.Tensor) -> TextCondition:
        return TextCondition(self.ids[rows], tuple(self.texts[i] for i in rows.tolist()), self.null_ids)

    def with_null(self, drop: torch.Tensor) -> TextCondition:
        drop = drop.to(self.device)
        ids = torch.where(drop[:, None], self.null_ids.to(self.device), self.ids)
        return TextCondition(ids, tuple("" if d else t for t, d in zip(self.texts, drop.tolist())), self.null_ids)

    def keys(self) -> list[str]:
        return list(self.texts)

    @property
    def values(self) -> list[str]:
        return list(self.texts)

    def encode(self, transformer) -> Encoded:
        if transformer.text_encoder is None:
            raise ArvisionError("this model is conditioned on class labels, not text: give class ids")
        return Encoded(*transformer.text_encoder(self.ids))

    def to(self, device) -> TextCondition:
        return TextCondition(self.ids.to(device), self.texts, self.null_ids.to(device))
