"""Cross-check the HMAR family against the official NVlabs/HMAR code on trunk shapes the reference vectors do not
cover: random weights in the official classes, saved as the official files, read by ``arvision``'s converter, then
every sampled token of ``HMAR.generate`` (masked sub-steps included) compared with ours.

    git -C MIRROR archive HEAD | tar -x -C /tmp/hmar_official      # a checkout of NVlabs/HMAR (no network needed)
    PYTHONPATH=src python bench/hmar_official_check.py --official /tmp/hmar_official

The official code is run, not copied: its modules are imported from ``--official``.  Its optional GPU kernels (the
CUDA/Triton block-sparse attention, used only for training) and its logging helpers (wandb) are replaced by stand-ins
before the import, since ``generate`` uses neither.  Float32 on the CPU, one thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

# (depth, width, heads, n_layers_train, shared AdaLN, scale sides, vocab, code dim)
SHAPES = [
    (4, 96, 3, 1, True, (1, 2, 3, 5), 48, 6),
    (2, 64, 2, 2, False, (1, 3, 4), 40, 8),
    (5, 128, 4, 3, False, (1, 2, 3, 4, 6), 64, 8),
]
# (cfg, top_k, top_p, mask schedule builder: step sizes -> schedule)
SETTINGS = [
    (1.5, 0, 0.0, lambda sizes: [[1] if n == 1 else [1, min(3, n - 1), 1] for n in sizes]),
    (3.0, 12, 0.9, lambda sizes: [[1] if n == 1 else [2, 2, 1, 1][: 1 + min(3, n // 3)] for n in sizes]),
]


def import_official(root: Path):
    """The official ``VQVAE`` and ``HMAR`` classes, with stand-ins for the modules ``generate`` does not use."""
    sys.path.insert(0, str(root))
    sparse = types.ModuleType("attn.block_sparse_attn_interface")  # training-only Triton kernels on CUDA

    class BlockSparseAttention(torch.nn.Module):
        def __init__(self, block_sizes, *args, **kwargs):
            super().__init__()

    sparse.BlockSparseAttention = BlockSparseAttention
    sys.modules["attn.block_sparse_attn_interface"] = sparse
    misc = types.ModuleType("utils.misc")  # the real one imports wandb; HMAR takes one helper from it
    misc.does_not_contain_substrings = lambda name, subs: all(s not in name for s in subs)
    sys.modules["utils.misc"] = misc
    import models.hmar as hmar_module
    from models.hmar import HMAR
    from models.vqvae import VQVAE

    return VQVAE, HMAR, hmar_module


def randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            # every float tensor (the k biases too), but the training-only attention mask
            if t.is_floating_point() and not name.endswith("attn_bias_for_masking"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)


def official_final_ids(hmar, vae, **kwargs) -> list[torch.Tensor]:
    """Run the official ``generate``; each scale's final ids are the last ones embedded before the canvas update."""
    seen, final = [], []
    hook = vae.quantize.embedding.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    quant = vae.quantize
    original = quant.get_next_autoregressive_input

    def record(si, SN, f_hat, h):
        final.append(seen[-1])
        return original(si, SN, f_hat, h)

    quant.get_next_autoregressive_input = record
    try:
        hmar.generate(**kwargs)
    finally:
        hook.remove()
        quant.get_next_autoregressive_input = original
    return final


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="a checkout of NVlabs/HMAR")
    args = ap.parse_args()
    torch.set_num_threads(1)
    VQVAE, HMAR, _ = import_official(Path(args.official))
    from arvision.pipeline import ARPipeline

    failures = 0
    for n, (depth, width, heads, train, shared, sides, vocab, cvae) in enumerate(SHAPES):
        vae = VQVAE(vocab_size=vocab, z_channels=cvae, ch=32, share_quant_resi=2, v_patch_nums=sides)
        hmar = HMAR(vae, num_classes=7, depth=depth, embed_dim=width, num_heads=heads, shared_aln=shared,
                    attn_l2_norm=True, patch_nums=sides, n_layers_train=train, cond_drop_rate=0.0,
                    flash_if_available=False, fused_if_available=False)
        randomize(vae, 10 + n)
        randomize(hmar, 20 + n)
        vae.eval(), hmar.eval()
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(vae.state_dict(), Path(tmp) / "vae.pth")
            torch.save(hmar.state_dict(), Path(tmp) / "hmar.pth")
            pipe = ARPipeline.from_official("hmar", Path(tmp) / "vae.pth", Path(tmp) / "hmar.pth")
        sizes = [p * p for p in sides]
        for k, (cfg, top_k, top_p, build) in enumerate(SETTINGS):
            sched = build(sizes)
            labels = torch.tensor([1, 3, 6])
            t0 = time.perf_counter()
            with torch.no_grad():
                want = official_final_ids(hmar, vae, B=3, label_B=labels, g_seed=100 + k, cfg=cfg, top_k=top_k,
                                          top_p=top_p, mask=True, mask_schedule=sched)
            t1 = time.perf_counter()
            out = pipe(labels.tolist(), guidance_scale=cfg, top_k=top_k, top_p=top_p, mask_steps=sched,
                       generator=torch.Generator().manual_seed(100 + k), output_type="pt")  # decoded, as official
            t2 = time.perf_counter()
            same = all(torch.equal(a, b) for a, b in zip(out.step_tokens, want)) and len(want) == len(sides)
            failures += not same
            print(f"shape {n} (depth {depth}, width {width}, heads {heads}, n_layers_train {train}, shared {shared}, "
                  f"sides {sides}) setting {k} (cfg {cfg}, top-k {top_k}, top-p {top_p}, mask {sched}): "
                  f"{'identical' if same else 'DIFFERENT'} tokens; official {t1 - t0:.3f}s, ours {t2 - t1:.3f}s")
    print("all identical" if not failures else f"{failures} case(s) differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
