"""Shared test setup: where the reference vectors live, and a modest thread count for small CPU machines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

# The models under test are tiny; more threads only add overhead on the 2-core CI machines.
torch.set_num_threads(2)


def vectors_path() -> Path:
    """``<repo>/../shared/vectors``: reference outputs of the official VAR / LlamaGen code."""
    return REPO_ROOT.parent / "shared" / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The reference-vectors folder; tests using it are skipped when it is absent."""
    path = vectors_path()
    if not path.is_dir():
        pytest.skip(f"reference vectors not found at {path}: they are produced by the official code and "
                    "shipped next to the repository as ../shared/vectors")
    return path
