"""What an image is conditioned on, as one object the whole engine passes around.

A :class:`Condition` holds one row per image.  The loop and its options never look inside it; they ask it for
what they need:

* ``null()``        the unconditional rows of the same batch (the second half of classifier-free guidance);
* ``cat(other)``    rows stacked ([cond; uncond] for guidance);
* ``select(rows)``  rows kept, dropped or repeated (search controllers re-batching a run);
* ``with_null(m)``  rows where ``m`` is True replaced by the null condition (training's condition dropout);
* ``keys()``        a hashable identity per row (watermark list choice, captions);
* ``values``        what a verifier or reward scores against (class ids for class conditions);
* ``encode(t)``     the trunk's embedding of the rows, through the encoder of transformer ``t`` that fits this
                    kind of condition.

Class labels are the first kind; text and control conditions are further subclasses with their own encoder,
not edits of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arvision.errors import ArvisionError


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

    def encode(self, transformer) -> torch.Tensor:
        """-> (B, C) the condition embedding the trunk is fed (prefix token and AdaLN input)."""
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

    def encode(self, transformer) -> torch.Tensor:
        return transformer.class_emb(self.labels)

    def to(self, device) -> ClassCondition:
        return ClassCondition(self.labels.to(device), self.num_classes)
