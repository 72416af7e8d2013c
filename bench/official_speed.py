"""Sampling speed of the OFFICIAL VAR and LlamaGen code on this CPU, next to arvision's, on the same weights.

    .venv/bin/python bench/official_speed.py                      # VAR-d16 and LlamaGen GPT-B, batch 1, 3 repeats
    .venv/bin/python bench/official_speed.py --only var --batch 1 8 --repeat 3 --out-json var.json
    .venv/bin/python bench/official_speed.py --skip-arvision --repeat 1          # the official half only

The official code is never part of this repository.  At run time the few files it needs are extracted with
``git cat-file`` from the local bare mirrors (``/work/.mirror/FoundationVision+VAR/repo``,
``/work/.mirror/FoundationVision+LlamaGen/repo``; see --var-mirror/--llamagen-mirror) into a temporary folder
outside the repository, imported from there by child processes, and deleted at the end.  No shims are needed:
VAR's fused kernels (flash_attn, xformers) are optional imports (absent here: it runs its ``slow_attn`` =
``F.scaled_dot_product_attention`` path, as on any CPU); VAR imports ``huggingface_hub`` (an arvision
dependency); LlamaGen's ``generate`` still finds ``torch.backends.cuda.sdp_kernel`` (deprecated; its
FutureWarning is silenced); its DropPath is its own ``utils/drop_path.py``, not timm.

Weights (random, official layout, built once and cached under --work):
* VAR-d16 256px: the official ``build_vae_var(V=4096, Cvae=32, ch=160, share_quant_resi=4, depth=16,
  patch_nums=(1,2,3,4,5,6,8,10,13,16), num_classes=1000, shared_aln=False)`` after ``torch.manual_seed(seed)``;
  it runs ``VAR.init_weights`` with the official defaults.  It also disables PyTorch's default init of Conv2d,
  so the VQ-VAE's convolutions would be uninitialised memory: we draw them trunc_normal(std 0.02), biases 0
  (the conv rule of VAR's own ``init_weights``).
* LlamaGen: ``VQ_models['VQ-16'](codebook_size=16384, codebook_embed_dim=8)`` and ``GPT_models['GPT-B'](
  vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type='c2i')`` after
  ``torch.manual_seed(seed)``.  GPT's ``initialize_weights`` zeroes the output head (all logits 0: greedy would
  emit token 0 forever), so the head is drawn N(0, 0.02) like every other linear layer.
The state dicts are saved with ``torch.save`` (checked against the released key lists when
``<repo>/../shared/research/*_state_dict_shapes.json`` exist) and converted with ``arvision convert``.

Measured per batch size B (fp32, CPU, ``--threads`` intra-op threads, default: the usable cores; ``--warmup``
untimed runs, then the median of ``--repeat`` runs), each job in a fresh child process:
* official VAR ``autoregressive_infer_cfg(B, label_B=[207]*B, g_seed=seed, cfg=1.5, top_k=900, top_p=0.96,
  more_smooth=False)``: seconds per image for tokens + decode; the decode alone by timing ``vae.fhat_to_img``
  (the call it makes at the end); transformer = the rest.  The sampled ids are recorded with a pre-hook on the
  quantizer's embedding (which the sampler calls with each scale's ids) and saved to WORK/tokens/.
* official LlamaGen ``generate(gpt, [207]*B, 256, cfg_scale=4.0, cfg_interval=-1, temperature=1, top_k=0,
  top_p=1.0, sample_logits=True)`` after ``torch.manual_seed(seed)`` (the tokens alone), then
  ``vq.decode_code`` timed separately; one extra greedy run (top_k=1) for the parity check.
* arvision: ``arvision bench MODEL_DIR --classes 207 --batch-size B --seed S --cfg .. --top-k .. --top-p ..
  --temperature 1 --precision P --warmup W --repeat R --threads T --json`` (its last stdout line is one JSON
  object), on the model ``arvision convert`` made from the same files.
* memory: ``sampling peak`` = VmHWM over the timed runs (reset after the warm-up through /proc/self/clear_refs),
  measured the same way in the official child as ``arvision bench`` does (resident weights + KV cache +
  activations); ``process peak`` = the child's whole-life peak RSS (``os.wait4``; includes reading the
  checkpoint).  KV cache: official = what its caches hold at the end (computed from the shapes; LlamaGen
  allocates 264 positions), arvision = its ``kv_cache_bytes``.
* token parity (fp32): for the first batch size, arvision's Python API with ``torch.Generator().manual_seed(seed)``
  against the official tokens (VAR's sampler seeds its own generator with g_seed; LlamaGen's uses the global RNG
  after torch.manual_seed), for the timed settings and, for LlamaGen, greedy (top_k=1: must be identical); for
  every batch size, the sha256 of the official int64 tokens against ``arvision bench``'s tokens_sha256.
* the arithmetic floor of the transformer: matmul FLOPs per image from the shapes (guidance doubles the batch;
  projections, MLP, attention over the cached length, AdaLN, head) and the weight bytes streamed per call,
  against this CPU's measured fp32 GEMM rate and weight-streaming bandwidth (the faster of a 256 MiB matrix-vector
  product and a plain read of the matrix; probed at the start
  and after every batch size; the best rate so far is used, the floor being a lower bound); also with the KV
  cache's reads added to the bytes (bytes moved per step); for VAR, also ``FlopCounterMode``'s count of the
  official run (matmuls and convs; it does not see CPU attention kernels), whose decoder count at the GEMM rate
  is the decoder's floor.  ``auto`` is ``arvision bench --precision auto``: bf16 where the CPU has native bf16,
  else fp32 through packed weights (``--weights auto``), whose tokens are compared by hash too.

``--rounds N`` runs the official and arvision jobs of a batch size N times in turn and reports the median of the
rounds beside each round's ratio: on a shared VM a neighbour's busy minute then slows every side alike.

Prints a table and writes every number to --out-json.  Ratios are official / arvision: > 1 means arvision is
faster (or smaller).  Timings on a busy machine are noisy: the load average is recorded around every job.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESEARCH = REPO.parent / "shared" / "research"
MIRRORS = {"var": Path("/work/.mirror/FoundationVision+VAR/repo"),
           "llamagen": Path("/work/.mirror/FoundationVision+LlamaGen/repo")}
# Only what the official samplers import.
OFFICIAL_PATHS = {"var": ["models", "dist.py"],
                  "llamagen": ["autoregressive/models/gpt.py", "autoregressive/models/generate.py",
                               "tokenizer/tokenizer_image/vq_model.py", "utils/drop_path.py"]}
FILES = {"var": ("vae.pth", "var.pth"), "llamagen": ("vq.pth", "gpt.pth")}
TITLES = {"var": "VAR-d16 256px", "llamagen": "LlamaGen GPT-B 256px (VQ-16)"}

# VAR-d16 / LlamaGen GPT-B shapes (for the arithmetic floor).
VAR = dict(patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), C=1024, depth=16, V=4096, Cvae=32, mlp=4)
GPT = dict(C=768, layers=12, V=16384, hidden=2048, steps=256, cls=1)  # SwiGLU hidden = find_multiple(2*4C/3, 256)


# =========================================================================================================
# child processes (each job runs in its own interpreter: own peak memory, own thread setting)
# =========================================================================================================
def _proc_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0) so it measures from here on."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _sha(tokens) -> str:
    import torch

    return hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _save_tokens(path: str, **arrays) -> None:
    import numpy as np
    import torch

    np.savez(path, **{k: v.to(torch.int64).numpy() for k, v in arrays.items()})


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def best_seconds(fn, n: int = 5) -> float:
    """The fastest of n timed calls of fn(), after one untimed (bench/packed_linear.py times with it too)."""
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def job_probe(spec: dict) -> dict:
    """This CPU's fp32 GEMM rate and weight-streaming bandwidth (matrix-vector product and plain read)."""
    import torch

    n = 2048
    mats = [torch.randn(n, n), torch.randn(n, n)]
    gemm = 2 * n ** 3 / best_seconds(lambda: torch.mm(*mats))
    mats = [torch.randn(8192, 8192), torch.randn(8192)]  # 256 MiB of "weights", read once per product
    mv = mats[0].numel() * 4 / best_seconds(lambda: torch.mv(*mats))
    # a plain read of the same bytes: on some CPUs faster than BLAS's matrix-vector product (19.9 against 17.5
    # GB/s on an AVX2 EPYC, bench/packed_linear.py), and a kernel can stream at that rate, so the floor takes the
    # faster of the two
    read = mats[0].numel() * 4 / best_seconds(lambda: mats[0].sum())
    return {"gemm_flops_per_s": gemm, "gemm_shape": [n, n, n], "stream_bytes_per_s": max(mv, read),
            "stream_mv_bytes_per_s": mv, "stream_read_bytes_per_s": read, "stream_shape": [8192, 8192]}


def _check_layout(sd: dict, key: str, research_file: str) -> dict:
    path = RESEARCH / research_file
    if not path.is_file():
        return {"checked": False, "why": f"{path} not found"}
    spec = json.loads(path.read_text())[key]["state_dict"]
    shape = {k: (v["shape"] if isinstance(v, dict) else v) for k, v in spec.items()}
    missing, extra = sorted(set(shape) - set(sd)), sorted(set(sd) - set(shape))
    bad = [k for k in shape if k in sd and list(sd[k].shape) != list(shape[k])]
    return {"checked": True, "matches_release": not (missing or extra or bad), "missing": missing[:20],
            "extra": extra[:20], "bad_shapes": bad[:20]}


def job_prepare_var(spec: dict) -> dict:
    import torch
    from models import build_vae_var  # the official code, from the temporary folder

    torch.manual_seed(spec["seed"])
    vae, var = build_vae_var(device="cpu", patch_nums=tuple(VAR["patch_nums"]), V=4096, Cvae=32, ch=160,
                             share_quant_resi=4, num_classes=1000, depth=16, shared_aln=False)
    with torch.no_grad():  # build_vae_var disabled Conv2d's default init: the VQ-VAE convs are still empty
        for m in vae.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    m.bias.zero_()
    out = {}
    for model, name, key, research in ((vae, FILES["var"][0], "vqvae_vae_ch160v4096z32", "var_state_dict_shapes.json"),
                                       (var, FILES["var"][1], "var_d16", "var_state_dict_shapes.json")):
        sd = model.state_dict()
        params = dict(model.named_parameters())  # (buffers such as attn_bias_for_masking hold -inf on purpose)
        bad = [k for k, v in sd.items() if v.is_floating_point() and (v.isnan().any() or (
            k in params and not v.isfinite().all()))]
        if bad:
            raise RuntimeError(f"non-finite values in the freshly built {name}: {bad[:10]}")
        torch.save(sd, Path(spec["folder"]) / name)
        out[name] = {"num_params": sum(p.numel() for p in model.parameters()),
                     "layout": _check_layout(sd, key, research)}
    return out


def job_prepare_llamagen(spec: dict) -> dict:
    import torch
    from autoregressive.models.gpt import GPT_models
    from tokenizer.tokenizer_image.vq_model import VQ_models

    torch.manual_seed(spec["seed"])
    vq = VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8)
    gpt = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i")
    with torch.no_grad():  # initialize_weights zeroes the head: give it the same N(0, 0.02) as the other layers
        gpt.output.weight.normal_(0.0, gpt.config.initializer_range)
    out = {}
    for model, name, key in ((vq, FILES["llamagen"][0], "VQ-16"), (gpt, FILES["llamagen"][1], "GPT-B_256")):
        sd = model.state_dict()
        torch.save(sd, Path(spec["folder"]) / name)
        out[name] = {"num_params": sum(p.numel() for p in model.parameters()),
                     "layout": _check_layout(sd, key, "llamagen_state_dict_shapes.json")}
    return out


def job_official_var(spec: dict) -> dict:
    import torch
    from models import build_vae_var

    B, folder = spec["batch"], Path(spec["folder"])
    vae, var = build_vae_var(device="cpu", patch_nums=tuple(VAR["patch_nums"]), V=4096, Cvae=32, ch=160,
                             share_quant_resi=4, num_classes=1000, depth=16, shared_aln=False)
    # as the official demo_sample.ipynb: strict loads, eval, no grads
    vae.load_state_dict(torch.load(folder / FILES["var"][0], map_location="cpu"), strict=True)
    var.load_state_dict(torch.load(folder / FILES["var"][1], map_location="cpu"), strict=True)
    vae.eval(), var.eval()
    for p in (*vae.parameters(), *var.parameters()):
        p.requires_grad_(False)
    assert var.vae_proxy[0] is vae
    import gc

    gc.collect()
    loaded_rss = _proc_bytes("VmRSS")

    ids: list = []  # each scale's sampled ids: the sampler embeds them with the quantizer's embedding
    var.vae_quant_proxy[0].embedding.register_forward_pre_hook(lambda m, args: ids.append(args[0].clone()))
    decode_s: list[float] = []
    last_fhat: list = []
    fhat_to_img = vae.fhat_to_img

    def timed_fhat_to_img(f_hat):
        last_fhat[:] = [f_hat.clone()]
        t0 = time.perf_counter()
        out = fhat_to_img(f_hat)
        decode_s.append(time.perf_counter() - t0)
        return out

    vae.fhat_to_img = timed_fhat_to_img  # the sampler calls self.vae_proxy[0].fhat_to_img(f_hat)
    labels = torch.tensor([spec["label"]] * B)
    s = spec["sampling"]

    def run():
        ids.clear()
        t0 = time.perf_counter()
        with torch.inference_mode():
            img = var.autoregressive_infer_cfg(B=B, label_B=labels, g_seed=spec["seed"], cfg=s["cfg"],
                                               top_k=s["top_k"], top_p=s["top_p"], more_smooth=False)
        total = time.perf_counter() - t0
        return total, decode_s[-1], torch.cat(ids, dim=1), img

    for _ in range(spec["warmup"]):
        run()
    reset = _reset_peak()  # the peak over the timed runs, as `arvision bench` measures it
    runs = [run() for _ in range(spec["repeat"])]
    peak = _proc_bytes("VmHWM") if reset else None
    totals, decodes = [r[0] for r in runs], [r[1] for r in runs]
    tokens, img = runs[0][2], runs[0][3]
    L = sum(p * p for p in VAR["patch_nums"])
    assert tokens.shape == (B, L), tokens.shape
    _save_tokens(spec["tokens_out"], tokens=tokens)
    res = {
        "seconds_per_image": _med(totals) / B,
        "transformer_seconds_per_image": _med([t - d for t, d in zip(totals, decodes)]) / B,
        "decode_seconds_per_image": _med(decodes) / B,
        "runs_seconds": totals, "decode_runs_seconds": decodes,
        "loaded_rss_bytes": loaded_rss, "sampling_peak_rss_bytes": peak,
        "kv_cache_bytes": 2 * VAR["depth"] * 2 * B * L * VAR["C"] * 4,  # k and v, per block, cfg batch, fp32
        "tokens_sha256": _sha(tokens), "tokens_file": spec["tokens_out"],
        "tokens_same_every_run": all(torch.equal(r[2], tokens) for r in runs),
        "image_finite": bool(torch.isfinite(img).all()), "image_std": float(img.std()),
    }
    if spec.get("count_flops"):
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            run()
        with FlopCounterMode(display=False) as fd, torch.inference_mode():
            fhat_to_img(last_fhat[0])
        res["counted_flops_per_image"] = {  # FlopCounterMode: matmuls and convs (not CPU attention kernels)
            "total": fc.get_total_flops() / B, "decode": fd.get_total_flops() / B,
            "transformer_without_attention": (fc.get_total_flops() - fd.get_total_flops()) / B}
    return res


def job_official_llamagen(spec: dict) -> dict:
    import torch
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import GPT_models
    from tokenizer.tokenizer_image.vq_model import VQ_models

    B, folder, s = spec["batch"], Path(spec["folder"]), spec["sampling"]
    # as the official autoregressive/sample/sample_c2i.py (fp32: --precision none)
    torch.set_grad_enabled(False)
    vq = VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8)
    vq.load_state_dict(torch.load(folder / FILES["llamagen"][0], map_location="cpu"))
    vq.eval()
    gpt = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i")
    gpt.load_state_dict(torch.load(folder / FILES["llamagen"][1], map_location="cpu"), strict=True)
    gpt.eval()
    import gc

    gc.collect()
    loaded_rss = _proc_bytes("VmRSS")
    cond = torch.tensor([spec["label"]] * B)

    def run(top_k, top_p, temperature):
        torch.manual_seed(spec["seed"])
        t0 = time.perf_counter()
        seq = generate(gpt, cond, GPT["steps"], cfg_scale=s["cfg"], cfg_interval=-1, temperature=temperature,
                       top_k=top_k, top_p=top_p, sample_logits=True)
        return time.perf_counter() - t0, seq

    def run_and_decode():
        t, seq = run(s["top_k"], s["top_p"], s["temperature"])
        t0 = time.perf_counter()
        img = vq.decode_code(seq, [B, 8, 16, 16])  # as sample_c2i.py: qzshape (B, codebook_embed_dim, 16, 16)
        return t, time.perf_counter() - t0, seq, img

    for _ in range(spec["warmup"]):
        run_and_decode()
    reset = _reset_peak()  # the peak over the timed runs, as `arvision bench` measures it
    runs = [run_and_decode() for _ in range(spec["repeat"])]
    peak = _proc_bytes("VmHWM") if reset else None
    times, dec = [r[0] for r in runs], [r[1] for r in runs]
    tokens, img = runs[0][2], runs[0][3]
    assert tokens.shape == (B, GPT["steps"]), tokens.shape
    res = {
        "transformer_seconds_per_image": _med(times) / B,
        "decode_seconds_per_image": _med(dec) / B,
        "seconds_per_image": (_med(times) + _med(dec)) / B,
        "runs_seconds": times, "decode_runs_seconds": dec,
        "loaded_rss_bytes": loaded_rss, "sampling_peak_rss_bytes": peak,
        # official setup_caches: k and v per layer, (2B, heads, find_multiple(257, 8) = 264, head_dim) fp32
        "kv_cache_bytes": 2 * GPT["layers"] * 2 * B * 264 * GPT["C"] * 4,
        "tokens_sha256": _sha(tokens), "tokens_file": spec["tokens_out"],
        "tokens_same_every_run": all(torch.equal(r[2], tokens) for r in runs),
        "image_finite": bool(torch.isfinite(img).all()),
    }
    arrays = {"tokens": tokens}
    if spec.get("greedy"):
        t, greedy = run(1, 1.0, 1.0)
        arrays["greedy"] = greedy
        res["greedy_seconds_per_image"] = t / B
        res["greedy_tokens_sha256"] = _sha(greedy)
    _save_tokens(spec["tokens_out"], **arrays)
    return res


def job_arvision_api(spec: dict) -> dict:
    """arvision's tokens through the Python API, for the parity check (fp32)."""
    import torch

    from arvision import ARPipeline

    pipe = ARPipeline.from_pretrained(spec["model_dir"])
    s, labels = spec["sampling"], [spec["label"]] * spec["batch"]

    def tokens(top_k):
        return pipe(labels, guidance_scale=s["cfg"], top_k=top_k, top_p=s["top_p"], temperature=s["temperature"],
                    generator=torch.Generator().manual_seed(spec["seed"]), output_type="tokens",
                    precision="fp32").tokens

    arrays = {key: tokens(1 if key == "greedy" else s["top_k"]) for key in spec["keys"]}
    _save_tokens(spec["tokens_out"], **arrays)
    return {"tokens_file": spec["tokens_out"], **{f"{k}_sha256": _sha(v) for k, v in arrays.items()}}


JOBS = {"probe": job_probe, "prepare_var": job_prepare_var, "prepare_llamagen": job_prepare_llamagen,
        "official_var": job_official_var, "official_llamagen": job_official_llamagen,
        "arvision_api": job_arvision_api}


def child_main(spec_path: str) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    if spec.get("src"):
        sys.path.insert(0, spec["src"])
    result = JOBS[spec["job"]](spec)
    result["threads"] = result.get("threads", torch.get_num_threads())
    result["torch"] = torch.__version__
    Path(spec["result"]).write_text(json.dumps(result))


# =========================================================================================================
# parent
# =========================================================================================================
class Runner:
    def __init__(self, work: Path, threads: int):
        self.work, self.threads, self.n = work, threads, 0
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                    "PYTHONWARNINGS": "ignore::FutureWarning"}

    def _wait(self, cmd: list[str], log: Path, capture: bool) -> tuple[int, str, dict]:
        """Run cmd; return (exit code, stdout if captured, {peak RSS of that process, seconds, load average})."""
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        with open(log, "w") as lf:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE if capture else lf, stderr=lf, env=self.env,
                                 text=True, cwd=REPO)
            out = p.stdout.read() if capture else ""
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
        if capture:
            with open(log, "a") as lf:
                lf.write(out)
        info = {"process_peak_rss_bytes": usage.ru_maxrss * 1024, "wall_seconds": time.perf_counter() - t0,
                "loadavg_before": round(load0, 2), "loadavg_after": round(os.getloadavg()[0], 2)}
        return p.returncode, out, info

    def child(self, job: str, **spec) -> dict:
        self.n += 1
        base = self.work / "logs" / f"{self.n:02d}_{job}"
        spec = {"job": job, "threads": self.threads, "result": str(base) + ".result.json", **spec}
        Path(str(base) + ".spec.json").write_text(json.dumps(spec))
        log = Path(str(base) + ".log")
        rc, _, info = self._wait([sys.executable, __file__, "--_child", str(base) + ".spec.json"], log, False)
        if rc != 0:
            raise SystemExit(f"{job} failed (exit {rc}); log {log}:\n" + _tail(log))
        return {**json.loads(Path(spec["result"]).read_text()), **info}

    def command(self, name: str, cmd: list[str], capture: bool = True) -> tuple[int, str, dict, Path]:
        self.n += 1
        log = self.work / "logs" / f"{self.n:02d}_{name}.log"
        rc, out, info = self._wait(cmd, log, capture)
        return rc, out, info, log


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def extract_official(family: str, mirror: Path, dest: Path) -> str:
    """Copy the files the sampler needs from the bare mirror's HEAD into dest (outside the repository), blob by
    blob (a mirror may lack unrelated blobs, which makes `git archive` of the whole tree fail); returns the
    commit."""
    git = ["git", f"--git-dir={mirror}"]
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    names = subprocess.run(git + ["ls-tree", "-r", "--name-only", commit, "--", *OFFICIAL_PATHS[family]],
                           check=True, capture_output=True, text=True).stdout.split()
    if not names:
        raise SystemExit(f"{mirror} @ {commit}: none of {OFFICIAL_PATHS[family]} found")
    for name in names:
        blob = subprocess.run(git + ["cat-file", "blob", f"{commit}:{name}"], check=True, capture_output=True).stdout
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    return commit


# --arvision-precision choices -> arvision bench flags (a compiled mode compiles during its first warm-up run)
ARVISION_MODES = {"fp32": ["--precision", "fp32"], "auto": ["--precision", "auto"], "bf16": ["--precision", "bf16"],
                  "int8": ["--precision", "bf16", "--weights", "int8"],
                  "auto-compiled": ["--precision", "auto", "--compile"],
                  "auto-compiled-packed": ["--precision", "auto", "--compile", "--weights", "packed"]}


def arvision_cli() -> list[str]:
    exe = Path(sys.executable).parent / "arvision"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "arvision"]


def settings_for(family: str, args) -> dict:
    if family == "var":
        return {"official": {"cfg": 1.5, "top_k": 900, "top_p": 0.96, "more_smooth": False},
                "arvision": {"cfg": 1.5, "top_k": 900, "top_p": 0.96, "temperature": 1.0}}
    k = args.llamagen_top_k
    return {"official": {"cfg": 4.0, "top_k": k, "top_p": 1.0, "temperature": 1.0, "cfg_interval": -1},
            # the official top_p=1.0 means "no nucleus filter": top_p=0 in arvision
            "arvision": {"cfg": 4.0, "top_k": k, "top_p": 0.0, "temperature": 1.0}}


def prepare(runner: Runner, family: str, src: Path, commit: str, args) -> tuple[Path, dict]:
    folder = args.work / family
    stamp = {"commit": commit, "seed": args.seed, "format": 1}
    stamp_file = folder / "weights.json"
    files = [folder / f for f in FILES[family]]
    if not args.rebuild and stamp_file.is_file() and all(f.is_file() for f in files):
        meta = json.loads(stamp_file.read_text())
        if meta.get("stamp") == stamp:
            print(f"  reusing {family} weights in {folder}", flush=True)
            return folder, meta
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"  building random official-layout {family} weights in {folder} ...", flush=True)
    meta = runner.child(f"prepare_{family}", src=str(src), folder=str(folder), seed=args.seed)
    meta["stamp"] = stamp
    stamp_file.write_text(json.dumps(meta, indent=1))
    return folder, meta


def convert(runner: Runner, family: str, folder: Path, meta: dict) -> Path:
    out = folder / "arvision_model"
    done = folder / "arvision_model.json"
    if done.is_file() and json.loads(done.read_text()) == meta["stamp"] and (out / "config.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    a, b = (folder / f for f in FILES[family])
    flags = ["--vae", str(a), "--var", str(b)] if family == "var" else ["--vq", str(a), "--gpt", str(b)]
    rc, _, _, log = runner.command(f"convert_{family}", arvision_cli() + ["convert", family, *flags, "--out", str(out)])
    if rc != 0:
        raise SystemExit(f"arvision convert {family} failed; log {log}:\n" + _tail(log))
    done.write_text(json.dumps(meta["stamp"]))
    return out


def arvision_bench(runner: Runner, family: str, model_dir: Path, B: int, precision: str, args) -> dict:
    s = settings_for(family, args)["arvision"]
    warmup = max(args.warmup, 1) if "compiled" in precision else args.warmup
    cmd = arvision_cli() + ["bench", str(model_dir), "--classes", str(args.label), "--batch-size", str(B),
                            "--seed", str(args.seed), "--cfg", str(s["cfg"]), "--top-k", str(s["top_k"]),
                            "--top-p", str(s["top_p"]), "--temperature", str(s["temperature"]),
                            *ARVISION_MODES[precision],
                            "--warmup", str(warmup), "--repeat", str(args.repeat),
                            "--threads", str(runner.threads), "--json"]
    rc, out, info, log = runner.command(f"arvision_bench_{family}_b{B}_{precision}", cmd)
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    if rc != 0 or not lines:
        raise SystemExit(f"arvision bench failed (exit {rc}); log {log}:\n" + _tail(log))
    res = json.loads(lines[-1])
    if res.get("batch_size", B) != B:
        raise SystemExit(f"arvision bench ran batch {res.get('batch_size')}, asked for {B}")
    return {**res, **info, "command": " ".join(cmd)}


# -- the arithmetic floor ----------------------------------------------------------------------------------
def var_floor(B: int) -> dict:
    """Matmul FLOPs per image (guidance: 2B rows) and weight bytes streamed per call, from VAR-d16's shapes."""
    C, depth, V, Cvae, mlp, pn = VAR["C"], VAR["depth"], VAR["V"], VAR["Cvae"], VAR["mlp"], VAR["patch_nums"]
    R = 2 * B  # conditional + unconditional rows
    f = dict.fromkeys(("qkv", "proj", "mlp", "attention", "adaln", "head", "word_embed", "phi"), 0)
    cached = 0
    for s, p in enumerate(pn):
        n = p * p
        cached += n
        f["qkv"] += depth * 2 * R * n * C * 3 * C
        f["proj"] += depth * 2 * R * n * C * C
        f["mlp"] += depth * 2 * R * n * C * mlp * C * 2
        f["attention"] += depth * 2 * 2 * R * n * cached * C  # q.k over the cached length, then attn @ v
        f["adaln"] += depth * 2 * R * C * 6 * C + 2 * R * C * 2 * C  # per block + before the head, per scale
        f["head"] += 2 * R * n * C * V
        if s + 1 < len(pn):
            f["word_embed"] += 2 * B * pn[s + 1] ** 2 * Cvae * C
        f["phi"] += 2 * B * pn[-1] ** 2 * Cvae * Cvae * 9  # the 3x3 Phi conv on f_hat (16x16)
    per_scale = depth * (6 * C * C + 3 * C * C + C * C + 2 * mlp * C * C) + 2 * C * C + C * V
    weight_bytes = 4 * (len(pn) * per_scale + (len(pn) - 1) * Cvae * C)
    # the fp32 KV cache each scale reads: keys and values of every cached position, per layer and row
    kv_bytes = sum(depth * 2 * R * C * 4 * sum(q * q for q in pn[:s + 1]) for s in range(len(pn)))
    return {"flops_per_image": {k: v / B for k, v in f.items()}, "total_flops_per_image": sum(f.values()) / B,
            "weight_bytes_per_call": weight_bytes, "weight_bytes_per_image": weight_bytes / B,
            "kv_bytes_per_image": kv_bytes / B, "steps": len(pn)}


def llamagen_floor(B: int) -> dict:
    C, layers, V, H, steps, cls = GPT["C"], GPT["layers"], GPT["V"], GPT["hidden"], GPT["steps"], GPT["cls"]
    R = 2 * B
    linear = layers * (4 * C * C + 3 * C * H) + C * V  # wqkv + wo, w1 + w3 + w2, output head
    f = {"linear": steps * 2 * R * linear,
         "attention": sum(layers * 2 * 2 * R * (cls + t) * C for t in range(steps))}  # keys: class token + so far
    kv_bytes = sum(layers * 2 * R * C * 4 * (cls + t) for t in range(steps))  # fp32 keys + values read per step
    return {"flops_per_image": {k: v / B for k, v in f.items()}, "total_flops_per_image": sum(f.values()) / B,
            "weight_bytes_per_call": steps * 4 * linear, "weight_bytes_per_image": steps * 4 * linear / B,
            "kv_bytes_per_image": kv_bytes / B, "steps": steps}


def add_floor(entry: dict, family: str, B: int, probe: dict, decode_flops: float | None = None) -> None:
    fl = var_floor(B) if family == "var" else llamagen_floor(B)
    compute = fl["total_flops_per_image"] / probe["gemm_flops_per_s"]
    memory = fl["weight_bytes_per_image"] / probe["stream_bytes_per_s"]
    moved_bytes = fl["weight_bytes_per_image"] + fl["kv_bytes_per_image"]
    moved = moved_bytes / probe["stream_bytes_per_s"]
    fl.update(compute_floor_seconds_per_image=compute, bandwidth_floor_seconds_per_image=memory,
              floor_seconds_per_image=max(compute, memory), bytes_moved_per_step=moved_bytes * B / fl["steps"],
              with_kv_floor_seconds_per_image=max(compute, moved))
    if decode_flops:  # the decoder's convolutions at the GEMM rate (its norms and activations are not counted)
        fl["decode_flops_per_image"] = decode_flops
        fl["decode_floor_seconds_per_image"] = decode_flops / probe["gemm_flops_per_s"]
    for name, res in (("official", entry.get("official")), *entry.get("arvision", {}).items()):
        t = (res or {}).get("transformer_seconds_per_image")
        if t:
            fl[f"{name}_transformer_over_floor"] = t / fl["floor_seconds_per_image"]
            fl[f"{name}_transformer_over_with_kv_floor"] = t / fl["with_kv_floor_seconds_per_image"]
            if name != "official":
                fl[f"{name}_effective_bytes_per_s"] = moved_bytes / t
        t = (res or {}).get("decode_seconds_per_image")
        if t and decode_flops:
            fl[f"{name}_decode_over_floor"] = t / fl["decode_floor_seconds_per_image"]
    entry["floor"] = fl


# -- comparisons --------------------------------------------------------------------------------------
def compare_tokens(a_file: str, b_file: str, key: str, family: str) -> dict:
    import numpy as np

    a, b = np.load(a_file)[key], np.load(b_file)[key]
    if a.shape != b.shape:
        return {"identical": False, "why": f"shapes {a.shape} vs {b.shape}"}
    diff = a != b
    res = {"identical": bool(not diff.any()), "mismatched_tokens": int(diff.sum()), "tokens": int(a.size)}
    if diff.any():
        first = int(np.argwhere(diff.any(axis=0))[0][0])
        res["first_mismatch_position"] = first
        if family == "var":
            ends = np.cumsum([p * p for p in VAR["patch_nums"]])
            res["first_mismatch_scale"] = int(np.searchsorted(ends, first, side="right"))
    return res


TIMES = ("seconds_per_image", "transformer_seconds_per_image", "decode_seconds_per_image")


def merge_rounds(results: list[dict]) -> dict:
    """The first round's result with each time replaced by the median over the rounds (each round's in
    ``rounds``); tokens, memory and the rest are the first round's."""
    merged = dict(results[0])
    if len(results) > 1:
        for key in TIMES:
            values = [r[key] for r in results if r.get(key) is not None]
            if values:
                merged[key] = _med(values)
        merged["rounds"] = [{k: r.get(k) for k in TIMES} for r in results]
    return merged


def ratios(off: dict, arv: dict) -> dict:
    def r(a, b):
        return a / b if a and b else None

    return {
        "seconds_per_image": r(off.get("seconds_per_image"), arv.get("seconds_per_image")),
        "transformer_seconds_per_image": r(off.get("transformer_seconds_per_image"),
                                           arv.get("transformer_seconds_per_image")),
        "decode_seconds_per_image": r(off.get("decode_seconds_per_image"), arv.get("decode_seconds_per_image")),
        "process_peak_rss": r(off.get("process_peak_rss_bytes"), arv.get("process_peak_rss_bytes")),
        "sampling_peak_memory": r(off.get("sampling_peak_rss_bytes"), arv.get("peak_memory_bytes")),
        "kv_cache_bytes": r(off.get("kv_cache_bytes"), arv.get("kv_cache_bytes")),
    }


# -- output -------------------------------------------------------------------------------------------
def _fmt(v, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "GB":
        return f"{v / 2**30:.2f} GiB"
    if unit == "MB":
        return f"{v / 2**20:.1f} MiB"
    if unit == "x":
        return f"{v:.2f}x"
    return str(v)


def _per_side(fl: dict, names, key: str, fmt) -> str:
    """``fmt(name, fl[name_key])`` joined over the sides (official, each arvision precision) that have the key."""
    return "".join(fmt(n, fl[f"{n}_{key}"]) for n in names if f"{n}_{key}" in fl)


def print_entry(family: str, B: int, entry: dict) -> None:
    off, runs = entry["official"], entry.get("arvision", {})
    precs = list(runs)
    print(f"\n{TITLES[family]}, batch {B}, fp32 official vs arvision ({', '.join(precs) or 'skipped'}); "
          f"{off['threads']} threads, load average {off['loadavg_before']} -> {off['loadavg_after']}")
    head = f"  {'':36s}{'official':>14s}" + "".join(f"{'arvision ' + p:>16s}{'off/arv':>9s}" for p in precs)
    print(head)
    rows = [("seconds per image (tokens+decode)", "seconds_per_image", "seconds_per_image", "s"),
            ("  transformer (tokens) s/image", "transformer_seconds_per_image", "transformer_seconds_per_image", "s"),
            ("  decode s/image", "decode_seconds_per_image", "decode_seconds_per_image", "s"),
            ("process peak RSS", "process_peak_rss_bytes", "process_peak_rss_bytes", "GB"),
            ("sampling peak RSS (timed runs)", "sampling_peak_rss_bytes", "peak_memory_bytes", "GB"),
            ("KV cache", "kv_cache_bytes", "kv_cache_bytes", "MB")]
    rkey = {"seconds_per_image": "seconds_per_image", "transformer_seconds_per_image": "transformer_seconds_per_image",
            "decode_seconds_per_image": "decode_seconds_per_image", "process_peak_rss_bytes": "process_peak_rss",
            "sampling_peak_rss_bytes": "sampling_peak_memory", "kv_cache_bytes": "kv_cache_bytes"}
    for label, ko, ka, unit in rows:
        line = f"  {label:36s}{_fmt(off.get(ko), unit):>14s}"
        for p in precs:
            line += f"{_fmt(runs[p].get(ka), unit):>16s}{_fmt(entry['ratios'][p].get(rkey[ko]), 'x'):>9s}"
        print(line)
    for p in precs:
        rounds = entry["ratios"][p].get("rounds")
        if rounds:
            per = ", ".join(f"{r['transformer_seconds_per_image']:.2f}x" for r in rounds)
            print(f"  official/arvision {p}, transformer, each round: {per}")
    par = entry.get("parity", {})
    for name, res in par.items():
        if not isinstance(res, dict):
            detail = "identical" if res else "DIFFER"
        elif res.get("identical"):
            detail = "identical"
        elif "mismatched_tokens" in res:
            detail = (f"DIFFER: {res['mismatched_tokens']}/{res['tokens']} tokens, first at position "
                      f"{res['first_mismatch_position']}")
            if "first_mismatch_scale" in res:
                detail += f" (scale {res['first_mismatch_scale']})"
        else:
            detail = f"DIFFER: {res.get('why')}"
        print(f"  tokens {name}: {detail}")
    fl = entry.get("floor")
    if fl:
        parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in fl["flops_per_image"].items())
        print(f"  arithmetic floor: {fl['total_flops_per_image'] / 1e9:.1f} GFLOP/image ({parts}); "
              f"{fl['weight_bytes_per_call'] / 1e9:.2f} GB of weights streamed per call "
              f"({fl['weight_bytes_per_image'] / 1e9:.2f} GB/image)")
        line = (f"    -> compute {fl['compute_floor_seconds_per_image']:.3f} s, bandwidth "
                f"{fl['bandwidth_floor_seconds_per_image']:.3f} s: floor {fl['floor_seconds_per_image']:.3f} s/image")
        names = ("official", *precs)
        print(line + _per_side(fl, names, "transformer_over_floor", lambda n, v: f"; {n} transformer {v:.2f}x "
                                                                                    "the floor"))
        line = (f"    with the KV cache read ({fl['kv_bytes_per_image'] / 1e9:.2f} GB/image; "
                f"{fl['bytes_moved_per_step'] / 1e6:.0f} MB moved per step): floor "
                f"{fl['with_kv_floor_seconds_per_image']:.3f} s/image")

        def with_rate(n, v):  # arvision's sides also say the rate they moved those bytes at
            rate = fl.get(f"{n}_effective_bytes_per_s")
            return f"; {n} {v:.2f}x" + (f" ({rate / 1e9:.1f} GB/s)" if rate else "")
        print(line + _per_side(fl, names, "transformer_over_with_kv_floor", with_rate))
        if "decode_floor_seconds_per_image" in fl:
            line = (f"    decode: {fl['decode_flops_per_image'] / 1e9:.1f} GFLOP/image, floor "
                    f"{fl['decode_floor_seconds_per_image']:.3f} s/image")
            print(line + _per_side(fl, names, "decode_over_floor", lambda n, v: f"; {n} {v:.2f}x"))
        cf = off.get("counted_flops_per_image")
        if cf:
            print(f"    FlopCounterMode (official run, no CPU attention kernels): transformer "
                  f"{cf['transformer_without_attention'] / 1e9:.1f} GFLOP/image (shape count without attention "
                  f"{(fl['total_flops_per_image'] - fl['flops_per_image']['attention']) / 1e9:.1f}), "
                  f"decode {cf['decode'] / 1e9:.1f} GFLOP/image")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["var", "llamagen"], help="one family (default: both)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    ap.add_argument("--repeat", type=int, default=3, help="measured runs, median reported (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up runs (default 1)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the official and arvision jobs of a batch size this many times, interleaved, and "
                         "report the median of the rounds (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the usable cores)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/arvision-official-speed"),
                    help="weights, converted models, tokens, logs (default /tmp/arvision-official-speed)")
    ap.add_argument("--out-json", type=Path, default=None, help="default: WORK/official_speed.json")
    ap.add_argument("--skip-arvision", action="store_true", help="measure the official code only")
    ap.add_argument("--arvision-precision", nargs="+", choices=list(ARVISION_MODES), default=["fp32"],
                    help="arvision bench --precision, one run each (default fp32; parity is checked in fp32); "
                         "int8 = --precision bf16 --weights int8; auto-compiled = --precision auto --compile (on a "
                         "CPU: frozen weights, inductor's GEMMs measured per layer; its compile time, in the first "
                         "warm-up run, is reported apart); auto-compiled-packed = the same over oneDNN-packed weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", type=int, default=207, help="ImageNet class (default 207)")
    ap.add_argument("--llamagen-top-k", type=int, default=0,
                    help="LlamaGen top-k (default 0 = off; the official sample_c2i.py default is 2000)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the random weights even if cached")
    ap.add_argument("--var-mirror", type=Path, default=MIRRORS["var"])
    ap.add_argument("--llamagen-mirror", type=Path, default=MIRRORS["llamagen"])
    args = ap.parse_args(argv)

    families = [args.only] if args.only else ["var", "llamagen"]
    threads = args.threads or len(os.sched_getaffinity(0))
    args.work = args.work.resolve()
    if REPO in (args.work, *args.work.parents):
        raise SystemExit(f"--work {args.work} is inside the repository: the official weights/code must stay out")
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    (args.work / "tokens").mkdir(exist_ok=True)
    out_json = args.out_json or args.work / "official_speed.json"
    runner = Runner(args.work, threads)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    report: dict = {
        "machine": {"cpu": cpu, "usable_cores": len(os.sched_getaffinity(0)), "threads": threads,
                    "python": platform.python_version(), "loadavg_at_start": os.getloadavg()},
        "settings": {"batch": args.batch, "repeat": args.repeat, "warmup": args.warmup, "seed": args.seed,
                     "label": args.label, "precision_official": "fp32", "device": "cpu",
                     "families": {f: settings_for(f, args) for f in families}},
        "results": {},
    }
    print(f"{cpu}: {threads} threads, load average {os.getloadavg()[0]:.2f}; work folder {args.work}", flush=True)
    if os.getloadavg()[0] > 0.5 * len(os.sched_getaffinity(0)):
        print("  note: the machine is busy; timings will be noisy", flush=True)
    probes = []

    def reprobe() -> dict:
        """Probe the rates again and keep the best of every probe so far: the floor is a lower bound of the time,
        so the fastest rate this shared machine showed is the fair one (one probe taken while a neighbour ran
        would make the floor look slower than it is)."""
        p = runner.child("probe")
        probes.append({k: v for k, v in p.items() if k.endswith("_per_s")})  # the GEMM and streaming rates
        best = {k: max(q[k] for q in probes) for k in ("gemm_flops_per_s", "stream_bytes_per_s")}
        report["machine"].update(torch=p["torch"], probes=probes, **best)
        gb = {k: v / 1e9 for k, v in probes[-1].items()}
        line = (f"  fp32 GEMM {p['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s, weight streaming "
                f"{gb['stream_bytes_per_s']:.1f} GB/s (matrix-vector {gb['stream_mv_bytes_per_s']:.1f}, plain read "
                f"{gb['stream_read_bytes_per_s']:.1f}; best so far: {best['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s, "
                f"{best['stream_bytes_per_s'] / 1e9:.1f} GB/s)")
        print(line, flush=True)
        return best

    probe = reprobe()
    with tempfile.TemporaryDirectory(prefix="official-src-") as tmp:
        for family in families:
            mirror = args.var_mirror if family == "var" else args.llamagen_mirror
            src = Path(tmp) / family
            commit = extract_official(family, mirror, src)
            print(f"\n{TITLES[family]}: official code {mirror} @ {commit[:10]} (extracted to {src})", flush=True)
            folder, meta = prepare(runner, family, src, commit, args)
            fam = report["results"].setdefault(family, {"official_commit": commit, "weights": meta, "batches": {}})
            model_dir = None
            if not args.skip_arvision:
                model_dir = convert(runner, family, folder, meta)
            sett = settings_for(family, args)
            for i, B in enumerate(args.batch):
                first = i == 0
                tok_off = str(args.work / "tokens" / f"{family}_official_b{B}.npz")
                offs, arvs = [], {prec: [] for prec in args.arvision_precision}
                for rnd in range(args.rounds):  # interleaved: a slow minute of the shared machine hits every side
                    tag = f" (round {rnd + 1}/{args.rounds})" if args.rounds > 1 else ""
                    print(f"  official {family}, batch {B}{tag} ...", flush=True)
                    offs.append(runner.child(f"official_{family}", src=str(src), folder=str(folder), batch=B,
                                             label=args.label, seed=args.seed, warmup=args.warmup,
                                             repeat=args.repeat, sampling=sett["official"],
                                             # round 0 keeps the greedy tokens of the parity check
                                             tokens_out=tok_off if rnd == 0 else tok_off[:-4] + f"_r{rnd}.npz",
                                             count_flops=first and rnd == 0 and family == "var",
                                             greedy=first and rnd == 0 and model_dir is not None))
                    for prec in (args.arvision_precision if model_dir is not None else []):
                        print(f"  arvision {family}, batch {B}, {prec}{tag} ...", flush=True)
                        arvs[prec].append(arvision_bench(runner, family, model_dir, B, prec, args))
                off = merge_rounds(offs)
                entry = {"official": off, "arvision": {}, "ratios": {}, "parity": {}}
                if model_dir is not None:
                    for prec in args.arvision_precision:
                        arv = merge_rounds(arvs[prec])
                        arv["first_warmup_seconds_rounds"] = [a["warmup_seconds"][0] for a in arvs[prec]
                                                              if a.get("warmup_seconds")]
                        entry["arvision"][prec] = arv
                        entry["ratios"][prec] = ratios(off, arv)
                        if args.rounds > 1:  # the ratio of each round, official and arvision run back to back
                            entry["ratios"][prec]["rounds"] = [ratios(o, a) for o, a in zip(offs, arvs[prec])]
                        if arv.get("tokens_sha256") and arv.get("precision") == "float32":
                            # fp32 through packed weights (auto on CPUs without fast bf16) is checked too: equal
                            # within rounding, so its tokens should be the official ones as well
                            label = "fp32" if prec == "fp32" else f"{prec}: fp32, weights {arv.get('weights')}"
                            entry["parity"][f"sampled sha256 (timed run, {label})"] = (
                                arv["tokens_sha256"] == off["tokens_sha256"])
                    if first:
                        tok_arv = str(args.work / "tokens" / f"{family}_arvision_b{B}.npz")
                        print(f"  arvision {family} token parity, batch {B} ...", flush=True)
                        # VAR: the sampled tokens, position by position (the hashes above say only equal or not);
                        # LlamaGen: greedy decoding (its sampled tokens are compared by the hashes above)
                        key = "tokens" if family == "var" else "greedy"
                        runner.child("arvision_api", model_dir=str(model_dir), batch=B, label=args.label,
                                     seed=args.seed, sampling=sett["arvision"], keys=[key], tokens_out=tok_arv)
                        name = "sampled, timed settings (fp32)" if key == "tokens" else "greedy top_k=1 (fp32)"
                        entry["parity"][name] = compare_tokens(tok_off, tok_arv, key, family)
                probe = reprobe()
                if off.get("counted_flops_per_image"):  # VAR: FlopCounterMode's decoder count, for every batch
                    fam["decode_flops_per_image"] = off["counted_flops_per_image"]["decode"]
                add_floor(entry, family, B, probe, fam.get("decode_flops_per_image"))
                fam["batches"][str(B)] = entry
                print_entry(family, B, entry)
                for prec, arv in entry["arvision"].items():
                    if "compiled" in prec and arv["first_warmup_seconds_rounds"]:
                        print(f"  {prec}: the first warm-up run, compiling included, took "
                              + ", ".join(f"{t:.1f}" for t in arv["first_warmup_seconds_rounds"])
                              + f" s per batch (rounds), against {arv['seconds_per_image'] * B:.2f} s timed",
                              flush=True)
                out_json.write_text(json.dumps(report, indent=1))
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    out_json.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out_json}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_child":
        child_main(sys.argv[2])
    else:
        main()
