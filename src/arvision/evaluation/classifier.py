"""A small digit classifier for judging MNIST-like samples: accuracy by class, and a classifier-FID.

The Inception network behind the standard FID was trained on ImageNet photographs; on 28x28 digits its features say
little.  :class:`MnistClassifier` is a small CNN trained on the 5,000 mnist-5k digits
(``bench/train_mnist_classifier.py`` is the recipe); its penultimate layer (:meth:`MnistClassifier.features`) gives
a digit-aware feature space for a Fréchet distance, and its logits tell whether a class-conditional model draws the
digit it was asked for.

The shipped weights (``arvision/assets/mnist_classifier.safetensors``) hold the architecture in the file's metadata,
so a variant trained with other widths or another seed (``--out`` of the training script) loads the same way::

    model = load_mnist_classifier()                 # the shipped one
    other = load_mnist_classifier("other.safetensors")
    labels = classify_images(images)                # (B,) int64
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arvision.errors import ArvisionError

__all__ = [
    "ASSET_PATH",
    "HOLDOUT_EVERY",
    "MnistClassifier",
    "classifier_features",
    "classifier_report",
    "classify_images",
    "load_mnist_classifier",
    "mnist5k_split",
    "to_classifier_input",
]

ASSET_PATH = Path(__file__).resolve().parent.parent / "assets" / "mnist_classifier.safetensors"
"""The shipped weights (trained by ``bench/train_mnist_classifier.py``)."""

HOLDOUT_EVERY = 10
"""mnist-5k item ``i`` is held out from training when ``i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1`` (500 digits, 50 per
class, since the file holds 500 consecutive rows per digit).  The split does not depend on the training seed, so every
classifier trained by the recipe is scored on the same 500 digits."""

_DEFAULT_CHANNELS = (32, 64, 128)
_DEFAULT_FEATURE_DIM = 128


def mnist5k_split(n: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of mnist-5k: every ``HOLDOUT_EVERY``-th item is held out (see above)."""
    idx = np.arange(n)
    held = idx % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    return idx[~held], idx[held]


class MnistClassifier(nn.Module):
    """CNN for 28x28 grey digits, input ``(B, 1, 28, 28)`` float in [-1, 1] (white ink on black, background -1).

    ``conv(1->c0) pool | conv(c0->c1) conv(c1->c1) pool | conv(c1->c2) pool | linear(c2*9 -> feature_dim) | linear``
    (to 10 logits), with batch norm and ReLU after every convolution; about 280k parameters with the default widths
    (32, 64, 128).
    """

    def __init__(self, channels: Sequence[int] = _DEFAULT_CHANNELS, feature_dim: int = _DEFAULT_FEATURE_DIM,
                 dropout: float = 0.25):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 3 or min(channels) < 1 or int(feature_dim) < 1:
            raise ArvisionError(f"channels must be three positive widths and feature_dim positive, got "
                                f"{channels} and {feature_dim}")
        c0, c1, c2 = channels
        self.channels = channels
        self.feature_dim = int(feature_dim)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(1, c0), nn.MaxPool2d(2),  # 28 -> 14
            *block(c0, c1), *block(c1, c1), nn.MaxPool2d(2),  # 14 -> 7
            *block(c1, c2), nn.MaxPool2d(2),  # 7 -> 3
        )
        self.fc = nn.Linear(c2 * 3 * 3, self.feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, 10)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ArvisionError(f"MnistClassifier expects (B, 1, 28, 28) input in [-1, 1], got shape "
                                f"{tuple(x.shape)}; use to_classifier_input() to convert images")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(B, feature_dim)`` (after ReLU, before dropout): the classifier-FID space."""
        self._check(x)
        return F.relu(self.fc(self.body(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 10)``."""
        return self.head(self.dropout(self.features(x)))

    def config(self) -> dict[str, str]:
        """The architecture as string metadata (stored in the safetensors header)."""
        return {"arch": "MnistClassifier", "channels": ",".join(map(str, self.channels)),
                "feature_dim": str(self.feature_dim)}


def load_mnist_classifier(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> MnistClassifier:
    """Load a classifier saved by ``bench/train_mnist_classifier.py`` (default: the shipped one), in eval mode.

    The architecture comes from the file's metadata; the state dict must match it exactly (strict loading).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else ASSET_PATH
    if not path.is_file():
        raise ArvisionError(f"classifier weights not found: {path}"
                            + (" (the package was installed without its assets)" if path == ASSET_PATH else ""))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:
        raise ArvisionError(f"cannot read classifier weights {path}: {e}") from e
    if meta.get("arch", "MnistClassifier") != "MnistClassifier":
        raise ArvisionError(f"{path} holds a {meta['arch']!r}, not an MnistClassifier")
    try:
        channels = tuple(int(c) for c in meta.get("channels", ",".join(map(str, _DEFAULT_CHANNELS))).split(","))
        feature_dim = int(meta.get("feature_dim", _DEFAULT_FEATURE_DIM))
    except ValueError as e:
        raise ArvisionError(f"bad architecture metadata in {path}: {meta}") from e
    model = MnistClassifier(channels, feature_dim)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArvisionError(f"{path} does not fit MnistClassifier(channels={channels}, feature_dim={feature_dim}): "
                            f"{e}") from e
    return model.eval().to(device)


_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L")


def to_classifier_input(images) -> torch.Tensor:
    """Convert images to the classifier's input: float32 ``(B, 1, 28, 28)`` in [-1, 1].

    Accepts a float tensor ``(B, C, H, W)`` in [-1, 1] (C = 1 or 3, as the datasets and pipelines produce), a uint8
    tensor or array ``(B, C, H, W)`` in [0, 255], or a list of PIL images.  Colour is turned grey with the ITU-R 601
    weights (as PIL's ``convert("L")``); other sizes are resized to 28x28 (bilinear, antialiased when shrinking).
    Digits are expected white on black, like MNIST.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ArvisionError("no images given")
        from PIL import Image

        arrs = []
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise ArvisionError(f"item {i} of the image list is a {type(im).__name__}, expected a PIL image")
            arrs.append(np.asarray(im.convert("L"), dtype=np.uint8))
        if len({a.shape for a in arrs}) > 1:
            # resize each to 28x28 first so differing sizes can be stacked
            arrs = [np.asarray(Image.fromarray(a).resize((28, 28), Image.BILINEAR)) if a.shape != (28, 28) else a
                    for a in arrs]
        x = torch.from_numpy(np.stack(arrs)[:, None].astype(np.float32)).div_(127.5).sub_(1.0)
    else:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if not isinstance(images, torch.Tensor):
            raise ArvisionError(
                f"images must be a tensor, an array or a list of PIL images, got {type(images).__name__}"
            )
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ArvisionError(f"images must have shape (B, 1 or 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            x = images.float().div(127.5).sub(1.0)
        elif images.is_floating_point():
            x = images.float()
        else:
            raise ArvisionError(f"images must be uint8 in [0, 255] or float in [-1, 1], got dtype {images.dtype}")
        if x.shape[1] == 3:
            w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
    x = x.clamp(-1.0, 1.0)
    if tuple(x.shape[2:]) != (28, 28):
        shrink = x.shape[2] > 28 or x.shape[3] > 28
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=shrink)
    return x.contiguous()


def classify_images(images, model: MnistClassifier | None = None, batch_size: int = 500,
                    return_logits: bool = False) -> torch.Tensor:
    """Predicted digit ``(B,)`` int64 for images in any form :func:`to_classifier_input` takes (logits if asked)."""
    logits = classifier_features(images, model, batch_size)[0]
    return logits if return_logits else logits.argmax(1)


_CACHED: dict[str, MnistClassifier] = {}


def _default_model() -> MnistClassifier:
    if "default" not in _CACHED:
        _CACHED["default"] = load_mnist_classifier()
    return _CACHED["default"]


@torch.no_grad()
def classifier_features(images, model: MnistClassifier | None = None, batch_size: int = 500
                        ) -> tuple[torch.Tensor, np.ndarray]:
    """``(logits (B, 10), penultimate features (B, feature_dim) float64)`` of images in any accepted form."""
    model = model if model is not None else _default_model()
    x = to_classifier_input(images)
    device = next(model.parameters()).device
    logits, feats = [], []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size].to(device)
        f = model.features(chunk)
        feats.append(f.double().cpu())
        logits.append(model.head(f).float().cpu())  # eval mode: dropout is the identity
    return torch.cat(logits), torch.cat(feats).numpy()


def _real_mnist5k_features(model: MnistClassifier, image_size: int) -> np.ndarray:
    """Features of the 5,000 real digits after the same resize chain as generated ``image_size`` images: 28 px ->
    ``image_size`` (as a model's training data) -> the classifier's 28 px.  Comparing native 28 px digits with
    generated 32 px ones would add the resize's blur to the distance."""
    from arvision.training.datasets import Mnist5k

    ds = Mnist5k(image_size=image_size)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    images = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # quantised like saved samples
    return classifier_features(images, model)[1]


def _image_size(images) -> int:
    if isinstance(images, (list, tuple)):
        return images[0].size[1]
    return int(images.shape[-2])


def classifier_report(images, labels: Sequence[int] | None = None, *, fid_real: str | None = None,
                      model: MnistClassifier | None = None) -> dict:
    """Accuracy of digit images against the classes they were drawn for, and optionally a classifier-FID.

    Returns ``{"predicted": (B,) int64, "counts": [10 ints]}`` plus, with ``labels``, ``"accuracy"`` and
    ``"per_class"`` ``{k: accuracy}``, and with ``fid_real="mnist-5k"``, ``"fid"``: the Fréchet distance on the
    classifier's penultimate features against all 5,000 real digits, resized to the images' size first (as a
    model trained at that size saw them) and quantised to uint8 like saved samples.
    """
    from arvision.evaluation.fid import fid_from_features

    model = model if model is not None else _default_model()
    logits, feats = classifier_features(images, model)
    pred = logits.argmax(1)
    report: dict = {"predicted": pred, "counts": torch.bincount(pred, minlength=10).tolist()}
    if labels is not None:
        lab = torch.as_tensor(list(labels), dtype=torch.long)
        if lab.shape != pred.shape:
            raise ArvisionError(f"got {len(lab)} labels for {len(pred)} images")
        report["accuracy"] = (pred == lab).float().mean().item()
        report["per_class"] = {int(k): (pred[lab == k] == k).float().mean().item() for k in lab.unique()}
    if fid_real is not None:
        if fid_real != "mnist-5k":
            raise ArvisionError(f"unknown reference set {fid_real!r}; only 'mnist-5k' is built in")
        report["fid"] = fid_from_features(feats, _real_mnist5k_features(model, _image_size(images)))
    return report
