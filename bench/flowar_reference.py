"""FlowAR's flow head, Euler sampler, loss and scale inputs: arvision against the OFFICIAL code, on tiny random weights.

    .venv/bin/python bench/flowar_reference.py --deps /tmp/flowar_deps            # prints a table, exit 1 on a miss
    .venv/bin/python bench/flowar_reference.py --deps /tmp/flowar_deps --json out.json --tol 1e-4

The official code is never part of this repository.  At run time ``models/{flowar,flowmodel,flowloss,sampler,rope}.py``
are read blob by blob from the local bare mirror (--mirror; default ``/work/.mirror/wangqiang9+FlowAR/repo``, the
copy whose README calls itself the official implementation: ``OliverRensu/FlowAR`` held only a README when this was
written) into a temporary folder and imported from there.  What the official code needs and this machine lacks:

* CUDA: it calls ``.cuda()`` on noise, labels and rotary positions; ``torch.Tensor.cuda`` is replaced by the
  identity for the run (everything stays on the CPU);
* timm (``SwiGLU``, ``DropPath``) and einops (rotary helpers): from --deps, a folder made with
  ``pip install --no-deps --target DIR timm einops`` (or ``$ARVISION_FLOWAR_DEPS``); timm's import of torchvision
  (absent: it does not import beside this torch) is answered by an empty stand-in package, since the two timm
  classes used do not touch it.

The official model: ``FlowAR(img_size=256, vae_stride=16, encoder/decoder width 64, depth 1, 1 head, vae_embed_dim=16,
diffloss_d=2, diffloss_w=128, scale=(1,2,4,8,16), label_drop_prob=0)`` after ``torch.manual_seed(seed)``, every
parameter then perturbed by N(0, 0.02) (its init zeroes biases).  Its flow net's weights are loaded strictly into
``arvision.models.flow_head.VelocityNet`` (names mapped; the rotary ``freqs`` buffers are recomputed).  Checks:

1. velocity: the two nets on the same random x_t, t and condition, for every scale's map (1x1 .. 16x16), t on both
   sides of the integer truncation ``floor(1000 t)``;
2. sampling: the official ``sample_tokens(num_steps, guidance, cfg, labels)`` is run with its ``euler_sampler``
   wrapped to record each scale's noise, condition and result; arvision's ``euler_sample`` is run on the
   conditional half of the same noise and conditions (the official unconditional half never reaches the output)
   and must give the official tokens; the official next-scale inputs (recorded before ``z_proj``) must equal
   ``ScaleLatents.next_input`` of the official tokens.  Cases: cfg 4.3 / 25 steps / guidance 0.9 (FlowAR-S),
   cfg 2.4 / 50 steps / guidance 0.7 (FlowAR-H).  (cfg = 1 cannot run: the official sampler then never defines
   its result, ``z_sample``.)
3. training: ``forward(latents, labels)`` in training mode records the ground truth per scale and the inputs before
   ``z_proj``, which must equal ``ScaleLatents.targets_from_latents`` / ``teacher``; the loss per image and scale of
   the official ``SILoss`` after ``torch.manual_seed(k)`` must equal ``FlowHead.loss`` with a generator seeded k.

Tolerance (--tol, default 1e-4): the largest absolute difference of every check; the numbers are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from arvision.models.flow_head import VelocityGuidance, VelocityNet, euler_sample  # noqa: E402
from arvision.schedules import ScaleSchedule  # noqa: E402

MIRROR = Path("/work/.mirror/wangqiang9+FlowAR/repo")
FILES = ("models/flowar.py", "models/flowmodel.py", "models/flowloss.py", "models/sampler.py", "models/rope.py")
SIDES = (1, 2, 4, 8, 16)
WIDTH, HEAD_WIDTH, HEAD_DEPTH, CHANNELS = 64, 128, 2, 16
CASES = ({"cfg": 4.3, "num_steps": 25, "guidance": 0.9}, {"cfg": 2.4, "num_steps": 50, "guidance": 0.7})


def read_mirror(mirror: Path, dest: Path) -> str:
    """The official files, from the bare mirror's HEAD into dest; returns the commit."""
    def git(*a, text=True):
        return subprocess.run(["git", f"--git-dir={mirror}", *a], check=True, capture_output=True, text=text).stdout

    commit = git("rev-parse", "HEAD").strip()
    for name in FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(git("show", f"{commit}:{name}", text=False))
    (dest / "models" / "__init__.py").write_text("")
    return commit


def stand_in_torchvision() -> None:
    """An empty ``torchvision`` whose every attribute is a placeholder class: timm imports names from it at import
    time; the two timm classes FlowAR uses never call them."""
    class Placeholder(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Placeholder(name, (), {})

    class Package(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Placeholder(name, (), {})

    class Finder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                from importlib.machinery import ModuleSpec
                return ModuleSpec(name, Finder, is_package=True)
            return None

        @staticmethod
        def create_module(spec):
            module = Package(spec.name)
            module.__path__ = []
            return module

        @staticmethod
        def exec_module(module):
            pass

    sys.meta_path.insert(0, Finder)


def import_official(root: Path, deps: Path | None):
    if deps is not None:
        sys.path.insert(0, str(deps))
    stand_in_torchvision()
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU run: every .cuda() of the official code stays put
    sys.path.insert(0, str(root))
    import models.flowar as flowar
    import models.flowloss as flowloss
    import models.sampler as sampler
    return flowar, flowloss, sampler


def official_model(flowar, seed: int):
    torch.manual_seed(seed)
    model = flowar.FlowAR(img_size=256, vae_stride=16, encoder_embed_dim=WIDTH, encoder_depth=1, encoder_num_heads=1,
                          decoder_embed_dim=WIDTH, decoder_depth=1, decoder_num_heads=1, vae_embed_dim=CHANNELS,
                          diffloss_d=HEAD_DEPTH, diffloss_w=HEAD_WIDTH, scale=SIDES, label_drop_prob=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def our_name(key: str) -> str | None:
    """An official flow-net key -> ours (None: a buffer we recompute)."""
    if key.endswith("rope.freqs"):
        return None
    key = key.replace("res_blocks.", "blocks.")
    return key.replace("final_layer.linear.", "final_proj.").replace("final_layer.adaLN_modulation.1.",
                                                                      "final_ada_lin.")


def our_net(official_net) -> VelocityNet:
    net = VelocityNet(CHANNELS, WIDTH, HEAD_WIDTH, HEAD_DEPTH, HEAD_WIDTH // 64, rope_side=SIDES[-1])
    state = {our_name(k): v for k, v in official_net.state_dict().items() if our_name(k) is not None}
    net.load_state_dict(state, strict=True)
    return net.eval()


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.double() - b.double()).abs().max().item()


@torch.no_grad()
def check_velocity(official_net, net) -> float:
    worst, g = 0.0, torch.Generator().manual_seed(1)
    t = torch.tensor([0.0, 0.2999, 0.3, 0.93636, 1.0])
    for side in SIDES:
        x = torch.randn(len(t), side * side, CHANNELS, generator=g)
        cond = torch.randn(len(t), side * side, WIDTH, generator=g)
        worst = max(worst, diff(official_net(x, t, cond), net(x, t, cond, (side, side))))
    return worst


@torch.no_grad()
def check_sampling(model, sampler, net, case: dict, labels: torch.Tensor) -> dict:
    calls, inputs = [], []
    original = sampler.euler_sampler

    def recording(flownet, latents, condition, **kw):
        out = original(flownet, latents, condition, **kw)
        calls.append((latents.clone(), condition.clone(), kw, out.clone()))
        return out

    sampler.euler_sampler = recording
    hook = model.z_proj.register_forward_pre_hook(lambda m, a: inputs.append(a[0].clone()))
    try:
        model.eval()
        torch.manual_seed(7)
        model.sample_tokens(num_steps=case["num_steps"], guidance=case["guidance"], cfg=case["cfg"], labels=labels)
    finally:
        sampler.euler_sampler = original
        hook.remove()
    B, S = len(labels), len(SIDES)
    guidance = VelocityGuidance(case["cfg"], high=case["guidance"], steps=case["num_steps"])
    schedule = ScaleSchedule.from_sides(SIDES)
    from arvision.families.flowar import ScaleLatents

    builder = ScaleLatents(None, schedule)
    tokens = inputs_diff = weight_diff = 0.0
    for s, (latents, cond, kw, out) in enumerate(calls):
        weight_diff = max(weight_diff, abs(kw["cfg_scale"] - guidance.weight(s, S)))
        ours = euler_sample(net, latents[:B], cond[:B], cond[B:] if guidance.doubles_batch else None,
                            (SIDES[s], SIDES[s]), s, S, guidance)
        tokens = max(tokens, diff(out[:B].float(), ours))
        if s + 1 < S:  # the official next input, before z_proj (the doubled batch repeats the conditional half)
            ref = inputs[s][:B]
            inputs_diff = max(inputs_diff, diff(ref, builder.next_input(s, builder.as_map(s, out[:B].float()))))
    return {"scales": len(calls), "tokens": tokens, "next_inputs": inputs_diff, "cfg_weights": weight_diff}


def check_training(model, flowloss, net, labels: torch.Tensor) -> dict:
    from arvision.families.flowar import ScaleLatents
    from arvision.models.flow_head import FlowHead

    schedule = ScaleSchedule.from_sides(SIDES)
    B = len(labels)
    latents = torch.randn(B, CHANNELS, SIDES[-1], SIDES[-1], generator=torch.Generator().manual_seed(3))
    seen, fed = [], []
    loss_fn = model.flow_loss_fn

    def recording(flownet, images, condition):
        seen.append((images.clone(), condition.clone()))
        return loss_fn(flownet, images, condition)

    model.flow_loss_fn = recording
    hook = model.z_proj.register_forward_pre_hook(lambda m, a: fed.append(a[0].clone()))
    try:
        model.train()
        with torch.no_grad():
            model(latents, labels)
    finally:
        model.flow_loss_fn = loss_fn
        hook.remove()
    builder = ScaleLatents(None, schedule)
    targets = builder.targets_from_latents(latents)
    official_targets = torch.cat([gt for gt, _ in seen], dim=1)
    z = torch.cat([c for _, c in seen], dim=1)
    out = {"targets": diff(official_targets, targets), "teacher_inputs": diff(fed[0], builder.teacher(targets))}
    head = FlowHead(WIDTH, CHANNELS, HEAD_WIDTH, HEAD_DEPTH, HEAD_WIDTH // 64, rope_side=SIDES[-1])
    head.net = net
    worst = 0.0
    for k in (0, 1, 2):
        torch.manual_seed(k)
        with torch.no_grad():
            ref = torch.stack([flowloss.SILoss()(model.flownet, gt, c) for gt, c in seen], dim=1)  # (B, S)
            ours = head.loss(z, official_targets, schedule, torch.Generator().manual_seed(k))
        ours = torch.stack([v.mean(1) for v in ours.split(schedule.step_sizes, dim=1)], dim=1)
        worst = max(worst, diff(ref, ours))
    out["loss"] = worst
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror", type=Path, default=MIRROR)
    ap.add_argument("--deps", type=Path, default=os.environ.get("ARVISION_FLOWAR_DEPS") or None,
                    help="folder with timm and einops (pip install --no-deps --target DIR timm einops)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not args.mirror.is_dir():
        raise SystemExit(f"no FlowAR mirror at {args.mirror} (fetch github:wangqiang9/FlowAR)")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="flowar-official-") as tmp:
        commit = read_mirror(args.mirror, Path(tmp))
        flowar, flowloss, sampler = import_official(Path(tmp), args.deps)
        import timm

        model = official_model(flowar, args.seed)
        net = our_net(model.flownet)
        labels = torch.tensor([3, 7])
        checks = {"velocity": {"velocity": check_velocity(model.flownet, net)}}
        for case in CASES:
            name = f"sample cfg{case['cfg']} steps{case['num_steps']} high{case['guidance']}"
            checks[name] = check_sampling(model, sampler, net, case, labels)
        checks["training"] = check_training(model, flowloss, net, labels)
    worst = max(x for r in checks.values() for k, x in r.items() if k != "scales")
    results = {"mirror": str(args.mirror), "commit": commit, "timm": timm.__version__, "tol": args.tol,
               "torch": torch.__version__, **checks, "max_abs_diff": worst, "ok": worst <= args.tol}
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
