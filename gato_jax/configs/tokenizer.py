"""Configuration of the Gato tokenizer and sequence builder (spec sections 1, 2, 3, 5 and 6).

Every **[decision]** of ``../shared/spec/gato.md`` (where the paper is silent or ambiguous) is
a field of :class:`TokenizerConfig` with the documented default; the paper's own numbers are
fields too, so that tests and ablations can change them.

    >>> from gato_jax.configs.tokenizer import TokenizerConfig
    >>> cfg = TokenizerConfig()                  # paper defaults, L = 1024
    >>> cfg.separator_id, cfg.vocab_size
    (33024, 33025)
    >>> from core_jax.config import apply_overrides
    >>> apply_overrides(cfg, ["seq_len=256", "discrete_offset=33025"]).vocab_size
    34049
"""

from __future__ import annotations

import dataclasses

from core_jax.config import to_dict

NONFINITE_POLICIES = ("error", "zero")
IMAGE_RESIZE = ("none", "pad", "resize")
WINDOWS = ("random", "start", "end")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Tokenisation and sequence-layout settings (hashable: used as a static jit argument).

    Paper values (spec section 1-3, 5, 6):

    Attributes:
      text_vocab_size: SentencePiece vocabulary; text ids lie in ``[0, text_vocab_size)``.
        Paper: 32000.
      num_bins: uniform bins of continuous values over [-1, 1] and the range of discrete values
        ``[0, num_bins)``. Paper: 1024.
      mu: mu-law ``mu``. Appendix: 100.
      mu_law_m: mu-law ``M``. Appendix: 256.
      patch_size: side of the square, non-overlapping image patches. Paper: 16 (pixels are
        mapped to [-1, 1] and divided by ``sqrt(patch_size) = 4``).
      image_channels: channels of every image field (fixes the shape of ``patches``). 3 (RGB).
      position_bins: quantisation of each patch's normalised row/column pixel interval.
        Appendix: 128.
      max_local_positions: size of the local observation-position table. Appendix: 512; a spec
        whose observation can exceed it is rejected.
      seq_len: length ``L`` of every built sequence. Paper: 1024.
      prompt_prob: fraction of training sequences that get a same-task prompt. Paper: 0.25.
      prompt_end_fraction: fraction of prompts taken from the end of their episode (goal
        conditioning); the rest start at a uniformly random offset. Paper: 0.5.

    Decisions (the spec's **[decision]** tags; defaults as documented there):

    Attributes:
      discrete_offset: **[decision]** added to discrete values. Default 0 (paper-literal:
        discrete ids share rows with text ids). Any other value must keep
        ``[discrete_offset, discrete_offset + num_bins)`` clear of the continuous and separator
        ids, e.g. 33025 (then ``vocab_size`` grows to 34049).
      mu_law_observations: **[decision]** continuous observations are mu-law companded before
        clipping to [-1, 1]. Default True. False: clip only (for fields already in [-1, 1]).
      scale_bounded_actions: **[decision]** continuous action fields whose spec gives finite
        ``low``/``high`` are scaled linearly to [-1, 1] from those bounds (values outside are
        clipped) and *not* mu-law companded. Default True. False: actions are companded like
        observations. Unbounded actions are always companded.
      separator_local_position: **[decision]** give the separator and action tokens local
        positions (continuing after the observation's tokens). Default False: they get
        local position ``-1`` (no local position encoding).
      padding_row: **[decision]** reserve an extra id ``33025`` for padding (and image
        placeholder) tokens, making ``vocab_size`` 33026. Default False: padding and image
        placeholder tokens carry id 0 and are recognised by ``valid`` / ``patch_index``.
      nonfinite: **[decision]** NaN/Inf in continuous values on the validated (host) path:
        ``"error"`` (default: ``ValueError`` naming the field) or ``"zero"`` (NaN -> 0,
        +-Inf -> +-1 after companding, i.e. the extreme bins). The pure jit path always maps
        them like ``"zero"`` because compiled code cannot raise.
      image_resize: **[decision]** images whose height or width is not a multiple of
        ``patch_size``: ``"none"`` (default: ``ValueError``), ``"pad"`` (pad bottom/right
        with the normalised value 0 up to the next multiple) or ``"resize"`` (bilinear resize
        to the nearest multiple, at least one patch).
      text_truncate: **[decision]** a text value with more tokens than its field's
        ``shape[0]``: False (default: ``ValueError`` naming the field) or True (keep the first
        tokens).
      window: **[decision]** how a ``seq_len`` window is cut from an episode longer than
        ``seq_len`` tokens: ``"random"`` (default; uniform token offset, as in training),
        ``"start"`` or ``"end"`` (deterministic, for evaluation). Shorter episodes are
        right-padded.
      prompt_tokens: **[decision]** length of a prompt in tokens (fewer if the prompt episode
        is shorter; at most ``seq_len``). Default 256 (a quarter of the default ``seq_len``).
      prompt_loss: **[decision]** whether prompt tokens contribute to the loss (same rule: text
        and action targets). Default False: the prompt is conditioning only.
      max_patches: **[decision]** number of patch slots per sequence (fixed shape of
        ``patches``). Default ``None`` = ``seq_len`` (can never overflow); smaller values save
        memory, and a window with more patch tokens marks the excess tokens invalid and sets
        ``patch_overflow``.
    """

    text_vocab_size: int = 32000
    num_bins: int = 1024
    mu: float = 100.0
    mu_law_m: float = 256.0
    patch_size: int = 16
    image_channels: int = 3
    position_bins: int = 128
    max_local_positions: int = 512
    seq_len: int = 1024
    prompt_prob: float = 0.25
    prompt_end_fraction: float = 0.5
    discrete_offset: int = 0
    mu_law_observations: bool = True
    scale_bounded_actions: bool = True
    separator_local_position: bool = False
    padding_row: bool = False
    nonfinite: str = "error"
    image_resize: str = "none"
    text_truncate: bool = False
    window: str = "random"
    prompt_tokens: int = 256
    prompt_loss: bool = False
    max_patches: int | None = None

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"TokenizerConfig.{name}={getattr(self, name)!r}: {why}")

        for name in (
            "text_vocab_size",
            "num_bins",
            "patch_size",
            "image_channels",
            "position_bins",
            "seq_len",
        ):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if self.mu <= 0 or self.mu_law_m <= 0:
            bad("mu" if self.mu <= 0 else "mu_law_m", "must be > 0")
        if self.max_local_positions < 1:
            bad("max_local_positions", "must be >= 1")
        for name in ("prompt_prob", "prompt_end_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "must lie in [0, 1]")
        if self.nonfinite not in NONFINITE_POLICIES:
            bad("nonfinite", f"expected one of {NONFINITE_POLICIES}")
        if self.image_resize not in IMAGE_RESIZE:
            bad("image_resize", f"expected one of {IMAGE_RESIZE}")
        if self.window not in WINDOWS:
            bad("window", f"expected one of {WINDOWS}")
        if self.prompt_tokens < 0:
            bad("prompt_tokens", "must be >= 0")
        if self.max_patches is not None and not 1 <= self.max_patches <= self.seq_len:
            bad("max_patches", f"must be None or lie in [1, seq_len={self.seq_len}]")
        if self.discrete_offset < 0:
            bad("discrete_offset", "must be >= 0")
        if self.discrete_offset != 0:
            lo, hi = self.discrete_offset, self.discrete_offset + self.num_bins
            reserved_lo, reserved_hi = self.continuous_offset, self.separator_id + 1
            if lo < reserved_hi and hi > reserved_lo:
                bad(
                    "discrete_offset",
                    f"discrete ids [{lo}, {hi}) overlap the continuous/separator ids "
                    f"[{reserved_lo}, {reserved_hi})",
                )
            if self.padding_row and lo <= self.separator_id + 1 < hi:
                bad("discrete_offset", "discrete ids overlap the padding id")

    @property
    def continuous_offset(self) -> int:
        """First continuous id (paper: 32000)."""
        return self.text_vocab_size

    @property
    def separator_id(self) -> int:
        """The '|' separator id (paper-derived decision: 33024)."""
        return self.text_vocab_size + self.num_bins

    @property
    def pad_id(self) -> int:
        """Id stored at padding and image-placeholder positions (0, or 33025 with padding_row)."""
        return self.separator_id + 1 if self.padding_row else 0

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding table: 33025 by default (+1 with ``padding_row``)."""
        size = self.separator_id + 1 + int(self.padding_row)
        return max(size, self.discrete_offset + self.num_bins)

    @property
    def num_patch_slots(self) -> int:
        """Fixed number of patch slots per built sequence."""
        return self.seq_len if self.max_patches is None else self.max_patches

    def replace(self, **kwargs) -> TokenizerConfig:
        return dataclasses.replace(self, **kwargs)

    def to_dict(self) -> dict:
        return to_dict(self)
