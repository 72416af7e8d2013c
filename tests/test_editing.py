"""Zero-shot editing by token override (``arvision.sampling.editing``): kept tokens are the source's at every step,
an all-keep mask reproduces the source, an all-regenerate mask is plain sampling, class edits change only the
masked region (and draw the class), the null class is accepted only for editing, inputs are validated, and the CLI
writes a PNG."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.bundled import bundled_model_dir
from arvision.cli import main
from arvision.errors import ArvisionError
from arvision.evaluation.classifier import classify_images
from arvision.pipeline import ARPipeline
from arvision.sampling.editing import EditOverride, box_mask, edit, keep_tokens, load_mask, prepare_edit_inputs
from arvision.sampling.loop import SamplingRun
from arvision.training.datasets import Mnist5k
from conftest import tiny_raster_pipeline
from test_search import select_midway

torch.set_num_threads(1)  # small models: one thread is as fast here and leaves the shared CPU to others


@functools.cache
def bundled() -> ARPipeline:
    return ARPipeline.from_pretrained(bundled_model_dir())


@functools.cache
def raster() -> ARPipeline:
    """A tiny random LlamaGen-style model (``conftest.tiny_raster_pipeline``), its weights perturbed."""
    pipe = tiny_raster_pipeline(0)
    with torch.no_grad():
        for p in pipe.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return pipe


@functools.cache
def digits() -> tuple[torch.Tensor, list[int]]:
    """Ten real mnist-5k digits (one per class) at 32 px, (10, 3, 32, 32) in [-1, 1]."""
    ds = Mnist5k(image_size=32)
    items = [ds[500 * k + 9] for k in range(10)]
    return torch.stack([x for x, _ in items]), [y for _, y in items]


def raster_images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_kept_everywhere(pipe, out) -> None:
    """At every step, tokens where keep is True are the source's tokens."""
    sizes = pipe.schedule.step_sizes
    for s, (tok, src, keep) in enumerate(zip(out.tokens.split(sizes, 1), out.source_tokens.split(sizes, 1),
                                             out.keep.split(sizes, 1))):
        assert torch.equal(tok[keep], src[keep]), f"step {s}: a kept token differs from the source"


# -- masks -> tokens ----------------------------------------------------------------------------------------------

def test_keep_tokens_follow_the_notebook_rules():
    sched = bundled().schedule  # scales 1, 2, 3, 4, 6, 8
    regen = torch.zeros(1, 8, 8)
    regen[:, :, 4:] = 1.0  # regenerate the right half of the final grid
    keep = keep_tokens(sched, regen).split(sched.step_sizes, 1)
    assert keep[0].all()  # the 1x1 scale always comes from the source
    # bilinear 8 -> 2 (align_corners=False) samples x = 1.5 and 5.5: left column kept, right column regenerated
    assert keep[1].view(2, 2).tolist() == [[True, False], [True, False]]
    assert torch.equal(keep[-1].view(8, 8), (regen[0] == 0))  # the final scale is the token mask itself
    # all black: everything kept; all white: only the 1x1 scale (scale 2 has 4 > 3 tokens)
    assert keep_tokens(sched, torch.zeros(2, 8, 8)).all()
    all_regen = keep_tokens(sched, torch.ones(2, 8, 8))
    assert all_regen[:, 0].all() and not all_regen[:, 1:].any()
    # raster: the token grid in raster order
    rk = keep_tokens(raster().schedule, torch.tensor([[[0, 0, 1, 1]] * 4], dtype=torch.float))
    assert rk.view(4, 4)[:, :2].all() and not rk.view(4, 4)[:, 2:].any()


def test_pixel_masks_are_area_averaged_to_tokens():
    _, frac, pix = prepare_edit_inputs(digits()[0][:1], box_mask(32, 32, (0.25, 0.25, 0.75, 0.75)), 32, (8, 8))
    expect = torch.zeros(8, 8)
    expect[2:6, 2:6] = 1.0
    assert torch.equal(frac[0], expect)
    assert pix[0].sum() == 16 * 16
    # a PIL image of another size is centre-cropped and resized, its mask cropped the same way
    im = Image.new("L", (40, 32), 0)
    mask = np.zeros((32, 40), bool)
    mask[:, :4] = True  # only inside the 4 columns cropped away on the left
    src, frac, _ = prepare_edit_inputs(im, mask, 32, (8, 8))
    assert src.shape == (1, 3, 32, 32) and frac.sum() == 0
    assert box_mask(4, 4, (0, 0, 0.5, 1), outpaint=True).sum() == 8
    # a (B, H, W) batch of masks is one mask per image
    two = torch.stack([torch.zeros(32, 32), torch.ones(32, 32)])
    _, frac, _ = prepare_edit_inputs(digits()[0][:2], two, 32, (8, 8))
    assert frac[0].sum() == 0 and frac[1].sum() == 64


# -- in-painting keeps the source ----------------------------------------------------------------------------------

@pytest.mark.parametrize("klass,outpaint", [(None, False), (7, False), (None, True)])
def test_var_inpainting_keeps_every_token_outside_the_mask(klass, outpaint):
    pipe = bundled()
    x, _ = digits()
    mask = box_mask(32, 32, (0.25, 0.25, 0.75, 0.75), outpaint=outpaint)
    out = edit(pipe, x[:4], mask, class_labels=klass, generator=gen(1), output_type="tokens")
    assert out.keep[:, -64:].sum(1).tolist() == [16 if outpaint else 48] * 4  # the final 8x8 scale
    assert_kept_everywhere(pipe, out)
    free = ~out.keep
    assert free.any() and (out.tokens[free] != out.source_tokens[free]).any()  # the hole was really sampled


def test_raster_inpainting_keeps_every_token_outside_the_mask():
    pipe = raster()
    out = edit(pipe, raster_images(), box_mask(8, 8, (0.25, 0.25, 0.75, 0.75)), class_labels=1, generator=gen(2),
               guidance_scale=2.0, output_type="tokens")
    assert out.keep.sum(1).tolist() == [12, 12, 12]  # 4x4 grid minus the 2x2 hole
    assert_kept_everywhere(pipe, out)
    assert (out.tokens[~out.keep] != out.source_tokens[~out.keep]).any()


@pytest.mark.parametrize("which", ["var", "raster"])
def test_all_keep_mask_reproduces_the_source(which):
    pipe = bundled() if which == "var" else raster()
    x = digits()[0][:3] if which == "var" else raster_images()
    S = pipe.config.image_size
    out = edit(pipe, x, torch.zeros(S, S), class_labels=None, generator=gen(3), output_type="pt")
    assert out.keep.all()
    assert torch.equal(out.tokens, pipe.encode(x))
    assert torch.allclose(out.images * 2 - 1, pipe.decode(out.tokens), atol=1e-5)


def test_var_all_keep_with_smooth_codes_is_still_the_source():
    """more_smooth mixes codes; forced positions must take the source's code, so the image is the source's."""
    pipe = bundled()
    x = digits()[0][:2]
    out = edit(pipe, x, torch.zeros(32, 32), generator=gen(4), more_smooth=True, output_type="pt")
    assert torch.allclose(out.images * 2 - 1, pipe.decode(pipe.encode(x)), atol=1e-5)


def test_all_regenerate_mask_is_plain_sampling():
    # raster: nothing forced, so the edit is exactly the sample the same seed draws
    pipe = raster()
    out = edit(pipe, raster_images(), torch.ones(8, 8), class_labels=[0, 1, 2], generator=gen(6),
               guidance_scale=2.0, output_type="tokens")
    assert not out.keep.any()
    plain = pipe([0, 1, 2], generator=gen(6), guidance_scale=2.0, output_type="tokens").tokens
    assert torch.equal(out.tokens, plain)
    # VAR: only the 1x1 scale is forced; a source whose first token is the one the seed draws gives the plain sample
    vpipe = bundled()
    plain = vpipe([3, 8], generator=gen(7), output_type="tokens").tokens
    other = vpipe([5, 5], generator=gen(8), output_type="tokens").tokens
    source = other.clone()
    source[:, 0] = plain[:, 0]
    keep = keep_tokens(vpipe.schedule, torch.ones(2, 8, 8))
    res = vpipe([3, 8], generator=gen(7), override=EditOverride(source, keep), output_type="tokens").tokens
    assert torch.equal(res, plain)
    # ...and with a real source, the first token is the source's
    out = edit(vpipe, digits()[0][:2], torch.ones(32, 32), class_labels=[3, 8], generator=gen(7), output_type="tokens")
    assert out.keep.sum().item() == 2 and torch.equal(out.tokens[:, 0], out.source_tokens[:, 0])


# -- class editing ----------------------------------------------------------------------------------------------------

def test_class_editing_changes_only_the_mask_and_draws_the_class():
    pipe = bundled()
    x, y = digits()
    target = [(c + 1) % 10 for c in y]
    box = box_mask(32, 32, (0.125, 0.125, 0.875, 0.875))
    out = edit(pipe, x, box, class_labels=target, generator=gen(0), output_type="pt")
    assert_kept_everywhere(pipe, out)
    null = edit(pipe, x, box, class_labels=None, generator=gen(0), output_type="pt")
    assert torch.equal(out.tokens[out.keep], null.tokens[null.keep])  # same kept tokens...
    assert (out.tokens[~out.keep] != null.tokens[~null.keep]).any()  # ...the class changes the regenerated ones
    # the bundled classifier reads the new class in (nearly) every edit (bench/class_edit_eval.py measures it)
    hits = (classify_images(out.images * 2 - 1) == torch.tensor(target)).sum().item()
    assert hits >= 8, f"only {hits}/10 class edits read as the target class"


def test_null_class_is_accepted_only_for_editing():
    pipe = bundled()
    null = pipe.null_class
    assert null == 10
    with pytest.raises(ArvisionError, match="out of range"):
        pipe([null], output_type="tokens")
    res = pipe([null, 2], allow_null_class=True, generator=gen(0), output_type="tokens")
    assert res.class_labels == [null, 2]
    with pytest.raises(ArvisionError, match="out of range"):
        pipe([null + 1], allow_null_class=True)
    out = edit(pipe, digits()[0][:2], torch.ones(32, 32), class_labels=None, generator=gen(0), output_type="tokens")
    assert out.class_labels == [null, null]
    out = edit(raster(), raster_images(2), torch.ones(8, 8), class_labels=[None, 1], generator=gen(0),
               output_type="tokens")
    assert out.class_labels == [raster().null_class, 1]


# -- re-batching and split batches -----------------------------------------------------------------------------------

def test_override_follows_rows_through_select_and_batches():
    pipe = bundled()
    x = digits()[0][:3]
    _, frac, _ = prepare_edit_inputs(x, box_mask(32, 32, (0.25, 0.0, 0.75, 1.0)), 32, (8, 8))
    source, keep = pipe.encode(x), keep_tokens(pipe.schedule, frac)
    run = SamplingRun(pipe.transformer, pipe.inputs, pipe.condition([1, 2, 3]),
                      pipe.sampling_options(override=EditOverride(source, keep)), gen(0))
    with torch.no_grad():
        select_midway(run, [2, 0, 2, 1])  # reorder and repeat images mid-run
    assert run.rows.tolist() == [2, 0, 2, 1]
    for b, r in enumerate(run.rows.tolist()):
        assert torch.equal(run.tokens[b][keep[r]], source[r][keep[r]])
    # a call split into batches binds each batch to its own sources
    out = edit(pipe, x, box_mask(32, 32, (0.25, 0.0, 0.75, 1.0)), class_labels=[1, 2, 3], generator=gen(0),
               batch_size=2, output_type="tokens")
    assert_kept_everywhere(pipe, out)
    ov = EditOverride(source[:1], keep[:1])
    with pytest.raises(ArvisionError, match="source image"):
        pipe([1, 2], override=ov, output_type="tokens")


# -- validation ---------------------------------------------------------------------------------------------------

def test_edit_inputs_are_validated(tmp_path):
    pipe = bundled()
    x = digits()[0][:2]
    with pytest.raises(ArvisionError, match="must have its image's size"):
        edit(pipe, x, torch.ones(16, 16))
    with pytest.raises(ArvisionError, match="2 masks for 1 images"):
        edit(pipe, x[:1], [torch.ones(32, 32)] * 2)
    with pytest.raises(ArvisionError, match="outside"):
        edit(pipe, x, torch.full((32, 32), 2.0))
    with pytest.raises(ArvisionError, match=r"float \(3, 32, 32\)"):
        edit(pipe, torch.zeros(1, 3, 28, 28), torch.ones(28, 28))
    with pytest.raises(ArvisionError, match="3 class labels for 2 images"):
        edit(pipe, x, torch.ones(32, 32), class_labels=[1, 2, 3])
    with pytest.raises(ArvisionError, match="out of range"):
        edit(pipe, x, torch.ones(32, 32), class_labels=11)
    with pytest.raises(ArvisionError, match="0 <= y0 < y1 <= 1"):
        box_mask(32, 32, (0.5, 0, 0.2, 1))
    Image.new("L", (20, 10), 255).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png").all()
    with pytest.raises(ArvisionError, match="is 20x10 pixels but its image is 32x32"):
        load_mask(tmp_path / "m.png", size=(32, 32))
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ArvisionError, match="cannot read mask"):
        load_mask(tmp_path / "bad.png")
    with pytest.raises(ArvisionError, match="not found"):
        load_mask(tmp_path / "missing.png")


# -- command line ----------------------------------------------------------------------------------------------------

def test_cli_edit_writes_a_png(tmp_path, capsys):
    x, _ = digits()
    img = Image.fromarray(((x[3, 0] + 1) * 127.5).round().byte().numpy()).resize((28, 28))  # grey, not 32 px
    img.save(tmp_path / "in.png")
    mask = np.zeros((28, 28), np.uint8)
    mask[7:21, 7:21] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    argv = ["edit", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--class", "5",
            "--seed", "0", "--out", str(out), "--compare", str(tmp_path / "cmp.png")]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "resized to the model's 32x32" in text and "wrote" in text
    with Image.open(out) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    assert (tmp_path / "cmp.png").stat().st_size > 0
    # the same seed gives the same edit; --box is the same edit as the equivalent mask
    assert main(argv[:-2]) == 0
    first = np.asarray(Image.open(out)).copy()
    assert main(["edit", "--image", str(tmp_path / "in.png"), "--box", "0.25,0.25,0.75,0.75", "--class", "5",
                 "--seed", "0", "--out", str(out)]) == 0
    assert np.array_equal(first, np.asarray(Image.open(out)))
    capsys.readouterr()
    Image.fromarray(mask[:20]).save(tmp_path / "small.png")
    assert main(["edit", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "small.png"),
                 "--out", str(out)]) == 2
    assert "must have the image's size" in capsys.readouterr().err
    assert main(["edit", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--outpaint",
                 "--out", str(out)]) == 2
    assert "--outpaint goes with --box" in capsys.readouterr().err
