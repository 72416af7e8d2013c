"""A flow-matching head: continuous tokens drawn by integrating a velocity field (FlowAR, Ren et al. 2025).

The trunk's hidden states do not become logits here; they condition a small transformer (the *velocity net*) that
maps a noisy token map x_t at flow time t to a velocity.  The three methods of every head
(``arvision.models.heads``) keep their roles:

``forward(h, mod)``             hidden (B, n, W) -> the condition z (B, n, W) fp32 (an RMSNorm of the trunk's output);
``choose(z, s, run)``           z of step s (both halves of a guided batch) -> the step's tokens (B, n, C) fp32:
                                Euler integration from t = 1 (noise) to t = 0 (data), guidance on the velocity;
``loss(z, targets, schedule)``  flow matching: x_t = (1 - t) x + t eps, target velocity eps - x, MSE per token (B, L).

Two attributes tell the engine what kind of tokens the head makes (the general slots of the loop and trainer):
``token_dims = (C,)`` (tokens are (B, L, C) floats, not (B, L) ids) and ``combines_guidance = True`` (the loop hands
the head the doubled batch's outputs and leaves guidance to it, since it applies to velocities inside the solver).

The velocity net follows FlowAR's small-model head: per step, attention over the step's token map with 2-D rotary
angles at fractional positions (i / side * ``rope_side``), a gated-GELU MLP, and *spatial* AdaLN: every token's
modulation comes from its own condition plus the time embedding.  Flow time enters as the integer ``floor(1000 t)``
(the released net truncates it so), through sinusoids and an MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arvision.errors import ArvisionError
from arvision.models.blocks import RMSNorm

TIME_FREQS = 256  # sinusoid channels of the time embedding


def rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMS normalisation without a gain, in fp32."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def euler_times(steps: int) -> torch.Tensor:
    """The flow times of FlowAR's Euler solver, float64 from 1 to 0: ``steps + 1`` points when steps == 50 (uniform),
    otherwise a finer grid near the data: linspace(1, 0.3, steps // 2) then linspace(0.25, 0, steps // 2 + 1)."""
    if steps == 50:
        return torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return torch.cat([torch.linspace(1, 0.3, steps // 2, dtype=torch.float64),
                      torch.linspace(0.25, 0, steps // 2 + 1, dtype=torch.float64)])


def rope_angles(h: int, w: int, head_dim: int, rope_side: int, device=None) -> torch.Tensor:
    """(h*w, head_dim) rotary angles of an h x w map, row-major: the first half of the channels turn with the row,
    the second with the column, each in interleaved pairs; position i of a side-n axis sits at i / n * rope_side."""
    if h != w:
        raise ArvisionError(f"the flow head's rotary positions need square maps, got {h}x{w}")
    quarter = head_dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(0, 2 * quarter, 2, device=device).float() / (2 * quarter)))
    pos = torch.arange(h, device=device) / h * rope_side
    axis = (pos[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # (n, head_dim/2)
    rows = axis[:, None, :].expand(h, w, -1)
    cols = axis[None, :, :].expand(h, w, -1)
    return torch.cat([rows, cols], dim=-1).reshape(h * w, -1)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x (B, H, n, d) rotated pairwise ((x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)) by angles (n, d)."""
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * angles.cos() + turned * angles.sin()


class FlowAttention(nn.Module):
    """Self-attention over one step's tokens (no mask), rotary q and k."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        B, n, W = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(rotate(q, angles), rotate(k, angles), v)
        return self.proj(out.transpose(1, 2).reshape(B, n, W))


class GatedMLP(nn.Module):
    """fc2(gelu(fc1_g(x)) * fc1_x(x)); hidden = int(width * 8 / 3) (the released head's GELU-gated MLP)."""

    def __init__(self, width: int):
        super().__init__()
        hidden = int(width * 4.0 * 2 / 3.0)
        self.fc1_g = nn.Linear(width, hidden)
        self.fc1_x = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1_g(x)) * self.fc1_x(x))


class FlowBlock(nn.Module):
    """x + g1 attn(rms(x)(1 + a1) + b1); x + g2 mlp(rms(x)(1 + a2) + b2), with (g1, g2, a1, a2, b1, b2) per token
    from ``ada_lin(silu(t_emb + c_i))`` (spatial AdaLN)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.width = width
        self.attn = FlowAttention(width, heads)
        self.mlp = GatedMLP(width)
        self.ada_lin = nn.Linear(width, 6 * width)

    def forward(self, x: torch.Tensor, act: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """x (B, n, W); act = silu(t_emb + c) (B, n, W)."""
        B, n, W = x.shape
        g1, g2, a1, a2, b1, b2 = self.ada_lin(act).view(B, n, 6, W).unbind(2)
        x = x + self.attn(rms(x) * (1 + a1) + b1, angles) * g1
        return x + self.mlp(rms(x) * (1 + a2) + b2) * g2


class TimeEmbedder(nn.Module):
    """Integer flow time (B,) -> (B, W): cos/sin sinusoids (periods up to 10000) through Linear-SiLU-Linear."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQS, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = TIME_FREQS // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class VelocityNet(nn.Module):
    """(x_t (B, n, C), t (B,) in [0, 1], condition (B, n, Wz), grid (h, w)) -> velocity (B, n, C)."""

    def __init__(self, channels: int, cond_width: int, width: int, depth: int, heads: int, rope_side: int):
        super().__init__()
        if width % heads or (width // heads) % 4:
            raise ArvisionError(f"flow head width {width} with {heads} heads: the head dimension must be a multiple "
                                "of 4 (two rotary axes of channel pairs)")
        self.heads, self.rope_side = heads, rope_side
        self.time_embed = TimeEmbedder(width)
        self.cond_embed = nn.Linear(cond_width, width)
        self.input_proj = nn.Linear(channels, width)
        self.blocks = nn.ModuleList(FlowBlock(width, heads) for _ in range(depth))
        self.final_ada_lin = nn.Linear(width, 2 * width)
        self.final_proj = nn.Linear(width, channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        ticks = (t * 1000).long()  # the released net sees floor(1000 t), not t
        s = self.cond_embed(cond) + self.time_embed(ticks)[:, None]
        act = F.silu(s)
        angles = rope_angles(grid[0], grid[1], self.input_proj.out_features // self.heads, self.rope_side,
                             x.device)
        h = self.input_proj(x)
        for blk in self.blocks:
            h = blk(h, act, angles)
        shift, scale = self.final_ada_lin(act).chunk(2, dim=-1)
        return self.final_proj(rms(h) * (1 + scale) + shift)


@dataclass(frozen=True)
class VelocityGuidance:
    """Classifier-free guidance on velocities, and the solver settings that travel with it.

    At step s of S the velocity is ``u + w_s (c - u)`` with ``w_s = (scale - 1) s / (S - 1) + 1`` (a ramp over the
    scales), applied only where w_s > 1 and ``low <= t <= high`` (no guidance in the noisiest part); elsewhere the
    conditional velocity alone.  The batch is doubled whenever scale != 1 (as the released sampler does).
    ``steps``: Euler steps per token map (``euler_times``)."""

    scale: float
    high: float = 0.9
    low: float = 0.0
    steps: int = 25

    @property
    def doubles_batch(self) -> bool:
        return self.scale != 1.0

    def weight(self, s: int, num_steps: int) -> float:
        return (self.scale - 1) * s / max(num_steps - 1, 1) + 1

    def applies(self, s: int, num_steps: int, t: float) -> bool:
        return self.doubles_batch and self.weight(s, num_steps) > 1.0 and self.low <= t <= self.high

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, s: int, num_steps: int) -> torch.Tensor:
        return uncond + self.weight(s, num_steps) * (cond - uncond)


def normal_noise(generator, batch: int, shape: tuple, device) -> torch.Tensor:
    """(batch, *shape) standard normal fp32 from one generator, or row b from generator[b] (a list)."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(shape, generator=g, device=g.device).to(device) for g in generator])
    dev = generator.device if generator is not None else device
    return torch.randn((batch, *shape), generator=generator, device=dev).to(device)


@torch.no_grad()
def euler_sample(net: VelocityNet, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
                 grid: tuple[int, int], s: int, num_steps: int, guidance: VelocityGuidance) -> torch.Tensor:
    """Integrate dx/dt = v from x_1 = noise (B, n, C) to t = 0 (float64 state, fp32 net) -> x_0 (B, n, C) fp32.
    cond / uncond (B, n, W): the conditions of the two halves (uncond None: unguided)."""
    times = euler_times(guidance.steps)
    x = noise.to(torch.float64)
    B = x.shape[0]
    for t_cur, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        t = torch.full((B,), t_cur, dtype=torch.float64, device=x.device).float()
        xf = x.float()
        if uncond is not None and guidance.applies(s, num_steps, t_cur):
            v = net(torch.cat([xf, xf]), torch.cat([t, t]), torch.cat([cond, uncond]), grid).double()
            v = guidance.combine(v[:B], v[B:], s, num_steps)
        else:
            v = net(xf, t, cond, grid).double()
        x = x + (t_next - t_cur) * v
    return x.float()


class FlowHead(nn.Module):
    """RMSNorm of the trunk's output -> condition of a :class:`VelocityNet` over each step's token map.

    channels: the token dimension C; width: the trunk's; head_width / head_depth / head_heads: the velocity net's
    (FlowAR-S: 1024 / 2 / 16); rope_side: the side that fractional rotary positions span (the latent side)."""

    combines_guidance = True

    def __init__(self, width: int, channels: int, head_width: int, head_depth: int, head_heads: int,
                 rope_side: int, eps: float = 1e-6):
        super().__init__()
        self.token_dims = (channels,)
        self.norm = RMSNorm(width, eps)
        self.net = VelocityNet(channels, width, head_width, head_depth, head_heads, rope_side)

    def modulation(self, cond: torch.Tensor) -> None:
        return None

    def forward(self, h: torch.Tensor, mod=None) -> torch.Tensor:
        """Hidden (B, n, W) -> the velocity net's condition (B, n, W) fp32."""
        return self.norm(h).float()

    def new_tokens(self, batch: int, length: int, device=None) -> torch.Tensor:
        return torch.zeros(batch, length, *self.token_dims, device=device)

    @staticmethod
    def hits(outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Continuous tokens have no accuracy."""
        return None

    def choose(self, z: torch.Tensor, s: int, run) -> tuple[torch.Tensor, None]:
        """Conditions of step s (rows, n, W): [cond; uncond] when the run is guided -> tokens (B, n, C) fp32, one
        noise map per image from the run's generator(s), integrated by ``euler_sample``."""
        if run.processors:
            raise ArvisionError("logits processors (watermarks, ...) act on token logits; a flow head has none")
        if run.forced(s) is not None:
            raise ArvisionError("forced tokens (editing) are token ids; a flow head's tokens are continuous")
        B, grid = run.batch, run.schedule.step_grids[s]
        noise = normal_noise(run.generator, B, (z.shape[1], *self.token_dims), z.device)
        uncond = z[B:] if run.doubled else None
        return euler_sample(self.net, noise, z[:B], uncond, grid, s, run.schedule.num_steps,
                            run.options.guidance), None

    def loss(self, z: torch.Tensor, targets: torch.Tensor, schedule=None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow matching on every step of ``schedule``: per image and step one t ~ U(0, 1), then per token
        x_t = (1 - t) x + t eps, velocity target eps - x -> squared error averaged over channels (B, L) fp32.
        Averaging it over all tokens weighs step s by its token count, as FlowAR's per-scale weight n_s / n_last."""
        if schedule is None:
            raise ArvisionError("the flow-matching loss needs the schedule (each step's map shape)")
        out = []
        dev = generator.device if generator is not None else z.device
        for (begin, end), grid in zip(schedule.begin_ends, schedule.step_grids):
            x = targets[:, begin:end].float()
            t = torch.rand(x.shape[0], generator=generator, device=dev).to(x.device)
            eps = torch.randn(x.shape, generator=generator, device=dev).to(x.device)
            x_t = (1 - t)[:, None, None] * x + t[:, None, None] * eps
            v = self.net(x_t, t, z[:, begin:end], grid)
            out.append((v.float() - (eps - x)).square().mean(-1))
        return torch.cat(out, dim=1)
