"""The official VAR and LlamaGen models for ``bench/gpu_check.py``: built by the official constructors with random
weights, saved in the released layout, converted to arvision folders, and sampled by the official samplers.

The official code is never part of this repository: ``bench/gpu_check.py`` extracts it at run time from the local
mirrors (as ``bench/official_speed.py`` does) or takes an already extracted folder (``--official-src``), and this
module imports it from there (``sys.path``).  Shapes are given by ``SIZES``: the released VAR-d16 and GPT-B, or tiny
ones of the same architecture for ``--cpu-smoke``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# official constructor arguments, the sampling settings of the check, and arvision convert's options
SIZES = {
    "full": {
        "var": {"build": dict(patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), V=4096, Cvae=32, ch=160,
                              share_quant_resi=4, num_classes=1000, depth=16, shared_aln=False),
                "label": 207, "sampling": dict(cfg=1.5, top_k=900, top_p=0.96), "convert": {}},
        "llamagen": {"vq": dict(codebook_size=16384, codebook_embed_dim=8, encoder_ch_mult=[1, 1, 2, 2, 4],
                                decoder_ch_mult=[1, 1, 2, 2, 4], z_channels=256),
                     "gpt": dict(dim=768, n_layer=12, n_head=12, vocab_size=16384, block_size=256,
                                 num_classes=1000, cls_token_num=1, model_type="c2i"),
                     "label": 207, "sampling": dict(cfg=4.0, top_k=0, top_p=0.0),
                     "convert": dict(image_size=256, num_heads=12)},
    },
    "smoke": {
        "var": {"build": dict(patch_nums=(1, 2, 3, 4), V=64, Cvae=8, ch=32, share_quant_resi=4, num_classes=10,
                              depth=2, shared_aln=False),
                "label": 3, "sampling": dict(cfg=4.0, top_k=16, top_p=0.9), "convert": {}},
        "llamagen": {"vq": dict(codebook_size=64, codebook_embed_dim=8, encoder_ch_mult=[1, 1, 2],
                                decoder_ch_mult=[1, 1, 2], z_channels=32),
                     "gpt": dict(dim=128, n_layer=2, n_head=2, vocab_size=64, block_size=16, num_classes=10,
                                 cls_token_num=1, model_type="c2i"),
                     "label": 3, "sampling": dict(cfg=2.0, top_k=16, top_p=0.0),
                     "convert": dict(image_size=16, num_heads=2)},
    },
}
FILES = {"var": ("vae.pth", "var.pth"), "llamagen": ("vq.pth", "gpt.pth")}


def _import_from(src: Path):
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))


def build(family: str, size: dict, src: Path, folder: Path, seed: int, device: torch.device) -> dict:
    """The official models of ``family`` with random weights (built on the CPU after ``torch.manual_seed(seed)``),
    saved with ``torch.save`` into ``folder`` under ``FILES[family]`` (the released layout); returned in eval mode
    on ``device`` (``{"vae", "var"}`` or ``{"vq", "gpt"}``)."""
    import torch.nn as nn

    _import_from(src)
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if family == "var":
        from models import build_vae_var

        # build_vae_var switches off the default init of these layer classes for good: give it back afterwards,
        # so layers built later in this process are initialised as usual
        saved = {c: c.__dict__.get("reset_parameters") for c in (nn.Linear, nn.LayerNorm, nn.BatchNorm2d,
                 nn.SyncBatchNorm, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)}
        try:
            vae, var = build_vae_var(device="cpu", **size["build"])
        finally:
            for c, fn in saved.items():
                if fn is None:  # it was inherited: drop the override
                    delattr(c, "reset_parameters")
                else:
                    c.reset_parameters = fn
        with torch.no_grad():  # the VQ-VAE's convolutions were left uninitialised: VAR's own conv rule
            for m in vae.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        m.bias.zero_()
        models = {"vae": vae, "var": var}
    else:
        from autoregressive.models.gpt import ModelArgs as GPTArgs
        from autoregressive.models.gpt import Transformer
        from tokenizer.tokenizer_image.vq_model import ModelArgs as VQArgs
        from tokenizer.tokenizer_image.vq_model import VQModel

        vq = VQModel(VQArgs(**size["vq"]))
        gpt = Transformer(GPTArgs(**size["gpt"]))
        with torch.no_grad():  # its init zeroes the head (every logit 0): drawn like the other linear layers
            gpt.output.weight.normal_(0.0, gpt.config.initializer_range)
        models = {"vq": vq, "gpt": gpt}
    for model, name in zip(models.values(), FILES[family]):
        torch.save(model.state_dict(), folder / name)
        model.to(device).eval().requires_grad_(False)
    return models


def sample(family: str, models: dict, size: dict, batch: int, seed: int, device: torch.device,
           greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One official sampling call of ``batch`` images of class ``size["label"]``: (int64 tokens (B, L), images).

    VAR: ``autoregressive_infer_cfg(g_seed=seed)`` (its own generator on the model's device); the ids of every
    scale are read off the quantizer's embedding, which the sampler calls with them.  LlamaGen: ``generate`` after
    ``torch.manual_seed(seed)`` (the default generators), then ``decode_code``; ``greedy`` = top-k 1."""
    s, labels = size["sampling"], torch.full((batch,), size["label"], device=device)
    if family == "var":
        ids: list[torch.Tensor] = []
        hook = models["var"].vae_quant_proxy[0].embedding.register_forward_pre_hook(
            lambda m, args: ids.append(args[0]))
        try:
            with torch.inference_mode():
                img = models["var"].autoregressive_infer_cfg(B=batch, label_B=labels, g_seed=seed, cfg=s["cfg"],
                                                            top_k=s["top_k"], top_p=s["top_p"], more_smooth=False)
        finally:
            hook.remove()
        return torch.cat(ids, dim=1).to(torch.int64), img
    from autoregressive.models.generate import generate

    side = int(size["gpt"]["block_size"] ** 0.5)
    torch.manual_seed(seed)
    with torch.no_grad():  # the official sample_c2i.py; its top_p=1.0 is "no nucleus filter"
        seq = generate(models["gpt"], labels, size["gpt"]["block_size"], cfg_scale=s["cfg"], cfg_interval=-1,
                       temperature=1.0, top_k=1 if greedy else s["top_k"], top_p=s["top_p"] or 1.0,
                       sample_logits=True)
        img = models["vq"].decode_code(seq, [batch, size["vq"]["codebook_embed_dim"], side, side])
    return seq.to(torch.int64), img


def convert(family: str, size: dict, folder: Path, out: Path) -> Path:
    """``arvision convert`` of ``build``'s files (the library call the command makes) into ``out``."""
    from arvision.pipeline import ARPipeline

    a, b = (folder / f for f in FILES[family])
    ARPipeline.from_official(family, a, b, **size["convert"]).save_pretrained(out)
    return out
