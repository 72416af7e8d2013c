"""The slots a paradigm fills: what ``families/<name>.py`` defines, and what the engine asks of it.

A paradigm (VAR's next-scale prediction, LlamaGen's next-token prediction, FlexVAR's residual-free scales, ...)
is one :class:`Family` object.  The engine never branches on a family's name; it asks the object:

* **parts**: the tokenizer kind and block kind its config must name, the input embedder (step inputs and
  positions) and the head (logits, ``choose`` and ``loss``) of :class:`~arvision.models.transformer.ARTransformer`;
* **schedule**: built per call (``schedule``) and per training step (``training_schedule``), so the token order
  and attention rule are not baked into the trunk;
* **input builder**: the one object that makes teacher-forcing and sampling inputs (``arvision.inputs``);
* **sampling rules**: its guidance formula, top-p rule, published defaults and extra options;
* **initialisation** for training from scratch, and **presets** (released sizes);
* **official checkpoints**: how to recognise, convert and export the released files;
* **capabilities**: which options of the one loop apply (KV policies, speculative decoding, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from arvision.errors import ArvisionError, CheckpointError
from arvision.sampling.processors import Guidance, TokenSampling


@dataclass(frozen=True)
class Capabilities:
    """What a family's models can do beyond plain sampling; options check these instead of family names."""

    scale_lists: bool = False  # samples on scale lists other than the trained one (``patch_nums=``)
    random_train_schedules: bool = False  # trains on a new schedule every step (the trainer caches latents)
    soft_codes: bool = False  # VAR's Gumbel ``more_smooth``: soft code mixes feed the next step
    progression: bool = False  # the state after every step decodes to a picture (coarse to fine)
    kv_policies: bool = False  # ScaleKV / HACK / SnapKV: map-aware compression of whole-scale steps
    speculative_decoding: bool = False  # Jacobi drafts: one token per causal step
    token_step: bool = False  # one compiled one-token step serves every raster position (forward_token)
    student_forcing: bool = False  # SAR: a second pass on inputs built from the model's own predictions
    masked_stage: bool = False  # a second training stage of a masked block route (HMAR): ``start_masked_stage``
    latent_training: bool = False  # the trainer caches latents and the input builder makes targets per step
    # (``training_pair``), on the trained schedule
    self_correction: bool = False  # Infinity's bitwise self-correction (random bit flips of the first scales)
    code_logits: bool = True  # the head gives one logit per code of the vocabulary (the watermark biases them)
    row_prefixes: bool = False  # steps fill the token grid row by row, one token each, and the tokens of the first
    # rows decode to a picture with the rest filled by repeating them (``preview``): GridAR's stages


@dataclass(frozen=True)
class Option:
    """A command-line option of ``arvision convert FAMILY`` (declared here, turned into argparse by the CLI).
    kind: "path" (required file), "int", "int_list" (comma-separated)."""

    name: str  # the keyword of ``from_official`` (flag = --name with dashes)
    kind: str
    help: str
    required: bool = False


@dataclass
class OfficialModel:
    """An official checkpoint pair read and understood: the config plus how to load each file strictly."""

    config: Any  # ModelConfig
    tokenizer_state: dict
    transformer_state: dict
    tokenizer_keymap: Any = None  # checkpoints.KeyMap or None
    transformer_keymap: Any = None
    tokenizer_buffers: dict = field(default_factory=dict)  # official buffer name -> shape, required but recomputed
    transformer_buffers: dict = field(default_factory=dict)


class Family:
    """Base class: a paradigm's slots.  Subclasses set the class attributes and override what differs."""

    name: str = ""
    description: str = ""
    tokenizer_kind: str = ""  # TokenizerConfig.kind its models use
    block: str = ""  # TransformerConfig.block its trunk uses
    capabilities = Capabilities()
    # sampling: the guidance formula (``Guidance`` kind), the top-p rule, and the published defaults
    guidance_rule = "ramp"
    top_p_rule = "ascending"
    defaults: dict = {"guidance_scale": 1.0, "top_k": 0, "top_p": 0.0}
    sampling_options: dict = {}  # extra ``pipe(...)`` keywords -> what they mean (families that take them)
    presets: dict = {}  # released trunk sizes: name -> (depth, width, heads)
    # official checkpoints: the two files (convert's required flags) and the other options
    official_files: tuple[Option, Option] = ()
    convert_options: tuple[Option, ...] = ()
    convert_help: str = ""
    transformer_checkpoint_paths: tuple[tuple[str, ...], ...] = ()  # nested layouts the official loaders accept
    # the family whose official transformer layout this one extends (HMAR's files carry VAR's buffers too): a state
    # this family owns is not that family's, whatever that family's own markers say
    refines: str | None = None

    # -- config ------------------------------------------------------------------------------------------
    def check_config(self, config) -> None:
        """Raise ArvisionError if ``config`` (a ModelConfig of this family) is inconsistent."""
        tok, tr = config.tokenizer, config.transformer
        if (tok.kind, tr.block) != (self.tokenizer_kind, self.block):
            raise ArvisionError(f"invalid {self.name} model parts: {(tok.kind, tr.block)!r} "
                                f"(expected {(self.tokenizer_kind, self.block)})")
        if tr.branch_depth and type(self).block_routes is Family.block_routes:
            raise ArvisionError(f"invalid transformer branch_depth: {tr.branch_depth!r} ({self.description} trunks "
                                "have one route through their blocks: 0)")

    # -- schedule, built per call -----------------------------------------------------------------------
    def schedule(self, config, patch_nums=None):
        """The schedule to sample ``config``'s model on (``patch_nums``: another scale list, where supported)."""
        raise NotImplementedError

    def call_schedule(self, config, schedule, options: dict):
        """The schedule of one sampling call given its family options (``sampling_options`` keywords, unchecked; None
        values left out): a family whose options change the steps (MaskGIT's ``iterations``) builds it here;
        default: ``schedule`` unchanged."""
        return schedule

    def training_schedule(self, config, generator: torch.Generator):
        """The schedule of one training step (default: the sampling schedule; FlexVAR draws a random one)."""
        return self.schedule(config)

    # -- parts -------------------------------------------------------------------------------------------
    def input_builder(self, tokenizer, schedule):
        raise NotImplementedError

    def embedder(self, config):
        """The trunk's input embedder (an nn.Module with ``layout(schedule)`` and ``forward``)."""
        raise NotImplementedError

    def blocks(self, config):
        """The trunk's blocks -> (shared modulation module or None, nn.ModuleList of blocks): by default the kind
        ``TransformerConfig.block`` names (``arvision.models.blocks.BLOCKS``), with the linearly rising drop-path
        rates of VAR and LlamaGen."""
        from torch import nn

        from arvision.models.blocks import BLOCKS

        cfg = config.transformer
        block = BLOCKS[cfg.block]
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        return block.shared_modulation(cfg), nn.ModuleList(block.build(cfg, rates[i]) for i in range(cfg.depth))

    def block_routes(self, config) -> dict[str, tuple[int, ...]] | None:
        """Named routes through the trunk's blocks: name -> the indices of the blocks it runs, in order; the first
        is the default route (sampling steps, teacher forcing).  A route other than the default reaches the head as
        ``head(h, mod, route=name)``.  None (the default): one route through every block."""
        return None

    def head(self, config):
        """The trunk's head (an nn.Module with ``forward``, ``choose`` and ``loss``)."""
        raise NotImplementedError

    def init_weights(self, transformer) -> None:
        """Initialise ``transformer`` for training from scratch."""
        raise NotImplementedError

    def loss_weights(self, schedule) -> torch.Tensor | None:
        """(L,) weights of the teacher-forced loss per position, summing to 1 (the trainer takes
        ``(ce * w).sum(-1).mean()``); None (the default): the plain mean over positions."""
        return None

    def start_masked_stage(self, transformer) -> str:
        """Families with ``capabilities.masked_stage``: prepare ``transformer`` for its masked stage (initialise the
        masked route, leave only its own parameters trainable) and return the route's name; the input builder's
        ``masked_training_inputs(tokens, generator)`` gives (inputs, loss weights (B, L)) per step."""
        raise NotImplementedError(f"{self.description} has no masked training stage")

    def trunk_vocab(self, codes: int, code_dim: int) -> int:
        """``TransformerConfig.vocab_size`` (the head's logits per position) for a tokenizer of ``codes`` codes of
        ``code_dim`` channels: one logit per code by default (Infinity's bitwise head: 2 per bit)."""
        return codes

    def from_scratch(self, latent_side: int) -> dict:
        """TransformerConfig fields this family derives from the tokenizer's latent side when training from
        scratch (FlexVAR: its position grid)."""
        return {}

    # -- sampling rules ----------------------------------------------------------------------------------
    def guidance(self, scale: float, schedule, options: dict) -> Guidance:
        return Guidance(self.guidance_rule, scale)

    def token_sampling(self, temperature: float, top_k: int, top_p: float, schedule, options: dict) -> TokenSampling:
        return TokenSampling(temperature, top_k, top_p, self.top_p_rule)

    def check_sampling_options(self, options: dict, schedule) -> dict:
        """Validate the family's extra sampling options; returns them with defaults filled in."""
        unknown = sorted(set(options) - set(self.sampling_options))
        if unknown:
            allowed = ", ".join(self.sampling_options) or "none"
            raise ArvisionError(f"{self.name} models take no sampling option(s) {unknown} (theirs: {allowed})")
        return dict(options)

    # -- official checkpoints ---------------------------------------------------------------------------
    def owns_transformer_checkpoint(self, state: dict) -> bool:
        """Whether an official transformer state dict is this family's (for naming the right family)."""
        return False

    def owns_tokenizer_checkpoint(self, state: dict) -> bool:
        """Whether an official tokenizer state dict has this family's layout (families may share one)."""
        return False

    def load_official(self, tokenizer_state: dict, transformer_state: dict, **options) -> OfficialModel:
        """Check that both state dicts are this family's (else name the family they belong to), then read them."""
        self.wrong_family(transformer_state, "transformer")
        self.wrong_family(tokenizer_state, "tokenizer")
        return self.read_official(tokenizer_state, transformer_state, **options)

    def read_official(self, tokenizer_state: dict, transformer_state: dict, **options) -> OfficialModel:
        """An official (tokenizer, transformer) pair of this family -> its config, key maps and buffers."""
        raise NotImplementedError

    def official_state_dicts(self, pipe) -> tuple[dict, dict]:
        """(tokenizer, transformer) state dicts in the official layout, loadable by the official code."""
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------------------------
    @staticmethod
    def renamed(module, keymap) -> dict:
        """``module``'s state dict under the official names of ``keymap`` (values cloned)."""
        return {keymap.to_official(k): v.detach().clone() for k, v in module.state_dict().items()}

    def wrong_family(self, state: dict, what: str) -> None:
        """Raise a CheckpointError naming the right family when ``state`` belongs to another one."""
        from arvision.families import all_families

        owners = [f for f in all_families() if f.name != self.name and (
            f.owns_transformer_checkpoint(state) if what == "transformer" else f.owns_tokenizer_checkpoint(state))]
        mine = (self.owns_transformer_checkpoint(state) if what == "transformer"
                else self.owns_tokenizer_checkpoint(state))
        refining = [f for f in owners if f.refines == self.name] if what == "transformer" else []
        if refining:  # an extension of our trunk's layout (tokenizers may be shared): its markers are more specific
            owners, mine = refining, False
        if owners and not mine:
            names = " / ".join(f.description for f in owners)
            uses = " or ".join(f"`arvision convert {f.name}`" for f in owners)
            raise CheckpointError(f"this is a {names} {what} checkpoint, not {self.description}'s: use {uses}")

    def __repr__(self) -> str:
        return f"<family {self.name}>"
