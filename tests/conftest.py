"""Shared test setup: where the reference vectors live, and a modest thread count for small CPU machines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

# The models under test are tiny; more threads only add overhead on the 2-core CI machines.
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _torch_threads():
    """Every test starts and ends with torch's thread count as the session began: a test that changes it (an
    in-process `arvision bench --threads 400` in the option fuzzer) must not slow every later test."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small random VAR model folder (10 classes, 64 codes), written once per test module."""
    from arvision.bundled import tiny_random_pipeline

    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_random_pipeline(seed=1).save_pretrained(folder)
    return folder


def tiny_raster_pipeline(seed: int = 0):
    """A tiny random LlamaGen-style model: 4x4 tokens (16 raster steps), 8 px images, 3 classes."""
    from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
    from arvision.pipeline import ARPipeline

    torch.manual_seed(seed)
    tok = TokenizerConfig(kind="vq", vocab_size=50, embed_dim=8, z_channels=16, ch=32, ch_mult=(1, 1),
                          num_res_blocks=1, attn_style="split", quant_conv_ks=1, l2_norm=True)
    tr = TransformerConfig(block="llama", width=64, depth=2, num_heads=2, vocab_size=50, num_classes=3,
                           in_channels=8)
    pipe = ARPipeline(ModelConfig(family="llamagen", image_size=8, tokenizer=tok, transformer=tr))
    pipe.transformer.init_weights()
    return pipe


@pytest.fixture(scope="module")
def tok64(tmp_path_factory):
    """A tiny random multi-scale tokenizer folder for the shapes dataset's 64 px images (8x8 latent)."""
    from arvision.config import TokenizerConfig
    from arvision.tokenizers.models import build_tokenizer
    from arvision.training.tokenizer_trainer import save_tokenizer_folder

    torch.manual_seed(0)
    cfg = TokenizerConfig(kind="multiscale", vocab_size=32, embed_dim=8, z_channels=8, ch=32, ch_mult=(1, 1, 1, 1),
                          num_res_blocks=1, patch_nums=(1, 2, 4, 8))
    return save_tokenizer_folder(tmp_path_factory.mktemp("tok64"), build_tokenizer(cfg), 64)


@pytest.fixture()
def few_shapes(monkeypatch):
    """``--data shapes`` as 6 scenes (the real dataset has 20,000: too many to tokenise in a test)."""
    import arvision.cli.train as train
    from arvision.training.datasets import Shapes

    monkeypatch.setattr(train, "_dataset", lambda spec, size, seed, augment: Shapes(size, num_scenes=6))


def random_image_folder(root: Path, size: int, classes=("a", "b"), per_class: int = 4) -> Path:
    """An image-folder data set of random RGB noise (one sub-folder per class), for CLI training tests."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in classes:
        (root / k).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / k / f"{i}.png")
    return root


def _setting(name: str, default: Path) -> Path:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else default


def vectors_path() -> Path:
    """Reference outputs of the official code: ``$ARVISION_VECTORS``, else ``<repo>/../shared/vectors``."""
    return _setting("ARVISION_VECTORS", REPO_ROOT.parent / "shared" / "vectors")


def research_path() -> Path:
    """Recorded shapes of the released checkpoints: ``$ARVISION_RESEARCH``, else ``<repo>/../shared/research``."""
    return _setting("ARVISION_RESEARCH", REPO_ROOT.parent / "shared" / "research")


def references_required() -> bool:
    """``ARVISION_REQUIRE_REFERENCES=1`` (set by ``.ci/run`` when the reference folders exist): a missing reference
    file fails its test instead of skipping it, so parity cannot silently go unproven."""
    return os.environ.get("ARVISION_REQUIRE_REFERENCES", "") not in ("", "0")


def missing_reference(message: str):
    """Skip the calling test for a missing reference file, or fail it when references are required."""
    hint = (" (set ARVISION_VECTORS / ARVISION_RESEARCH to the folders, or get them as the README's "
            "'Parity with the official code' says)")
    if references_required():
        pytest.fail(message + hint + "; ARVISION_REQUIRE_REFERENCES is set, so this is a failure", pytrace=False)
    pytest.skip(message + hint)


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The reference-vectors folder; tests using it are skipped when it is absent (failed when required)."""
    path = vectors_path()
    if not path.is_dir():
        missing_reference(f"reference vectors not found at {path}")
    return path


_REFERENCE_RUNS = {"ran": 0}


def pytest_runtest_logreport(report) -> None:
    # count the parity tests that actually ran (they all take the vectors_dir fixture, directly or indirectly)
    if report.when == "call" and dict(report.user_properties).get("uses_vectors"):
        _REFERENCE_RUNS["ran"] += 1


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        item.user_properties.append(("uses_vectors", "vectors_dir" in item.fixturenames))


def pytest_sessionfinish(session, exitstatus) -> None:
    """With references required, a session that collected parity tests but ran none of them fails."""
    if not references_required() or session.config.option.collectonly:
        return
    collected = [i for i in session.items if "vectors_dir" in i.fixturenames]
    if collected and _REFERENCE_RUNS["ran"] == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nerror: {len(collected)} parity tests were collected but none ran although "
              "ARVISION_REQUIRE_REFERENCES is set")
