"""Verifiers: what a search controller (``arvision.sampling.search``) ranks candidate images by.

A verifier is any callable ``verifier(images, labels) -> scores``:

* ``images`` (B, 3, H, W) float32 in **[-1, 1]** (the decoder's range; partial images included);
* ``labels`` (B,) int64, the class each image was asked to be;
* ``scores`` (B,) float32 on the CPU, higher is better.

It may also have ``features(images) -> (B, F)`` float32, the space TTS-VAR clusters coarse images in; without it
the controllers cluster on grey 16x16 pixels (:func:`pixel_features`).

:class:`ClassifierVerifier` scores ``log p(target class | image)`` with an
:class:`~arvision.evaluation.classifier.MnistClassifier` (the bundled one by default).  Judge a search with a
*different* classifier than the one it searched with (``bench/search_eval.py`` does): the search optimises the
verifier's own score, so that score says little about whether the digits really got better.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from arvision.errors import ArvisionError


@runtime_checkable
class Verifier(Protocol):
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1], labels (B,) int64 -> scores (B,) float32, higher is better."""


class ClassifierVerifier:
    """``log p_clf(y = label | image)`` of an MNIST digit classifier (10 classes).

    model: an ``MnistClassifier``, or a path to weights saved by ``bench/train_mnist_classifier.py``; None loads
    the classifier shipped with arvision.  ``features`` gives its penultimate activations (B, feature_dim).
    """

    num_classes = 10

    def __init__(self, model=None):
        from arvision.evaluation.classifier import MnistClassifier, load_mnist_classifier

        if model is None or isinstance(model, (str, os.PathLike)):
            model = load_mnist_classifier(model)
        if not isinstance(model, MnistClassifier):
            raise ArvisionError(f"ClassifierVerifier needs an MnistClassifier or a weights path, got "
                                f"{type(model).__name__}")
        self.model = model.eval()

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from arvision.evaluation.classifier import classifier_features

        if not (isinstance(images, torch.Tensor) and images.is_floating_point() and images.ndim == 4):
            raise ArvisionError("the verifier takes float images (B, 3, H, W) in [-1, 1]")
        logits, feats = classifier_features(images.detach().float(), self.model)
        return logits, torch.from_numpy(feats).float()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ArvisionError(f"the classifier verifier scores digits 0..{self.num_classes - 1}; got labels "
                                f"{sorted(set(labels.tolist()))} (pass a verifier that knows this model's classes)")
        logits = self._forward(images)[0]
        return logits.log_softmax(1).gather(1, labels[:, None])[:, 0]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward(images)[1]


def pixel_features(images: torch.Tensor, side: int = 16) -> torch.Tensor:
    """images (B, 3, H, W) in [-1, 1] -> grey pixels at side x side, flattened (B, side^2) float32 on the CPU."""
    grey = images.detach().float().mean(1, keepdim=True)
    return F.interpolate(grey, size=(side, side), mode="area").flatten(1).cpu()


def verifier_features(verifier, images: torch.Tensor) -> torch.Tensor:
    """The verifier's own features when it has them, else :func:`pixel_features`."""
    feats = getattr(verifier, "features", None)
    return torch.as_tensor(feats(images)).float().cpu() if callable(feats) else pixel_features(images)


def resolve_verifier(verifier, num_classes: int):
    """None -> the bundled digit classifier (10-class models only); a str/path -> a classifier from that file;
    a callable passes through."""
    if verifier is None or isinstance(verifier, (str, os.PathLike)):
        if num_classes != ClassifierVerifier.num_classes:
            raise ArvisionError(f"the default verifier is the bundled MNIST digit classifier (10 classes); this "
                                f"model has {num_classes} classes: pass verifier=<callable(images, labels)>")
        return ClassifierVerifier(verifier)
    if not callable(verifier):
        raise ArvisionError(f"a verifier must be callable(images, labels) -> scores, got {type(verifier).__name__}")
    return verifier
