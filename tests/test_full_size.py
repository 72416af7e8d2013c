"""Full-size checks against the released checkpoint layouts (slow: hundreds of millions of parameters).

The key and shape lists of the released files (VAR's ``vae_ch160v4096z32.pth`` / ``var_d16.pth``, LlamaGen's
``vq_ds16_c2i.pt`` / ``c2i_B_256.pt``) were recorded from the official code into
``<repo>/../shared/research/*_state_dict_shapes.json``.  From them we build official-layout state dicts with
random (seeded, small) weights, save them with ``torch.save`` exactly like the released files, and check that

* ``ARPipeline.from_official`` loads them strictly and infers the released architecture from shapes alone,
* one image can be sampled at full size (256px) with the family's published sampling settings,
* ``official_state_dicts()`` gives back exactly the released key set, shapes, dtypes and the loaded values,
* a damaged checkpoint (missing, unexpected and mis-shaped keys) is refused with every bad key named.

Run with ``pytest -m slow tests/test_full_size.py --durations=0``.  Each state dict is built once per module
and only kept on disk (freed from memory right after saving); the files are deleted at module teardown.
"""

from __future__ import annotations

import gc
import json
import math
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from arvision import ARPipeline, CheckpointError
from conftest import missing_reference, research_path

REPO = Path(__file__).resolve().parents[1]
RESEARCH = research_path()
VAR_SHAPES = RESEARCH / "var_state_dict_shapes.json"
LLAMAGEN_SHAPES = RESEARCH / "llamagen_state_dict_shapes.json"

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
VAR_L = sum(p * p for p in PATCH_NUMS)  # 680
DTYPES = {"float32": torch.float32, "int64": torch.int64}

# Affine weights of GroupNorm (tokenizers) and RMSNorm (LlamaGen GPT): kept near 1 so activations stay sane.
NORM_NAMES = {"norm", "norm1", "norm2", "norm_out", "attention_norm", "ffn_norm"}


def _is_norm_weight(key: str) -> bool:
    parts = key.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in NORM_NAMES


def _load_shapes(path: Path) -> dict:
    if not path.is_file():
        missing_reference(f"released state-dict shape list not found: {path}")
    return json.loads(path.read_text())


def _small(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).mul_(0.02)


def _near_one(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).mul_(0.02).add_(1.0)


def _free() -> None:
    gc.collect()


@contextmanager
def _torch_threads(n: int):
    """Run with n intra-op threads, then restore.  LlamaGen's token-by-token loop is memory-bound: on this
    2-core box 2 threads gain nothing when the machine is quiet (16 s either way) but are 7x slower when one
    other busy process shares the cores (173 s vs 25 s, OpenMP threads waiting on each other).  The tokens
    are the same whatever the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- oracles for the buffers, written independently of arvision's Schedule ---------------------------------
def _level_ids() -> torch.Tensor:
    """(1, L) int64: level (scale index) of each position, as VAR's ``lvl_1L``."""
    return torch.cat([torch.full((p * p,), i, dtype=torch.int64) for i, p in enumerate(PATCH_NUMS)])[None]


def _block_causal_bias() -> torch.Tensor:
    """(1, 1, L, L) float32: 0 where level(key) <= level(query), -inf elsewhere (VAR's attn_bias_for_masking)."""
    lvl = _level_ids()[0]
    visible = lvl[None, :] <= lvl[:, None]  # [query, key]
    return torch.where(visible, 0.0, -math.inf).to(torch.float32)[None, None]


# -- official-layout state dicts from the recorded key lists ---------------------------------------------
def build_var_vae(spec: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, info in spec.items():
        shape, dtype = tuple(info["shape"]), DTYPES[info["dtype"]]
        if key == "quantize.ema_vocab_hit_SV":
            t = torch.zeros(shape)
        elif _is_norm_weight(key):
            t = _near_one(shape, gen)
        else:
            assert dtype == torch.float32, f"unplanned non-float key in the VQ-VAE list: {key} {info}"
            t = _small(shape, gen)
        assert t.dtype == dtype and tuple(t.shape) == shape, key
        sd[key] = t
    return sd


def build_var_transformer(spec: dict, seed: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, info in spec.items():
        shape, dtype = tuple(info["shape"]), DTYPES[info["dtype"]]
        if key == "lvl_1L":
            t = _level_ids()
        elif key == "attn_bias_for_masking":
            t = _block_causal_bias()
        elif key.endswith(".attn.zero_k_bias"):
            t = torch.zeros(shape)
        elif key.endswith(".attn.scale_mul_1H11"):
            t = torch.full(shape, math.log(4.0))
        else:
            assert dtype == torch.float32, f"unplanned non-float key in the VAR list: {key} {info}"
            t = _small(shape, gen)
        assert t.dtype == dtype and tuple(t.shape) == shape, (key, t.dtype, t.shape, info)
        sd[key] = t
    return sd


def build_llamagen(spec: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in spec.items():
        shape = tuple(shape)
        if key == "quantize.codebook_used":
            t = torch.zeros(shape)
        elif key.endswith(("attention_norm.weight", "ffn_norm.weight")) or key == "norm.weight":
            t = torch.ones(shape)  # RMSNorm
        elif _is_norm_weight(key):
            t = _near_one(shape, gen)  # GroupNorm
        else:
            t = _small(shape, gen)
        sd[key] = t
    return sd


def _save(sd: dict, path: Path) -> Path:
    torch.save(sd, path)
    return path


def _assert_layout(exported: dict[str, torch.Tensor], spec: dict, what: str, with_dtype: bool) -> None:
    """exported keys, shapes (and dtypes) == the released list, reported key by key."""
    missing = sorted(set(spec) - set(exported))
    extra = sorted(set(exported) - set(spec))
    assert not missing and not extra, f"{what}: keys absent from our export {missing}; keys not released {extra}"
    bad = []
    for key, info in spec.items():
        shape = info["shape"] if isinstance(info, dict) else info
        if list(exported[key].shape) != list(shape):
            bad.append(f"{key}: ours {list(exported[key].shape)}, released {shape}")
        if with_dtype and exported[key].dtype != DTYPES[info["dtype"]]:
            bad.append(f"{key}: ours {exported[key].dtype}, released {info['dtype']}")
    assert not bad, f"{what}: " + "; ".join(bad)


def _assert_same_values(exported: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Every exported tensor equals what the checkpoint file holds (the load was a faithful copy)."""
    original = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    differ = [k for k, v in original.items() if not torch.equal(exported[k], v)]
    del original
    assert not differ, f"{what}: exported values differ from the loaded checkpoint at {differ[:10]}"


def _assert_image(images, size: int) -> None:
    assert isinstance(images, torch.Tensor)
    assert images.shape == (1, 3, size, size)
    assert images.dtype == torch.float32
    assert torch.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 0  # not a blank canvas


# -- VAR-d16, 256px ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def var_files(tmp_path_factory):
    shapes = _load_shapes(VAR_SHAPES)
    vae_spec = shapes["vqvae_vae_ch160v4096z32"]["state_dict"]
    var_spec = shapes["var_d16"]["state_dict"]
    folder = tmp_path_factory.mktemp("var_d16_official")
    vae = _save(build_var_vae(vae_spec), folder / "vae_ch160v4096z32.pth")
    _free()
    var = _save(build_var_transformer(var_spec), folder / "var_d16.pth")
    _free()
    yield SimpleNamespace(folder=folder, vae=vae, var=var, vae_spec=vae_spec, var_spec=var_spec)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def var_pipe(var_files):
    pipe = ARPipeline.from_official("var", var_files.vae, var_files.var)
    yield pipe
    del pipe
    _free()


@pytest.mark.slow
def test_var_d16_256_loads_infers_and_samples(var_pipe):
    cfg = var_pipe.config
    assert cfg.family == "var"
    assert cfg.image_size == 256
    tr, tok = cfg.transformer, cfg.tokenizer
    assert (tr.depth, tr.width, tr.num_heads) == (16, 1024, 16)
    assert tr.num_classes == 1000 and cfg.num_classes == 1000
    assert tr.vocab_size == 4096 and tok.vocab_size == 4096
    assert tok.patch_nums == PATCH_NUMS
    assert (tok.ch, tok.ch_mult, tok.z_channels, tok.embed_dim) == (160, (1, 1, 2, 2, 4), 32, 32)
    assert tok.share_quant_resi == 4
    assert not tr.shared_adaln and tr.attn_l2_norm and tr.mlp_ratio == 4.0
    # the released parameter counts (buffers excluded)
    assert sum(p.numel() for p in var_pipe.transformer.parameters()) == 310_283_520
    assert sum(p.numel() for p in var_pipe.tokenizer.parameters()) == 108_948_355

    out = var_pipe(207, guidance_scale=1.5, top_k=900, top_p=0.96,
                   generator=torch.Generator().manual_seed(0), output_type="pt")
    _assert_image(out.images, 256)
    assert out.class_labels == [207]
    assert out.tokens.shape == (1, VAR_L) and out.tokens.dtype == torch.int64
    assert 0 <= int(out.tokens.min()) and int(out.tokens.max()) < 4096
    assert len(out.step_tokens) == 10
    assert [tuple(t.shape) for t in out.step_tokens] == [(1, p * p) for p in PATCH_NUMS]
    assert torch.equal(torch.cat(out.step_tokens, dim=1), out.tokens)


@pytest.mark.slow
def test_var_d16_256_export_is_the_released_layout(var_pipe, var_files):
    vae_sd, var_sd = var_pipe.official_state_dicts()
    _assert_layout(vae_sd, var_files.vae_spec, "VQ-VAE vae_ch160v4096z32", with_dtype=True)
    _assert_layout(var_sd, var_files.var_spec, "VAR-d16", with_dtype=True)
    # the exported buffers are the official ones, and every weight is the one that was loaded
    assert torch.equal(var_sd["lvl_1L"], _level_ids())
    assert torch.equal(var_sd["attn_bias_for_masking"], _block_causal_bias())
    _assert_same_values(vae_sd, var_files.vae, "VQ-VAE")
    del vae_sd
    _free()
    _assert_same_values(var_sd, var_files.var, "VAR-d16")
    del var_sd
    _free()


@pytest.mark.slow
def test_var_d16_strict_load_names_every_bad_key(var_files, tmp_path):
    sd = torch.load(var_files.var, map_location="cpu", weights_only=True, mmap=True)
    dropped, added, reshaped = "blocks.11.ada_lin.1.bias", "lvl_embed.bias", "blocks.5.attn.proj.bias"
    assert dropped in sd and added not in sd and reshaped in sd
    del sd[dropped]
    sd[added] = torch.zeros(1024)
    sd[reshaped] = torch.zeros(1023)  # released: [1024]
    broken = _save(sd, tmp_path / "var_d16_broken.pth")
    del sd
    _free()
    try:
        with pytest.raises(CheckpointError) as excinfo:
            ARPipeline.from_official("var", var_files.vae, broken)
    finally:
        broken.unlink()
        _free()
    msg = str(excinfo.value)
    assert "var_d16_broken.pth" in msg
    for kind, key in (("missing", dropped), ("unexpected", added), ("mis-shaped", reshaped)):
        assert re.search(re.escape(kind) + r"[^;]*\b" + re.escape(key) + r"\b", msg), (kind, key, msg)
    assert "[1023]" in msg and "[1024]" in msg, msg


# -- LlamaGen GPT-B with VQ-16, 256px ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llamagen_files(tmp_path_factory):
    shapes = _load_shapes(LLAMAGEN_SHAPES)
    vq_spec = shapes["VQ-16"]["state_dict"]
    gpt_spec = shapes["GPT-B_256"]["state_dict"]
    folder = tmp_path_factory.mktemp("llamagen_b_official")
    vq = _save(build_llamagen(vq_spec, seed=3), folder / "vq_ds16_c2i.pt")
    _free()
    gpt = _save(build_llamagen(gpt_spec, seed=4), folder / "c2i_B_256.pt")
    _free()
    yield SimpleNamespace(folder=folder, vq=vq, gpt=gpt, vq_spec=vq_spec, gpt_spec=gpt_spec)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def llamagen_pipe(llamagen_files):
    pipe = ARPipeline.from_official("llamagen", llamagen_files.vq, llamagen_files.gpt)
    yield pipe
    del pipe
    _free()


@pytest.mark.slow
def test_llamagen_gpt_b_256_loads_infers_and_samples(llamagen_pipe):
    cfg = llamagen_pipe.config
    assert cfg.family == "llamagen"
    assert cfg.image_size == 256 and cfg.latent_size == 16
    tr, tok = cfg.transformer, cfg.tokenizer
    assert (tr.depth, tr.width, tr.num_heads) == (12, 768, 12)
    assert tr.vocab_size == 16384 and tok.vocab_size == 16384
    assert tr.num_classes == 1000 and cfg.num_classes == 1000
    assert tr.ffn_hidden == 2048
    assert (tok.ch, tok.ch_mult, tok.z_channels, tok.embed_dim) == (128, (1, 1, 2, 2, 4), 256, 8)
    assert tok.attn_style == "split" and tok.quant_conv_ks == 1 and tok.l2_norm
    # the released parameter counts (buffers excluded)
    assert sum(p.numel() for p in llamagen_pipe.transformer.parameters()) == 110_888_448
    assert sum(p.numel() for p in llamagen_pipe.tokenizer.parameters()) == 71_883_403

    with _torch_threads(1):
        out = llamagen_pipe(207, guidance_scale=4.0, top_k=0, top_p=0.0,
                            generator=torch.Generator().manual_seed(0), output_type="pt")
    _assert_image(out.images, 256)
    assert out.class_labels == [207]
    assert out.tokens.shape == (1, 256) and out.tokens.dtype == torch.int64
    assert 0 <= int(out.tokens.min()) and int(out.tokens.max()) < 16384


@pytest.mark.slow
def test_llamagen_gpt_b_256_export_is_the_released_layout(llamagen_pipe, llamagen_files):
    vq_sd, gpt_sd = llamagen_pipe.official_state_dicts()
    _assert_layout(vq_sd, llamagen_files.vq_spec, "VQ-16", with_dtype=False)
    _assert_layout(gpt_sd, llamagen_files.gpt_spec, "GPT-B_256", with_dtype=False)
    _assert_same_values(vq_sd, llamagen_files.vq, "VQ-16")
    _assert_same_values(gpt_sd, llamagen_files.gpt, "GPT-B_256")
