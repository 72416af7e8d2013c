"""Run by test_ar_training under one process or torchrun: two optimisation steps, then save the weights.
A second argument "student" turns on SAR's student forcing (two forwards per step through DDP)."""

import sys

import torch

from arvision.bundled import tiny_random_pipeline
from arvision.training.ar_trainer import ARTrainConfig, ARTrainer
from arvision.training.distributed import init_distributed


def main(out: str, student: bool = False) -> None:
    info = init_distributed("cpu")
    torch.set_num_threads(1)
    pipe = tiny_random_pipeline(0)
    pipe.transformer.init_weights()
    labels = torch.arange(32) % 10
    tokens = (labels[:, None] * 5 + torch.arange(pipe.schedule.length)[None]) % 64
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    cfg = ARTrainConfig(steps=2, batch_size=8, lr=1e-3, warmup_steps=0, sample_every=100, ckpt_every=100,
                        precision="fp32", label_drop=0.5, grad_clip=0.0, student_forcing=student)
    ARTrainer(pipe, tokens, labels, cfg, out + ".run", dist_info=info, progress=False).train()
    if info.is_main:
        torch.save({"world": info.world, "before": before, "after": pipe.transformer.state_dict()}, out)


if __name__ == "__main__":
    main(sys.argv[1], student=sys.argv[2:] == ["student"])
