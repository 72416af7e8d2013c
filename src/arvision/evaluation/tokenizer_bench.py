"""How well a model's tokenizer round-trips images -- a small benchmark in the spirit of VTBench.

Images from a named set are encoded with the model's tokenizer, decoded, and the reconstructions are compared with the
originals (both as uint8 RGB, ``(n, S, S, 3)`` with ``S`` the tokenizer's native image size)::

    pipe = ARPipeline.from_pretrained(bundled_model_dir())
    res = benchmark_tokenizer(pipe, "mnist-5k", n=64)
    print(format_table([res]))
    write_side_by_side([res], "recon.png")

Metrics (per image, then the mean over the ``n`` images unless said otherwise):

* **PSNR** (dB) on the uint8 images: ``10 log10(255^2 / MSE)`` with the MSE over all ``S*S*3`` values; ``inf`` for an
  exact reconstruction (so the mean is ``inf`` if any image is exact).
* **SSIM**: ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=255)`` with the default 7x7
  uniform window (``win_size=7``), which is valid for images of 7 px and more (32 px digits included); smaller images
  use the largest odd window that fits (at least 3 px).
* **perceptual** distance, LPIPS-like but with no learned weights, on TF-Inception's ``mixed_6/conv`` feature maps
  ``F`` of shape ``(192, 17, 17)`` (:meth:`InceptionFeatures.spatial_maps`): each position's 192-channel vector is
  unit-normalised, ``F^(p) = F(p) / (||F(p)||_2 + 1e-10)``, and

      d(x, y) = 1/(17*17) * sum_p sum_c (F_x^(p)_c - F_y^(p)_c)^2          (in [0, 4]; 0 for identical images)

  i.e. LPIPS's formula for one layer with all channel weights 1.
* **rFID**: the Fréchet distance between the TF-Inception pool features (2048-d) of the originals and of the
  reconstructions (:func:`~arvision.evaluation.fid.fid_from_features` with ``method="eigh"``, in the span of the
  samples: :func:`rfid_from_features`).  With ``n`` far below
  2049 both covariances are rank-deficient: the number is biased upward and only comparable at the same ``n``, which
  is therefore always reported beside it (``rfid_n``).
* **codebook usage and perplexity** of the token ids from ``pipe.encode``, per step of ``pipe.schedule`` (per scale
  for VAR's multi-scale quantizer, one entry for a single-scale VQ): usage = distinct codes used / vocabulary size,
  perplexity = ``exp(H)`` with ``H = -sum_k p_k ln p_k`` over the code frequencies ``p_k`` (between 1 and
  ``min(vocab, tokens)``).  Multi-scale tokenizers also get an ``"all"`` entry pooling every scale.  With few images
  the coarse scales cannot use much of the vocabulary (the 1x1 scale has only ``n`` tokens): compare at equal ``n``.

Data sets (all deterministic for a ``seed``):

* ``"photos"``: random 256 px crops of scikit-image's *colour* photographs (the colour subset of
  :data:`~arvision.training.datasets.PHOTO_NAMES`; crop ``i`` from photo ``i % 9`` at a position drawn from
  ``(seed, i)``), resized to ``S`` with Lanczos when ``S < 256`` (crops of side ``S`` when ``S > 256``).
* ``"text"``: random crops of ``skimage.data.text()`` (grey handwritten formulas, 172x448, replicated to RGB) -- does
  the tokenizer keep thin strokes?  Crops are ``max(S, 64)`` px (at most 172), resized to ``S``; at 32 px a crop holds
  one or two characters at half their size.
* ``"mnist-5k"``: ``n`` of the 500 digits that :func:`~arvision.evaluation.classifier.mnist5k_split` holds out (drawn
  without replacement with ``seed``), resized like the training data (:class:`~arvision.training.datasets.Mnist5k`
  at ``S``).  They are held out from the digit classifier, *not* necessarily from a tokenizer trained on mnist-5k
  (the bundled one saw all 5,000 digits), so this measures fit, not generalisation.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arvision.errors import ArvisionError

__all__ = [
    "DATASETS",
    "benchmark_tokenizer",
    "codebook_stats",
    "format_table",
    "load_images",
    "perceptual_distance",
    "psnr",
    "reconstruct",
    "rfid_from_features",
    "ssim",
    "to_jsonable",
    "write_side_by_side",
]

DATASETS = ("photos", "text", "mnist-5k")
"""Names :func:`load_images` and :func:`benchmark_tokenizer` accept."""

PHOTO_CROP = 256
TEXT_CROP = 64
SSIM_WIN = 7
_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS


# --------------------------------------------------------------------------------------------------------------------
# data


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ArvisionError(f"the number of images n must be a positive integer, got {n!r}")
    return int(n)


def _check_dataset(name) -> str:
    key = str(name).strip().lower()
    if key not in DATASETS:
        raise ArvisionError(f"unknown tokenizer-benchmark dataset {name!r}; choose from {', '.join(DATASETS)}")
    return key


def _random_crops(src: np.ndarray, n: int, crop: int, size: int, seed: int, offset: int = 0) -> list[np.ndarray]:
    """Crops of side ``crop`` from ``src`` (H, W, 3) uint8, resized to ``size``; crop i's position from (seed, i)."""
    if min(src.shape[:2]) < crop:  # upscale so the shorter side is exactly `crop`
        h, w = src.shape[:2]
        f = crop / min(h, w)
        src = np.asarray(Image.fromarray(src).resize((max(crop, round(w * f)), max(crop, round(h * f))), _LANCZOS))
    h, w = src.shape[:2]
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, offset + i])
        top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        c = src[top : top + crop, left : left + crop]
        if crop != size:
            c = np.asarray(Image.fromarray(c).resize((size, size), _LANCZOS))
        out.append(np.ascontiguousarray(c))
    return out


def _colour_photos() -> list[tuple[str, np.ndarray]]:
    from arvision.training.datasets import Photos

    photos = [(name, arr) for name, arr in Photos.full_images()
              if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))]
    if not photos:
        raise ArvisionError("no colour photographs could be loaded from scikit-image")
    return photos


def load_images(dataset: str, n: int, image_size: int, seed: int = 0) -> np.ndarray:
    """``n`` images of a named set (see the module docstring) as uint8 ``(n, S, S, 3)``, ``S = image_size``."""
    key = _check_dataset(dataset)
    n = _check_n(n)
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ArvisionError(f"image_size must be a positive integer, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ArvisionError(f"seed must be a non-negative integer, got {seed!r}")
    s = int(image_size)
    if key == "photos":
        photos = _colour_photos()
        crop = max(PHOTO_CROP, s)
        imgs = [_random_crops(photos[i % len(photos)][1], 1, crop, s, seed, offset=i)[0] for i in range(n)]
    elif key == "text":
        import skimage.data

        src = np.repeat(np.asarray(skimage.data.text(), dtype=np.uint8)[:, :, None], 3, axis=2)
        crop = min(max(s, TEXT_CROP), min(src.shape[:2]))
        imgs = _random_crops(src, n, crop, s, seed)
    else:
        from arvision.evaluation.classifier import mnist5k_split
        from arvision.images import to_uint8
        from arvision.training.datasets import Mnist5k

        ds = Mnist5k(image_size=s)
        held = mnist5k_split(len(ds))[1]
        if n > len(held):
            raise ArvisionError(f"mnist-5k holds out {len(held)} digits; n must be at most {len(held)}, got {n}")
        pick = np.random.default_rng(seed).choice(held, size=n, replace=False)  # random order: mixed digits
        return to_uint8(torch.stack([ds[int(i)][0] for i in pick]).add(1).mul(0.5))
    return np.stack(imgs)


def _to_model(u8: np.ndarray) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float32 (B, 3, S, S) in [-1, 1] (0 -> -1, 255 -> 1)."""
    return torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --------------------------------------------------------------------------------------------------------------------
# tokenizer round trip


def _native_size(pipe, image_size: int | None) -> int:
    native = int(pipe.config.image_size)
    if image_size is None or image_size == native:
        return native
    tok = pipe.config.tokenizer
    if len(pipe.tokenizer.scale_sides(tok, native)) > 1:
        raise ArvisionError(f"the multi-scale tokenizer only works at its native image size {native} px "
                            f"(latent {tok.patch_nums[-1]}x{tok.patch_nums[-1]}); got image_size={image_size}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1 or \
            image_size % tok.downsample:
        raise ArvisionError(f"image_size must be a positive multiple of the tokenizer downsample {tok.downsample}, "
                            f"got {image_size!r}")
    return image_size


@torch.no_grad()
def reconstruct(pipe, images_uint8: np.ndarray, batch_size: int = 32, progress: bool | None = None
                ) -> tuple[np.ndarray, list[torch.Tensor], list[str]]:
    """Encode and decode uint8 ``(n, S, S, 3)`` images.

    Returns (reconstructions uint8 ``(n, S, S, 3)``, per-step token ids ``[(n, n_s) int64]``, step labels like
    ``"8x8"``).  At the model's native size this is ``pipe.encode`` / ``pipe.decode`` (ids in schedule order, split
    with ``pipe.inputs.split``); a single-scale VQ tokenizer at another size is called directly (one step).
    """
    from arvision.images import to_uint8
    from arvision.progress import progress as progress_of

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ArvisionError(f"batch_size must be a positive integer, got {batch_size!r}")
    n, s = images_uint8.shape[0], images_uint8.shape[1]
    native = s == pipe.config.image_size
    if not native:
        _native_size(pipe, s)  # raises for a multi-scale tokenizer or a bad size
    show = progress if progress is not None else sys.stderr.isatty()
    recons, tokens = [], []
    for i in progress_of(range(0, n, batch_size), desc="tokenizer round trip", unit="batches", disable=not show):
        x = _to_model(images_uint8[i : i + batch_size]).to(pipe.device)
        if native:
            ids = pipe.encode(x)
            rec = pipe.decode(ids)
        else:
            ids = pipe.tokenizer.encode(x)
            g = s // pipe.config.tokenizer.downsample
            rec = pipe.tokenizer.decode(ids, (g, g)).clamp(-1, 1)
        tokens.append(ids.cpu())
        recons.append(to_uint8(rec.float().add(1).mul(0.5)))
    ids = torch.cat(tokens)
    if native:
        steps = pipe.inputs.split(ids)
        grids = pipe.schedule.step_grids if pipe.schedule.step_maps else [pipe.schedule.image_grid]
    else:
        g = s // pipe.config.tokenizer.downsample
        steps, grids = [ids], [(g, g)]
    return np.concatenate(recons), list(steps), [f"{h}x{w}" for h, w in grids]


# --------------------------------------------------------------------------------------------------------------------
# metrics


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ArvisionError(f"expected two uint8 image batches (B, H, W, 3) of the same shape, got {a.shape} and "
                            f"{b.shape}")
    return a, b


def psnr(a, b) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 ``(B, H, W, 3)`` batches: ``10 log10(255^2 / MSE)``, ``inf`` where equal."""
    a, b = _pair(a, b)
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def ssim_window(side: int) -> int:
    """The SSIM window: 7 (skimage's default), or the largest odd size <= ``side`` for images under 7 px."""
    w = min(SSIM_WIN, side if side % 2 else side - 1)
    if w < 3:
        raise ArvisionError(f"SSIM needs images of at least 3x3 px, got side {side}")
    return w


def ssim(a, b) -> np.ndarray:
    """Per-image SSIM of uint8 ``(B, H, W, 3)`` batches (skimage, ``channel_axis=-1``, ``data_range=255``, uniform
    window of :func:`ssim_window` px)."""
    from skimage.metrics import structural_similarity

    a, b = _pair(a, b)
    win = ssim_window(min(a.shape[1:3]))
    return np.array([structural_similarity(x, y, channel_axis=-1, data_range=255, win_size=win)
                     for x, y in zip(a, b)], dtype=np.float64)


def perceptual_distance(maps_a: torch.Tensor, maps_b: torch.Tensor, eps: float = 1e-10) -> np.ndarray:
    """Per-image distance of feature maps ``(B, C, H, W)``: unit-normalise each position's C-vector, sum the squared
    differences over channels, average over the H*W positions.  Returns float64 ``(B,)`` in [0, 4]."""
    a, b = torch.as_tensor(maps_a, dtype=torch.float64), torch.as_tensor(maps_b, dtype=torch.float64)
    if a.shape != b.shape or a.ndim != 4:
        raise ArvisionError(f"feature maps must be (B, C, H, W) of the same shape, got {tuple(a.shape)} and "
                            f"{tuple(b.shape)}")
    a = a / (a.norm(dim=1, keepdim=True) + eps)
    b = b / (b.norm(dim=1, keepdim=True) + eps)
    return (a - b).pow(2).sum(dim=1).mean(dim=(1, 2)).numpy()


def codebook_stats(steps: Sequence[torch.Tensor], vocab_size: int, labels: Sequence[str] | None = None) -> list[dict]:
    """Usage and perplexity of token ids, one dict per step (``(n, n_s)`` ids each), plus ``"all"`` if several.

    Each dict: ``scale`` (label), ``tokens`` (count), ``used`` (distinct codes), ``usage`` = used / vocab_size,
    ``perplexity`` = exp(entropy of the code frequencies, natural log).
    """
    labels = list(labels) if labels is not None else [str(i) for i in range(len(steps))]
    groups = list(zip(labels, steps))
    if len(steps) > 1:
        groups.append(("all", torch.cat([t.reshape(-1) for t in steps])))
    out = []
    for label, ids in groups:
        counts = torch.bincount(ids.reshape(-1).long().cpu(), minlength=vocab_size).double()
        p = counts[counts > 0] / counts.sum()
        out.append({"scale": label, "tokens": int(counts.sum()), "used": int((counts > 0).sum()),
                    "usage": float((counts > 0).sum()) / vocab_size,
                    "perplexity": float(torch.exp(-(p * p.log()).sum()))})
    return out


def rfid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of features ``a`` ``(n_a, d)`` and ``b`` ``(n_b, d)`` by
    :func:`~arvision.evaluation.fid.fid_from_features` (``method="eigh"``), computed in the span of the data.

    With ``n_a + n_b - 1 < d`` both covariances live in the span of the centred samples, and the mean difference
    adds one direction: the features are first expressed in an orthonormal basis ``Q`` (QR, ``d x m``,
    ``m <= n_a + n_b - 1``) of that span, shifted by ``mean(a)``.  The Fréchet distance is invariant under this
    isometry, so the value is the same as in ``d`` dimensions (to round-off) at a fraction of the cost of
    eigendecomposing two ``d x d`` matrices.  The small-sample warnings are silenced: callers report ``n``.
    """
    from arvision.evaluation.fid import fid_from_features

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ArvisionError(f"features must be (n, d) with the same d, got {a.shape} and {b.shape}")
    if len(a) + len(b) - 1 < a.shape[1]:
        mu = a.mean(axis=0)
        span = np.concatenate([a - mu, b - b.mean(axis=0), (b.mean(axis=0) - mu)[None]]).T  # (d, m)
        q = np.linalg.qr(span)[0]
        a, b = (a - mu) @ q, (b - mu) @ q
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rank-deficient covariances: n is reported beside the value
        return fid_from_features(a, b, method="eigh")


def _inception_metrics(orig: np.ndarray, recon: np.ndarray, device, batch_size: int, progress) -> dict:
    from arvision.evaluation.inception import InceptionFeatures

    ext = InceptionFeatures(device=str(device), batch_size=batch_size, progress=progress)
    a = torch.from_numpy(orig).permute(0, 3, 1, 2).contiguous()
    b = torch.from_numpy(recon).permute(0, 3, 1, 2).contiguous()
    pools = [ext.pool_and_spatial(x)[0] for x in (a, b)]  # (n, 2048) float64 each
    dist = perceptual_distance(ext.spatial_maps(a).cpu(), ext.spatial_maps(b).cpu())  # maps (n, 192, 17, 17)
    rfid = rfid_from_features(pools[0], pools[1]) if len(a) >= 2 else None
    return {"perceptual": float(dist.mean()), "perceptual_per_image": dist.tolist(), "rfid": rfid}


def benchmark_tokenizer(pipe, dataset: str = "photos", n: int = 64, image_size: int | None = None, seed: int = 0,
                        batch_size: int = 32, progress: bool | None = None, inception: bool = True) -> dict:
    """Round-trip ``n`` images of ``dataset`` through ``pipe``'s tokenizer and measure the reconstructions.

    ``image_size``: None = the tokenizer's native size ``pipe.config.image_size`` (the only size a multi-scale
    tokenizer accepts); a single-scale VQ may take another multiple of its downsample factor.  ``inception=False``
    skips the two Inception metrics (``perceptual`` and ``rfid`` are then None).  ``progress``: progress bars
    (None: when stderr is a terminal).

    Returns a dict: ``dataset``, ``n``, ``image_size``, ``seed``, ``vocab_size``, ``psnr`` / ``ssim`` /
    ``perceptual`` (means; ``*_per_image`` lists beside them), ``rfid`` and ``rfid_n`` (None when n < 2),
    ``codebook`` (list of :func:`codebook_stats` dicts), ``seconds`` (``tokenizer``, ``metrics``, ``inception``),
    and ``images``: {``"original"``, ``"reconstruction"``} uint8 ``(n, S, S, 3)`` arrays (dropped by
    :func:`to_jsonable`, used by :func:`write_side_by_side`).
    """
    key = _check_dataset(dataset)
    n = _check_n(n)
    s = _native_size(pipe, image_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ArvisionError(f"batch_size must be a positive integer, got {batch_size!r}")
    orig = load_images(key, n, s, seed)
    t0 = time.perf_counter()
    recon, steps, labels = reconstruct(pipe, orig, batch_size, progress)
    t1 = time.perf_counter()
    p, q = psnr(orig, recon), ssim(orig, recon)
    res = {"dataset": key, "n": n, "image_size": s, "seed": seed, "vocab_size": pipe.config.tokenizer.vocab_size,
           "psnr": float(p.mean()), "psnr_per_image": p.tolist(), "ssim": float(q.mean()), "ssim_per_image": q.tolist(),
           "perceptual": None, "perceptual_per_image": None, "rfid": None, "rfid_n": None,
           "codebook": codebook_stats(steps, pipe.config.tokenizer.vocab_size, labels)}
    t2 = time.perf_counter()
    if inception:
        res.update(_inception_metrics(orig, recon, pipe.device, batch_size, progress))
        res["rfid_n"] = n if res["rfid"] is not None else None
    t3 = time.perf_counter()
    res["seconds"] = {"tokenizer": t1 - t0, "metrics": t2 - t1, "inception": t3 - t2}
    res["images"] = {"original": orig, "reconstruction": recon}
    return res


def to_jsonable(results: dict | Sequence[dict]) -> dict | list:
    """Results without the image arrays (``inf`` PSNR stays a float; ``json.dumps`` writes it as ``Infinity``)."""
    if isinstance(results, dict):
        return {k: v for k, v in results.items() if k != "images"}
    return [to_jsonable(r) for r in results]


# --------------------------------------------------------------------------------------------------------------------
# reporting


def _fmt(x, digits: int) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def format_table(results: dict | Sequence[dict]) -> str:
    """A Markdown table, one row per result: dataset, n, PSNR (dB), SSIM, perceptual, rFID (with its n), and
    ``usage / perplexity`` per scale (one column per scale label met in ``results``; "all" pools the scales)."""
    results = [results] if isinstance(results, dict) else list(results)
    scales: list[str] = []
    for r in results:
        for c in r["codebook"]:
            if c["scale"] not in scales and c["scale"] != "all":
                scales.append(c["scale"])
    if any(c["scale"] == "all" for r in results for c in r["codebook"]):
        scales.append("all")
    head = ["dataset", "n", "PSNR (dB)", "SSIM", "perceptual", "rFID (eigh)"] + \
           [f"codes {s}: usage / ppl" for s in scales]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in results:
        by_scale = {c["scale"]: c for c in r["codebook"]}
        rfid = "–" if r.get("rfid") is None else f"{r['rfid']:.1f} (n={r['rfid_n']})"
        cells = [r["dataset"], str(r["n"]), _fmt(r["psnr"], 2), _fmt(r["ssim"], 3), _fmt(r.get("perceptual"), 3),
                 rfid]
        cells += [f"{by_scale[s]['usage']:.3f} / {by_scale[s]['perplexity']:.1f}" if s in by_scale else "–"
                  for s in scales]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_side_by_side(pipe_or_results, path: str | Path, *, pairs: int = 8, dataset: str = "photos",
                       seed: int = 0) -> Path:
    """Write a PNG with one row per result: ``pairs`` (original | reconstruction) pairs side by side.

    ``pipe_or_results``: a result dict of :func:`benchmark_tokenizer`, a list of them, or a pipeline (then
    ``pairs`` images of ``dataset`` are reconstructed first).  Cells are upscaled (nearest) to at least 64 px by
    :func:`~arvision.images.make_grid`; each original is captioned with its dataset and index, each reconstruction
    "recon".  Rows with fewer than ``pairs`` images are padded with white cells.  Returns the path.
    """
    from arvision.images import check_output_file, make_grid

    path = check_output_file(path)
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ArvisionError(f"pairs must be a positive integer, got {pairs!r}")
    if isinstance(pipe_or_results, dict):
        rows = [pipe_or_results]
    elif isinstance(pipe_or_results, (list, tuple)):
        rows = list(pipe_or_results)
    elif hasattr(pipe_or_results, "encode") and hasattr(pipe_or_results, "config"):
        pipe = pipe_or_results
        orig = load_images(dataset, pairs, pipe.config.image_size, seed)
        rows = [{"dataset": _check_dataset(dataset), "images": {"original": orig,
                                                                "reconstruction": reconstruct(pipe, orig)[0]}}]
    else:
        raise ArvisionError("write_side_by_side takes a pipeline, a benchmark result dict or a list of them, got "
                            f"{type(pipe_or_results).__name__}")
    if not rows or any("images" not in r for r in rows):
        raise ArvisionError("no images to write: pass results of benchmark_tokenizer (with their 'images')")
    size = rows[0]["images"]["original"].shape[1:3]
    blank = Image.new("RGB", (size[1], size[0]), "white")
    cells, captions = [], []
    for r in rows:
        orig, rec = r["images"]["original"], r["images"]["reconstruction"]
        if orig.shape[1:3] != size:
            raise ArvisionError(f"results have different image sizes ({size} and {orig.shape[1:3]}); write them "
                                "to separate files")
        for i in range(pairs):
            if i < len(orig):
                cells += [Image.fromarray(orig[i]), Image.fromarray(rec[i])]
                captions += [f"{r['dataset']} {i}", "recon"]
            else:
                cells += [blank, blank]
                captions += ["", ""]
    make_grid(cells, captions, ncol=2 * pairs).save(path)
    return path
