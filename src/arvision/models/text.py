"""Text for the trunk: a closed-vocabulary encoder trained with the model, and the cross-attention that reads it.

A text condition reaches the trunk two ways (as Infinity does): its pooled vector takes the class embedding's
place (the first step's input and the AdaLN input), and its per-word states reach every block, so that "a red
circle and a blue square" and its colour-swapped twin -- equal bags of words -- stay apart.  How they reach it is
``TransformerConfig.text_mode``: "cross", read by a cross-attention sub-layer in every block (``CrossAttention``);
"prefix", T prefix positions in front of the image that pass through the trunk's own blocks, seeing only each
other, while the image positions attend to them and to each other in one softmax (a prefix LM; the blocks'
``prefix_step``, ``ARTransformer.condition``).

Word ids: 0 = padding, 1 = the null text (classifier-free guidance's unconditional half: one NULL word), 2.. =
``vocab`` in order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arvision.errors import ArvisionError

PAD, NULL = 0, 1


class WordTokenizer:
    """Closed vocabulary: text -> word ids (B, max_len) and a validity mask; unknown words are an error that
    names them (never silently dropped)."""

    def __init__(self, vocab: tuple[str, ...], max_len: int):
        self.vocab, self.max_len = tuple(vocab), max_len
        self.ids = {w: i + 2 for i, w in enumerate(self.vocab)}

    @staticmethod
    def words(text: str) -> list[str]:
        return text.lower().replace(",", " ").replace(".", " ").split()

    def __call__(self, texts: list[str], device=None) -> torch.Tensor:
        """texts -> ids (B, max_len) int64; the empty string "" is the null text."""
        rows = []
        for text in texts:
            if not isinstance(text, str):
                raise ArvisionError(f"a prompt must be a string, got {type(text).__name__}")
            words = self.words(text)
            if not words:
                rows.append([NULL])
                continue
            unknown = sorted({w for w in words if w not in self.ids})
            if unknown:
                raise ArvisionError(f"prompt {text!r} has word(s) this model's vocabulary does not know: "
                                    f"{', '.join(unknown)} (it knows: {' '.join(self.vocab)})")
            if len(words) > self.max_len:
                raise ArvisionError(f"prompt {text!r} has {len(words)} words; this model reads at most "
                                    f"{self.max_len}")
            rows.append([self.ids[w] for w in words])
        out = torch.full((len(rows), self.max_len), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out.to(device)


class ClosedVocabEncoder(nn.Module):
    """Word ids (B, T) -> per-word states (B, T, C) and the pooled vector (B, C): embeddings + learned positions
    through ``depth`` bidirectional pre-norm transformer layers (PyTorch's own), padding masked out."""

    def __init__(self, vocab: tuple[str, ...], max_len: int, width: int, depth: int, heads: int):
        super().__init__()
        self.tokenizer = WordTokenizer(vocab, max_len)
        self.words = nn.Embedding(len(vocab) + 2, width)
        self.pos = nn.Parameter(torch.zeros(max_len, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.pool = nn.Linear(width, width)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (B, T) -> (pooled (B, C), states (B, T, C), valid (B, T) bool)."""
        valid = ids != PAD
        h = self.words(ids) + self.pos[: ids.shape[1]]
        h = self.norm(self.layers(h, src_key_padding_mask=~valid))
        w = valid.unsqueeze(-1).to(h.dtype)
        pooled = self.pool((h * w).sum(1) / w.sum(1).clamp_min(1))
        return pooled, h, valid


def padding_bias(valid: torch.Tensor, dtype) -> torch.Tensor:
    """valid (B, T) bool -> the additive attention bias (B, 1, 1, T) of its keys: 0 at words, -inf at padding."""
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(~valid, float("-inf"))
    return bias[:, None, None, :]


class CrossAttention(nn.Module):
    """Queries from the image positions (B, n, C), keys/values from the text states (B, T, C).

    ``context(states, valid)`` projects the text once per sequence (it does not change between steps);
    ``forward(x, ctx)`` attends to it."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def context(self, states: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """states (B, T, C), valid (B, T) -> (k, v (B, H, T, hd), additive bias (B, 1, 1, T))."""
        B, T, _ = states.shape
        k, v = self.kv(states).view(B, T, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v, padding_bias(valid, states.dtype)

    def forward(self, x: torch.Tensor, ctx: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        k, v, bias = ctx
        B, n, C = x.shape
        q = self.q(x).view(B, n, self.heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(B, n, C))
