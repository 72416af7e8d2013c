"""Why the LBW watermark does not survive re-tokenisation on a VAR tokenizer: ceilings, and two attempted fixes.

    PYTHONPATH=src python bench/watermark_ceiling.py --n 200 [--inverter] [--align] --json ceiling.json

Measured on the bundled VAR MNIST model (or ``--model``, scale-wise only), N images per row (per-image seeds
1000+i, classes i % 10), images uint8-quantised like saved PNGs:

1. Reverse cycle-consistency (RCC, fraction of tokens unchanged), per scale, of
   * sampled tokens -> decode -> PNG -> encode (what the detector sees);
   * sampled tokens -> their exact canvas f_hat -> residual re-quantisation: the ceiling of *any* tokenizer
     fine-tuning (WMAR's fix), since the decoder sees only f_hat and a perfect encoder could at best return it;
   * the tokenizer's own greedy tokens (encode -> decode -> PNG -> encode) of real mnist-5k digits and of samples.
2. Detection (z > 4 rate, mean z; distinct codes and every token) for clean and watermarked samples on the sampled
   tokens, on the exact-canvas re-quantisation and on the image's re-tokenisation.
3. ``--inverter``: an encoder copy fine-tuned to invert the decoder *to the sampled tokens* (teacher-forced
   cross-entropy on the residual's code distances, on samples the detector never sees), its RCC on held-out images.
4. ``--align``: ``arvision.sampling.watermark.align_images`` after sampling (Adam on the image so that its own
   re-tokenisation prefers the green list: -log green mass + lambda * |x - x0|^2), for several lambda; TPR at
   z > 4, the clean images' false positives, PSNR to the unaligned image, classifier accuracy and classifier-FID.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from arvision.bundled import bundled_model_dir
from arvision.evaluation.classifier import classifier_report
from arvision.images import to_pil
from arvision.pipeline import ARPipeline
from arvision.sampling.watermark import WatermarkSpec, align_images, detect_tokens, residual_code_logits
from arvision.training.datasets import Mnist5k

KEY = "arvision-bench-key"


def png(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> uint8-quantised, back in [-1, 1]."""
    return ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def per_scale(a: torch.Tensor, b: torch.Tensor, sizes) -> list[float]:
    return [round(float((x == y).float().mean()), 4) for x, y in zip(a.split(sizes, 1), b.split(sizes, 1))]


def zstats(tokens, spec, V, sizes) -> dict:
    out = {}
    for name, unique in (("distinct", True), ("all", False)):
        z = np.array([r.z for r in detect_tokens(tokens, spec, V, sizes, unique=unique)])
        out[name] = {"gt4": float((z > 4).mean()), "gt2": float((z > 2).mean()), "mean": float(z.mean())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default=None)
    ap.add_argument("--inverter", action="store_true", help="train and measure the learned inverse encoder")
    ap.add_argument("--inverter-train", type=int, default=4000, help="training samples for the inverter")
    ap.add_argument("--inverter-steps", type=int, default=1500)
    ap.add_argument("--align", action="store_true", help="measure pixel-domain alignment")
    ap.add_argument("--align-lambdas", type=float, nargs="+", default=[0.0, 0.3, 1.0, 4.0])
    ap.add_argument("--align-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = ARPipeline.from_pretrained(args.model or bundled_model_dir())
    if pipe.config.tokenizer.kind != "multiscale":
        raise SystemExit("this ceiling analysis is for residual multi-scale (VAR) tokenizers")
    tok, sizes = pipe.inputs.tok, pipe.schedule.step_sizes
    V, S = pipe.config.transformer.vocab_size, pipe.config.image_size
    for p in tok.parameters():
        p.requires_grad_(False)
    labels = [i % 10 for i in range(args.n)]

    def sample(spec: WatermarkSpec | None, seed0: int = 1000, n: int = args.n):
        gens = [torch.Generator().manual_seed(seed0 + i) for i in range(n)]
        out = pipe([i % 10 for i in range(n)], generator=gens, output_type="pt", batch_size=250,
                   processors=[spec.processor(pipe)] if spec else ())
        return out.tokens, png(out.images * 2 - 1)

    def canvas_requant(tokens):
        with torch.no_grad():
            return torch.cat(tok.quantize_features(tok.canvas_from_ids(list(tokens.split(sizes, 1))))[0], 1)

    report: dict = {"model": args.model or "bundled VAR MNIST", "n": args.n, "key": KEY, "rcc": {}, "detection": {}}
    # -- 1. cycle-consistency ---------------------------------------------------------------------------------
    clean_tokens, clean = sample(None)
    ds = Mnist5k(image_size=S)
    real = png(torch.stack([ds[int(i)][0] for i in np.linspace(0, len(ds) - 1, args.n).round().astype(int)]))
    greedy_real = pipe.encode(real)
    greedy_gen = pipe.encode(clean)
    report["rcc"] = {
        "sampled_tokens_via_image": per_scale(pipe.encode(clean), clean_tokens, sizes),
        "sampled_tokens_via_exact_canvas": per_scale(canvas_requant(clean_tokens), clean_tokens, sizes),
        "greedy_tokens_real_via_image": per_scale(pipe.encode(png(pipe.decode(greedy_real))), greedy_real, sizes),
        "greedy_tokens_samples_via_image": per_scale(pipe.encode(png(pipe.decode(greedy_gen))), greedy_gen, sizes),
    }
    # -- 2. detection ceilings ----------------------------------------------------------------------------------
    settings = {"clean": WatermarkSpec(KEY, delta=0.0), "delta4": WatermarkSpec(KEY, delta=4.0),
                "hard": WatermarkSpec(KEY, hard=True)}
    samples = {"clean": (clean_tokens, clean)}
    for name, spec in tqdm(settings.items(), desc="detection"):
        tokens, x = samples.get(name) or sample(spec)
        samples[name] = (tokens, x)
        report["detection"][name] = {
            "sampled_tokens": zstats(tokens, spec, V, sizes),
            "exact_canvas": zstats(canvas_requant(tokens), spec, V, sizes),
            "image": zstats(pipe.encode(x), spec, V, sizes),
        }
    # -- 3. learned inverse ---------------------------------------------------------------------------------
    if args.inverter:
        report["inverter"] = train_inverter(pipe, sample, args, clean_tokens, clean)
    # -- 4. pixel-domain alignment -----------------------------------------------------------------------------
    if args.align:
        spec = settings["delta4"]
        tokens, x0 = samples["delta4"]
        lists = [spec.list_for(1000 + i, k) for i, k in enumerate(labels)]  # each image's pool list
        clean_z = zstats(pipe.encode(clean), spec, V, sizes)
        report["align"] = {"clean_images": clean_z, "rows": []}
        for lam in args.align_lambdas:
            t = time.perf_counter()
            xw = png(align_images(pipe, x0, spec, lists, strength=lam, steps=args.align_steps, progress=True))
            q = classifier_report(to_pil((xw + 1) / 2), labels, fid_real="mnist-5k")
            report["align"]["rows"].append({
                "lambda": lam, "steps": args.align_steps, **zstats(pipe.encode(xw), spec, V, sizes),
                "psnr_db": float(10 * torch.log10(4 / F.mse_loss(xw, x0))), "accuracy": q["accuracy"],
                "fid": q["fid"], "seconds_per_image": (time.perf_counter() - t) / args.n})
        q0 = classifier_report(to_pil((x0 + 1) / 2), labels, fid_real="mnist-5k")
        report["align"]["unaligned"] = {"accuracy": q0["accuracy"], "fid": q0["fid"]}
    report["seconds"] = time.perf_counter() - t0
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


def train_inverter(pipe, sample, args, test_tokens, test_images) -> dict:
    """Fine-tune a copy of encoder + quant_conv so that greedy re-quantisation of decoded samples returns the
    sampled tokens: cross-entropy of the sampled token against the residual's code distances / 0.02, with the
    residual teacher-forced on the sampled tokens of earlier scales; AdamW, lr 1e-4, batch 64."""
    tok, sizes = pipe.inputs.tok, pipe.schedule.step_sizes
    tr_tokens, tr_images = sample(None, seed0=100_000, n=args.inverter_train)
    enc, qc = copy.deepcopy(tok.encoder), copy.deepcopy(tok.quant_conv)
    params = [p for m in (enc, qc) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    def rcc() -> list[float]:
        with torch.no_grad():
            ids = torch.cat(tok.quantize_features(qc(enc(test_images)))[0], 1)
        return per_scale(ids, test_tokens, sizes)

    before, losses = rcc(), []
    g = torch.Generator().manual_seed(0)
    for _ in tqdm(range(args.inverter_steps), desc="inverter"):
        idx = torch.randint(0, len(tr_tokens), (64,), generator=g)
        forced = list(tr_tokens[idx].split(sizes, 1))
        logits = residual_code_logits(tok, qc(enc(tr_images[idx])), forced)
        loss = sum(F.cross_entropy(lg.flatten(0, 1) / 0.02, t.reshape(-1)) for lg, t in zip(logits, forced))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return {"train_samples": args.inverter_train, "steps": args.inverter_steps, "rcc_before": before,
            "rcc_after": rcc(), "loss_first_50": float(np.mean(losses[:50])),
            "loss_last_50": float(np.mean(losses[-50:]))}


if __name__ == "__main__":
    main()
