"""What each training image is conditioned on, and how a step draws its batch's conditions.

* :class:`ClassLabels`: one class id per image;
* :class:`Captions`: K candidate captions per image (word ids of the model's text tokenizer), one drawn per step.

Both give ``batch(idx, drop, choice)`` -> a :class:`~arvision.conditions.Condition` of those rows with the rows
where ``drop`` is True replaced by the null condition (classifier-free guidance's dropout), and ``preview()`` ->
the condition of the periodic sample grids.
"""

from __future__ import annotations

import torch

from arvision.conditions import ClassCondition, Condition, TextCondition
from arvision.errors import ArvisionError


class ClassLabels:
    """labels (N,) int64 in [0, num_classes)."""

    draws = 0  # random numbers a step draws per image beyond the dropout (none: the label is fixed)

    def __init__(self, labels: torch.Tensor, num_classes: int):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ArvisionError(f"labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
        self.labels, self.num_classes = labels, num_classes

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, idx: torch.Tensor, drop: torch.Tensor, choice: torch.Tensor | None, device) -> Condition:
        return ClassCondition(self.labels[idx].to(device), self.num_classes).with_null(drop)

    def preview(self, max_rows: int = 10) -> Condition:
        return ClassCondition(torch.arange(min(self.num_classes, max_rows)), self.num_classes)


class Captions:
    """ids (N, K, T) int64: K captions per image as word ids; texts: N lists of the K strings; null_ids (T,)."""

    draws = 1  # which of the K captions

    def __init__(self, ids: torch.Tensor, texts: list[list[str]], null_ids: torch.Tensor):
        if ids.ndim != 3 or len(texts) != ids.shape[0] or any(len(t) != ids.shape[1] for t in texts):
            raise ArvisionError(f"captions must be (N, K, T) ids with K texts per image, got {tuple(ids.shape)}")
        self.ids, self.texts, self.null_ids = ids, texts, null_ids

    @classmethod
    def of(cls, texts: list[list[str]], tokenizer) -> Captions:
        """K caption strings per image -> their ids through the model's text ``tokenizer``."""
        K = len(texts[0]) if texts else 0
        flat = [t for row in texts for t in row]
        ids = tokenizer(flat).view(len(texts), K, -1)
        return cls(ids, texts, tokenizer([""])[0])

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, idx: torch.Tensor, drop: torch.Tensor, choice: torch.Tensor | None, device) -> Condition:
        """choice (b,) int64 in [0, K): which caption of each row."""
        k = choice % self.ids.shape[1]
        texts = tuple(self.texts[i][j] for i, j in zip(idx.tolist(), k.tolist()))
        cond = TextCondition(self.ids[idx, k].to(device), texts, self.null_ids.to(device))
        return cond.with_null(drop)

    def preview(self, max_rows: int = 10) -> Condition:
        rows = torch.arange(min(len(self), max_rows))
        return TextCondition(self.ids[rows, 0], tuple(self.texts[i][0] for i in rows.tolist()), self.null_ids)
