"""Input builders: how step s's transformer input is made from what steps < s produced.

The same object builds teacher-forcing inputs (training) and step inputs (sampling), so the two cannot drift
apart.  Tokens travel as one (B, L) int64 tensor in schedule order for every family.  A builder is made per
schedule (``family.input_builder(tokenizer, schedule)``) and holds it as ``.schedule``.

``ResidualCanvas`` (VAR): state = accumulated canvas f_hat; input of step s+1 = area-down(f_hat, pn_{s+1}).
``PreviousScale`` (FlexVAR): state = the last step's code map; input of step s+1 = bicubic-up(it, pn_{s+1}).
``PreviousToken`` (raster, diagonal fronts): input of step s+1 = the ids produced at step s; tokens travel in the
schedule's order (raster, or NAR's front order), the tokenizer sees the raster order.
``BitCanvas`` (Infinity): ids are packed bit vectors; state = the sum of every step's codes upsampled to the latent
grid; input of step s+1 = that sum trilinear-resized to step s+1's grid.

The interface: ``start(B)`` -> state; ``advance(state, s, ids, embeds)`` -> (state, input of step s+1 or None);
``finish(state, tokens)`` -> image; ``preview(state, tokens, steps)`` -> the image so far (search, pictures);
``targets(img)`` -> ids; ``teacher(tokens)`` -> the inputs of steps 1..S-1 at once; ``training_inputs(tokens,
generator)`` -> (the training input, loss weights or None) (default: ``teacher``, every position weighted);
``decode(tokens)``.
Families that train on cached latents (``capabilities.latent_training`` or ``random_train_schedules``) also have
``training_pair(latents, generator, flip_scales, strength)`` -> (targets, teacher inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arvision.schedules import Schedule


class InputBuilder:
    # whether ``training_inputs`` draws randomness (a masked model's masking): the trainer then seeds and saves a
    # generator for it
    random_teacher = False

    def __init__(self, tokenizer, schedule: Schedule):
        self.tok, self.schedule = tokenizer, schedule

    def training_inputs(self, tokens: torch.Tensor, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Targets (B, L) -> (the trunk's training input, loss weights (B, L) or None: every position counts).
        Default: the teacher-forced input (``teacher``); a masked model draws a masking from ``generator`` and
        weights the loss to the masked positions."""
        return self.teacher(tokens), None

    @property
    def codes(self) -> torch.Tensor:
        """(V, D) the code vectors ids stand for (what soft code mixes are made of)."""
        return self.tok.quantize.codes

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, L) -> per-step list of (B, n_s)."""
        return self.schedule.split(tokens)

    def training_pair(self, latents: torch.Tensor, generator: torch.Generator | None = None, flip_scales: int = 0,
                      strength: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached pre-quantisation latents (B, D, h, w) -> (targets (B, L) ids, teacher inputs) of one training
        step.  ``flip_scales`` / ``strength``: bitwise self-correction, for builders that support it (BitCanvas)."""
        if flip_scales:
            raise ValueError("self-correction (random bit flips) applies to bitwise tokens only")
        tokens = self.targets_from_latents(latents)
        return tokens, self.teacher(tokens)


class ResidualCanvas(InputBuilder):
    def start(self, batch: int, device=None) -> torch.Tensor:
        return self.tok.new_canvas(batch, device)

    def advance(self, state: torch.Tensor, s: int, ids: torch.Tensor,
                embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add step s's codes to the canvas (in place).  ids (B, n_s); embeds (B, n_s, D) overrides the code lookup
        (soft codes, e.g. VAR's Gumbel smoothing).  Returns (canvas, step s+1's input (B, n_{s+1}, D) or None)."""
        pn = self.schedule.step_grids[s][0]
        if embeds is None:
            embeds = self.tok.quantize.lookup(ids)
        h = embeds.transpose(1, 2).reshape(ids.shape[0], -1, pn, pn)
        self.tok.add_scale(s, state, h)
        return state, (None if s == self.schedule.num_steps - 1 else self.tok.next_input(s, state))

    def finish(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """-> image (B, 3, H, W) in [-1, 1]."""
        return self.tok.decode_features(state).clamp(-1, 1)

    def preview(self, state: torch.Tensor, tokens: torch.Tensor, steps: int) -> torch.Tensor:
        """The canvas after ``steps`` steps, decoded: the sum of the upsampled residuals so far."""
        return self.finish(state, tokens)

    def targets(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, 3, H, W) -> (B, L) ground-truth ids."""
        return torch.cat(self.tok.encode(img), dim=1)

    def teacher(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L - n_0, D) inputs of steps 1..S-1 (the sampler's ``advance``, batched)."""
        return self.tok.teacher_inputs(self.split(tokens))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok.decode(self.split(tokens))


class PreviousScale(InputBuilder):
    """Scale-wise inputs without residuals: step s+1 sees only step s's code map, bicubic-resized
    (``align_corners=False``) to its side.  Each scale is the image quantised on its own
    (``MultiScaleIndependentTokenizer``); the image is the decode of the last scale."""

    def start(self, batch: int, device=None):
        return None

    def code_map(self, s: int, ids: torch.Tensor, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Step s's ids (B, n_s) (or code mixes (B, n_s, D)) -> its code map (B, D, h, w)."""
        h, w = self.schedule.step_grids[s]
        codes = self.tok.quantize.lookup(ids) if embeds is None else embeds
        return codes.transpose(1, 2).reshape(ids.shape[0], -1, h, w)

    def next_input(self, s: int, code_map: torch.Tensor) -> torch.Tensor:
        """Step s's code map (B, D, h, w) -> step s+1's input (B, n_{s+1}, D)."""
        h, w = self.schedule.step_grids[s + 1]
        up = F.interpolate(code_map, size=(h, w), mode="bicubic")
        return up.reshape(up.shape[0], up.shape[1], h * w).transpose(1, 2)

    def advance(self, state, s: int, ids: torch.Tensor,
                embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        code_map = self.code_map(s, ids, embeds)
        return code_map, (None if s == self.schedule.num_steps - 1 else self.next_input(s, code_map))

    def finish(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok.decode_features(state).clamp(-1, 1)

    def preview(self, state: torch.Tensor, tokens: torch.Tensor, steps: int) -> torch.Tensor:
        """The last finished scale decoded, bicubic-resized to the image size (FlexVAR's multi-scale pictures)."""
        image = self.finish(state, tokens)
        size = self.schedule.image_grid[0] * self.tok.cfg.downsample
        if image.shape[-1] != size:
            image = F.interpolate(image, size=(size, size), mode="bicubic").clamp(-1, 1)
        return image

    def targets(self, img: torch.Tensor) -> torch.Tensor:
        return self.targets_from_latents(self.tok.features(img))

    def targets_from_latents(self, f: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation features (B, D, h, w) -> (B, L) ids: every scale quantised independently."""
        return torch.cat(self.tok.quantize_scales(f, self.schedule.step_grids), dim=1)

    def teacher(self, tokens: torch.Tensor) -> torch.Tensor:
        per_step = self.split(tokens)
        return torch.cat([self.next_input(s, self.code_map(s, ids)) for s, ids in enumerate(per_step[:-1])], dim=1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.finish(self.code_map(self.schedule.num_steps - 1, self.split(tokens)[-1]), tokens)


class PreviousToken(InputBuilder):
    def start(self, batch: int, device=None):
        return None

    def advance(self, state, s: int, ids: torch.Tensor, embeds=None) -> tuple[None, torch.Tensor | None]:
        if embeds is not None:
            raise ValueError("soft token embeddings are only defined for canvas (VAR) models")
        return None, (None if s == self.schedule.num_steps - 1 else ids)

    def finish(self, state, tokens: torch.Tensor) -> torch.Tensor:
        return self.decode(tokens).clamp(-1, 1)

    def preview(self, state, tokens: torch.Tensor, steps: int) -> torch.Tensor:
        """The tokens of the first ``steps`` steps, the unknown positions filled by repeating the known prefix
        (GridAR's padding by repetition)."""
        known, L = self.schedule.begin_ends[steps - 1][1], self.schedule.length
        tokens = tokens[:, :known]
        if known < L:
            tokens = tokens[:, torch.arange(L, device=tokens.device) % known]
        return self.finish(None, tokens)

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        return [tokens]

    def targets(self, img: torch.Tensor) -> torch.Tensor:
        return self.schedule.from_raster(self.tok.encode(img))

    def teacher(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tokens the trunk is fed after the class positions: all but the last (raster), or all of them (a
        diagonal schedule's teacher-forced pass feeds every token)."""
        return tokens[:, :self.schedule.seq_length - self.schedule.first_len]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok.decode(self.schedule.to_raster(tokens), self.schedule.image_grid)


class BitCanvas(ResidualCanvas):
    """Infinity's inputs: the tokenizer is ``MultiScaleBSQTokenizer``; ids (B, n_s) are packed d-bit vectors.  The
    canvas, its decode (``finish``, ``preview``, ``decode``) and the targets are ResidualCanvas's; the update is the
    bits' codes summed, and the next input the canvas trilinear-resized."""

    @property
    def codes(self):
        raise ValueError("soft codes are not defined for bitwise tokens")

    def unpack(self, ids: torch.Tensor) -> torch.Tensor:
        from arvision.tokenizers.bitwise import unpack_bits

        return unpack_bits(ids, self.tok.bits)

    def advance(self, state: torch.Tensor, s: int, ids: torch.Tensor,
                embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add step s's codes (from ids (B, n_s)) to the canvas (B, d, H, W) (out of place) -> (canvas, step s+1's
        input (B, n_{s+1}, d) or None)."""
        if embeds is not None:
            raise ValueError("soft codes are not defined for bitwise tokens")
        grids = self.schedule.step_grids
        state = self.tok.add_codes(state, self.tok.code_map(self.unpack(ids), grids[s]))
        return state, (None if s == self.schedule.num_steps - 1 else self.tok.next_input(state, grids[s + 1]))

    def teacher(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L - n_0, d): the sampler's ``advance``, step after step."""
        state, inputs = self.start(tokens.shape[0], tokens.device), []
        for s, ids in enumerate(self.split(tokens)[:-1]):
            state, x = self.advance(state, s, ids)
            inputs.append(x)
        return torch.cat(inputs, dim=1)

    def training_pair(self, latents: torch.Tensor, generator: torch.Generator | None = None, flip_scales: int = 0,
                      strength: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Infinity's training step: targets and inputs from ``flip_requant``'s chain (``self_correct``), with
        random bit flips on the first ``flip_scales`` scales."""
        from arvision.tokenizers.bitwise import pack_bits

        bits, inputs = self.tok.self_correct(latents.float(), self.schedule.step_grids, flip_scales, strength,
                                             generator)
        return torch.cat([pack_bits(b) for b in bits], dim=1), inputs
