"""What ``arvision sample`` writes: the labelled grid, one PNG per image, the progression picture and the tokens
file (also the web demo's grid and tokens)."""

from __future__ import annotations

from pathlib import Path

TEXT_CELL = 128  # text models' grid cells are at least this wide, so that a caption shows a few words of its prompt
GRID_MAX_COLUMNS = 16  # a grid of several images per prompt has one row per prompt up to this many per row


def caption(pipe, k: int | str) -> str:
    """The label under an image: its prompt (text models), else the name of class ``k``, else "class k"."""
    if isinstance(k, str):
        return k
    names = pipe.config.class_names
    return names[k] if names else f"class {k}"


def sample_grid(pipe, images, labels, per_prompt: int | None = None):
    """The labelled grid ``sample --out`` writes: one cell per image captioned by :func:`caption`; text models get
    wider cells (room for a few words of each prompt) and, with several images per prompt, one row per prompt."""
    from arvision.images import make_grid

    text = pipe.takes_text
    cell = {"min_cell": TEXT_CELL} if text else {}
    per = per_prompt or 1
    ncol = per if text and 1 < per <= GRID_MAX_COLUMNS else None
    return make_grid(list(images), [caption(pipe, k) for k in labels], ncol=ncol, **cell)


def save_tokens(path, pipe, schedule, tokens, labels, seed: int) -> None:
    """The safetensors file of ``sample --save-tokens``: ``step.{s}`` per scale (or ``tokens``), with the class
    labels (or, for text models, the prompts as a JSON list: a prompt may hold commas) and the seed as metadata."""
    import json

    from safetensors.torch import save_file

    if pipe.takes_text:
        metadata = {"prompts": json.dumps(list(labels))}
    else:
        metadata = {"class_labels": ",".join(map(str, labels))}
    save_file(schedule.named_tokens(tokens), str(path), metadata={**metadata, "seed": str(seed)})


class SampleWriters:
    """``sample``'s outputs, fed batch after batch: PNGs go to --out-dir as each batch finishes (each written
    under a temporary name and renamed, so an interrupted run leaves only whole files); the grid, the progression
    picture (both capped in size by ``_check_outputs``) and the tokens (small integers) are written at the end."""

    def __init__(self, pipe, args):
        self.pipe, self.args = pipe, args
        self.count = 0
        self.grid = []
        self.cells, self.cell_captions, self.ncol = [], [], 0
        self.tokens, self.labels, self.schedule, self.stats = [], [], None, {}

    def add(self, out) -> None:
        from arvision.images import save_image

        args, pipe = self.args, self.pipe
        if args.out_dir:
            folder = Path(args.out_dir)
            folder.mkdir(exist_ok=True)
            for j, (im, k) in enumerate(zip(out.images, out.class_labels)):  # k: a class id, or a prompt
                name = f"{self.count + j:05d}.png" if pipe.takes_text else f"{self.count + j:05d}_class{k}.png"
                save_image(im, folder / name)
        if args.out:
            self.grid += out.images
        if args.progression:
            from arvision.images import to_pil

            steps = out.schedule.step_grids
            self.ncol = len(out.progression)
            for b, k in enumerate(out.class_labels):  # one row per image, one column per scale
                for s, stage in enumerate(out.progression):
                    self.cells += to_pil(stage[b:b + 1])
                    self.cell_captions.append(caption(pipe, k) if s == 0 else f"{steps[s][0]}x{steps[s][1]}")
        if args.save_tokens:
            self.tokens.append(out.tokens.cpu())
        self.labels += out.class_labels
        self.schedule, self.stats = out.schedule, out.stats
        self.count += len(out.class_labels)

    def finish(self) -> None:
        args = self.args
        text = self.pipe.takes_text
        cell = {"min_cell": TEXT_CELL} if text else {}  # room for a few words of each prompt
        if args.out:
            from arvision.images import save_image

            save_image(sample_grid(self.pipe, self.grid, self.labels, getattr(args, "per_prompt", None)), args.out)
            print(f"wrote {args.out}")
        if args.out_dir:
            print(f"wrote {self.count} images to {args.out_dir}")
        if args.progression:
            from arvision.images import make_grid, save_image

            save_image(make_grid(self.cells, self.cell_captions, ncol=self.ncol, **cell), args.progression)
            print(f"wrote {args.progression}")
        if args.save_tokens:
            import torch

            save_tokens(args.save_tokens, self.pipe, self.schedule, torch.cat(self.tokens), self.labels, args.seed)
            print(f"wrote {args.save_tokens}")
