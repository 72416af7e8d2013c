"""Training FLOPs per step of a paradigm, and the step count that gives it a FLOP budget (the paradigm table's
equal-compute rule, bench/train_paradigm_table.sh).

A step's FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` around real
``ARTrainer.train_step`` calls (forward, loss and backward of the trunk and head, at the trainer's batch, on
mnist-5k tokens from the given tokenizer), averaged over ``--repeat`` steps (FlexVAR draws a scale list per step, so
its FLOPs vary).  Matmuls, convolutions and attention are counted (the CPU flash-attention kernels, which the counter
does not know, with its own SDPA formulas); element-wise work and the optimiser are not.  The budget is VAR's:
``--var-steps`` steps of ``--preset small`` on ``--var-tokenizer``.

    python bench/paradigm_flops.py --tokenizer runs/tok-vq --family llamagen --var-tokenizer runs/tok-ms \\
        --var-steps 480 [--fraction 0.1 --student-forcing|--masked-stage] [--json out.json]

prints the step count (stdout, one integer); the JSON holds both FLOP counts.
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch
from torch.utils import flop_counter as fc

from arvision.config import ModelConfig
from arvision.pipeline import ARPipeline
from arvision.training.ar_trainer import ARTrainConfig, ARTrainer, tokenize_dataset
from arvision.training.datasets import build_dataset
from arvision.training.presets import transformer_config
from arvision.training.tokenizer_trainer import load_tokenizer_folder, read_tokenizer_config

ATEN = torch.ops.aten


def _sdpa(q, k, v, *args, out_shape=None, **kwargs):
    return fc.sdpa_flop_count(q, k, v)


def _sdpa_backward(grad, q, k, v, *args, out_shape=None, **kwargs):
    return fc.sdpa_backward_flop_count(grad, q, k, v)


CPU_ATTENTION = {ATEN._scaled_dot_product_flash_attention_for_cpu: _sdpa,
                 ATEN._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward}


def step_flops(tokenizer_dir: str, family: str, preset: str = "small", batch: int = 32, repeat: int = 4,
               student_forcing: bool = False, masked_stage: bool = False, images: int = 256,
               seed: int = 0) -> float:
    """Mean FLOPs of one training step of ``family`` on the tokenizer in ``tokenizer_dir``."""
    tok_cfg, _, _ = read_tokenizer_config(tokenizer_dir)
    tokenizer, image_size, _ = load_tokenizer_folder(tokenizer_dir)
    dataset = build_dataset("mnist-5k", image_size)
    torch.manual_seed(seed)
    tr_cfg = transformer_config(family, preset, tok_cfg.vocab_size, dataset.num_classes, tok_cfg.embed_dim, None,
                                latent_side=image_size // tok_cfg.downsample)
    config = ModelConfig(family=family, image_size=image_size, tokenizer=tok_cfg, transformer=tr_cfg,
                         class_names=tuple(dataset.class_names))
    pipe = ARPipeline(config, tokenizer=tokenizer)
    pipe.transformer.init_weights()
    subset = torch.utils.data.Subset(dataset, range(images))
    tokens, labels = tokenize_dataset(pipe, subset, progress=False)
    cfg = ARTrainConfig(steps=repeat + 1, batch_size=batch, precision="fp32", seed=seed,
                        student_forcing=student_forcing, masked_stage=masked_stage)
    with tempfile.TemporaryDirectory() as out:
        trainer = ARTrainer(pipe, tokens, labels, cfg, out, progress=False)
        trainer.train_step()  # first step outside the count (lazy initialisation)
        with fc.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
            for _ in range(repeat):
                trainer.train_step()
    return counter.get_total_flops() / repeat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="the family's tokenizer folder (arvision train-tokenizer)")
    p.add_argument("--family", required=True)
    p.add_argument("--var-tokenizer", required=True, help="the budget's reference: VAR on this tokenizer")
    p.add_argument("--var-steps", type=int, required=True, help="the budget: VAR's steps")
    p.add_argument("--fraction", type=float, default=1.0, help="this share of the budget (post-training)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--student-forcing", action="store_true", help="SAR's steps (two passes)")
    mode.add_argument("--masked-stage", action="store_true", help="HMAR's masked stage (the masked route learns)")
    mode.add_argument("--teacher-forcing", action="store_true", help="plain steps (the default; for the control)")
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    var = step_flops(args.var_tokenizer, "var", repeat=2)
    mine = step_flops(args.tokenizer, args.family, repeat=args.repeat, student_forcing=args.student_forcing,
                      masked_stage=args.masked_stage)
    budget = var * args.var_steps * args.fraction
    steps = max(1, round(budget / mine))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"family": args.family, "student_forcing": args.student_forcing,
                       "masked_stage": args.masked_stage, "flops_per_step": mine,
                       "var_flops_per_step": var, "var_steps": args.var_steps, "fraction": args.fraction,
                       "budget_flops": budget, "steps": steps, "flops": steps * mine}, f, indent=2)
    print(steps)


if __name__ == "__main__":
    main()
