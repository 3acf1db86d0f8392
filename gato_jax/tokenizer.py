"""Gato tokenisation of single values (spec section 1): mu-law, bins, discrete ids, patches, text.

Two kinds of function live here:

* **pure** (jit- and vmap-compatible, no value checks because compiled code cannot raise):
  :func:`mu_law_encode`, :func:`mu_law_decode`, :func:`tokenize_continuous`,
  :func:`detokenize_continuous`, :func:`tokenize_discrete`, :func:`detokenize_discrete`,
  :func:`image_to_patches`, :func:`patch_position_ids`. Static problems (wrong dtype, image
  size) still raise ``ValueError`` at trace time.
* **host** (NumPy / Python): :func:`patch_intervals` (static tables), :class:`TextTokenizer`
  (SentencePiece). Value validation of whole episodes is in :mod:`gato_jax.sequence`.

Id layout with the default :class:`~gato_jax.configs.tokenizer.TokenizerConfig`: text
``[0, 32000)``, discrete ``[0, 1024)`` (offset 0, shared with text), continuous
``[32000, 33024)``, separator ``33024``; vocabulary 33025.

    >>> import jax.numpy as jnp
    >>> tokenize_continuous(jnp.array([0.0, 1.0, -256.0]))
    Array([32512, 32744, 32000], dtype=int32)
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

TEXT_VOCAB_SIZE = 32000
NUM_BINS = 1024
CONTINUOUS_OFFSET = 32000
SEPARATOR_ID = 33024
VOCAB_SIZE = 33025
PATCH_SIZE = 16
POSITION_BINS = 128


def mu_law_encode(x: jax.Array, mu: float = 100.0, M: float = 256.0) -> jax.Array:  # noqa: N803
    """Mu-law companding ``F(x) = sgn(x) log(|x| mu + 1) / log(M mu + 1)`` (appendix).

    Args:
      x: float array, any shape.
      mu: companding ``mu`` (100).
      M: largest magnitude mapped to 1 (256).

    Returns:
      Float array of ``x``'s shape; ``|x| <= M`` maps into [-1, 1] (not clipped here).
    """
    x = jnp.asarray(x, jnp.result_type(float, x))
    return jnp.sign(x) * jnp.log1p(jnp.abs(x) * mu) / math.log1p(M * mu)


def mu_law_decode(y: jax.Array, mu: float = 100.0, M: float = 256.0) -> jax.Array:  # noqa: N803
    """Inverse of :func:`mu_law_encode`: ``sgn(y) (exp(|y| log(M mu + 1)) - 1) / mu``.

    Args:
      y: float array, any shape (companded values).
      mu: companding ``mu`` (100).
      M: companding ``M`` (256).

    Returns:
      Float array of ``y``'s shape.
    """
    y = jnp.asarray(y, jnp.result_type(float, y))
    return jnp.sign(y) * jnp.expm1(jnp.abs(y) * math.log1p(M * mu)) / mu


def tokenize_continuous(
    x: jax.Array,
    *,
    mu_law: bool = True,
    mu: float = 100.0,
    M: float = 256.0,  # noqa: N803
    num_bins: int = NUM_BINS,
    offset: int = CONTINUOUS_OFFSET,
) -> jax.Array:
    """Continuous values -> ids: companding (optional), clip to [-1, 1], uniform bins, + offset.

    Bin ``b`` covers ``[-1 + 2b/num_bins, -1 + 2(b+1)/num_bins)``; the value 1 falls in the last
    bin. NaN maps to the bin of 0 and +-Inf to the extreme bins (host validation rejects them
    first by default, see :func:`gato_jax.sequence.encode_episode`).

    Args:
      x: float array, any shape.
      mu_law: compand with :func:`mu_law_encode` first.
      mu: companding ``mu``.
      M: companding ``M``.
      num_bins: number of bins over [-1, 1] (1024).
      offset: added to the bin index (32000).

    Returns:
      int32 array of ``x``'s shape with ids in ``[offset, offset + num_bins)``.
    """
    x = jnp.asarray(x, jnp.float32)
    x = jnp.nan_to_num(x, nan=0.0, posinf=jnp.inf, neginf=-jnp.inf)
    y = mu_law_encode(x, mu, M) if mu_law else x
    y = jnp.clip(jnp.nan_to_num(y, nan=0.0), -1.0, 1.0)
    bins = jnp.floor((y + 1.0) * (num_bins / 2.0)).astype(jnp.int32)
    return jnp.clip(bins, 0, num_bins - 1) + jnp.int32(offset)


def detokenize_continuous(
    ids: jax.Array,
    *,
    mu_law: bool = True,
    mu: float = 100.0,
    M: float = 256.0,  # noqa: N803
    num_bins: int = NUM_BINS,
    offset: int = CONTINUOUS_OFFSET,
) -> jax.Array:
    """Ids -> bin centres in [-1, 1] -> inverse companding (optional).

    Out-of-range ids are clipped to the nearest bin (this function cannot raise on values).

    Args:
      ids: int array, any shape, ids in ``[offset, offset + num_bins)``.
      mu_law: apply :func:`mu_law_decode` to the bin centres.
      mu: companding ``mu``.
      M: companding ``M``.
      num_bins: number of bins.
      offset: id of bin 0.

    Returns:
      float32 array of ``ids``'s shape.
    """
    b = jnp.clip(jnp.asarray(ids, jnp.int32) - offset, 0, num_bins - 1)
    centres = -1.0 + (b.astype(jnp.float32) + 0.5) * (2.0 / num_bins)
    return mu_law_decode(centres, mu, M) if mu_law else centres


def tokenize_discrete(x: jax.Array, offset: int = 0, *, num_bins: int = NUM_BINS) -> jax.Array:
    """Discrete values in ``[0, num_bins)`` -> int32 ids ``x + offset``.

    Values outside the range are clipped (pure path); the validated host path raises instead.

    Args:
      x: integer (or integral float) array, any shape.
      offset: id of value 0 (spec decision: default 0).
      num_bins: number of discrete values (1024).

    Returns:
      int32 array of ``x``'s shape.
    """
    return jnp.clip(jnp.asarray(x).astype(jnp.int32), 0, num_bins - 1) + jnp.int32(offset)


def detokenize_discrete(ids: jax.Array, offset: int = 0, *, num_bins: int = NUM_BINS) -> jax.Array:
    """Inverse of :func:`tokenize_discrete` (clipped to ``[0, num_bins)``).

    Args:
      ids: int array, any shape.
      offset: id of value 0.
      num_bins: number of discrete values.

    Returns:
      int32 array of ``ids``'s shape.
    """
    return jnp.clip(jnp.asarray(ids, jnp.int32) - offset, 0, num_bins - 1)


def patch_grid(height: int, width: int, patch_size: int = PATCH_SIZE, resize: str = "none"):
    """Height and width of the image that is cut into patches, after the resize option.

    Args:
      height: input image height.
      width: input image width.
      patch_size: patch side (16).
      resize: ``"none"`` (sizes must be multiples of ``patch_size``), ``"pad"`` (up to the next
        multiple) or ``"resize"`` (to the nearest multiple, at least one patch).

    Returns:
      ``(H', W')``, multiples of ``patch_size``.

    Raises:
      ValueError: size not a multiple of ``patch_size`` with ``resize="none"``, or unknown option.
    """
    if resize == "none":
        if height % patch_size or width % patch_size or height < 1 or width < 1:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of patch_size={patch_size}; "
                "choose TokenizerConfig.image_resize='pad' or 'resize'"
            )
        return height, width
    if resize == "pad":
        return -(-height // patch_size) * patch_size, -(-width // patch_size) * patch_size
    if resize == "resize":
        return (
            max(1, round(height / patch_size)) * patch_size,
            max(1, round(width / patch_size)) * patch_size,
        )
    raise ValueError(f"image resize option {resize!r}: expected 'none', 'pad' or 'resize'")


def image_to_patches(
    images: jax.Array, *, patch_size: int = PATCH_SIZE, resize: str = "none"
) -> jax.Array:
    """uint8 images -> normalised, non-overlapping patches in raster order (paper).

    Pixels are mapped to [-1, 1] (``p / 255 * 2 - 1``) and divided by ``sqrt(patch_size)`` (= 4).
    With ``resize="pad"`` the padding is the normalised value 0; with ``"resize"`` the image is
    resized bilinearly (after normalisation) to the size :func:`patch_grid` gives.

    Args:
      images: uint8 ``[..., H, W, C]``.
      patch_size: patch side (16).
      resize: see :func:`patch_grid`.

    Returns:
      float32 ``[..., (H'/16) * (W'/16), 16, 16, C]``; patch ``r * (W'/16) + c`` covers rows
      ``[16 r, 16 r + 16)`` and columns ``[16 c, 16 c + 16)``.

    Raises:
      ValueError: not uint8, fewer than 3 dimensions, or a size the resize option rejects.
    """
    images = jnp.asarray(images) if not isinstance(images, jax.Array | np.ndarray) else images
    if images.dtype != np.uint8:
        raise ValueError(f"image_to_patches: expected uint8 pixels, got dtype {images.dtype}")
    if images.ndim < 3:
        raise ValueError(f"image_to_patches: expected [..., H, W, C], got shape {images.shape}")
    *batch, h, w, c = images.shape
    hp, wp = patch_grid(h, w, patch_size, resize)
    x = jnp.asarray(images).astype(jnp.float32) * (2.0 / 255.0) - 1.0
    if (hp, wp) != (h, w):
        if resize == "pad":
            pad = [(0, 0)] * len(batch) + [(0, hp - h), (0, wp - w), (0, 0)]
            x = jnp.pad(x, pad)
        else:
            x = jax.image.resize(x, (*batch, hp, wp, c), method="bilinear")
    x = x / math.sqrt(patch_size)
    nr, nc = hp // patch_size, wp // patch_size
    x = x.reshape(*batch, nr, patch_size, nc, patch_size, c)
    nb = len(batch)
    x = jnp.moveaxis(x, nb + 2, nb + 1)  # [..., nr, nc, ps, ps, C]
    return x.reshape(*batch, nr * nc, patch_size, patch_size, c)


def patch_intervals(
    height: int, width: int, patch_size: int = PATCH_SIZE, bins: int = POSITION_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """Quantised row and column pixel intervals of each patch (appendix, position encodings).

    Patch ``(r, c)`` covers pixel rows ``[16 r, 16 r + 16)``; normalised by the image height and
    quantised into ``bins`` bins this is the half-open bin interval
    ``[floor(16 r / H * bins), max(ceil((16 r + 16) / H * bins), lo + 1))`` (every bin the patch
    touches), likewise for columns.

    Args:
      height: height of the patched image (a multiple of ``patch_size``).
      width: width of the patched image.
      patch_size: patch side.
      bins: number of position bins (128).

    Returns:
      ``(rows, cols)``, each int32 ``[num_patches, 2]`` of ``(lo, hi)`` in raster order.
    """
    nr, nc = height // patch_size, width // patch_size

    def interval(i, size):
        lo = (i * patch_size * bins) // size
        hi = -(-((i + 1) * patch_size * bins) // size)
        return lo, max(hi, lo + 1)

    r = np.array([interval(i, height) for i in range(nr)], np.int32)
    c = np.array([interval(j, width) for j in range(nc)], np.int32)
    rows = np.repeat(r, nc, axis=0)
    cols = np.tile(c, (nr, 1))
    return rows, cols


def patch_position_ids(intervals: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Position-table index per patch: uniform inside the interval (train) or its rounded mean.

    Args:
      intervals: int ``[..., 2]`` half-open bin intervals ``(lo, hi)`` from
        :func:`patch_intervals` (or the ``patch_rows`` / ``patch_cols`` of a built sequence).
      key: PRNG key for training-time sampling; ``None`` gives the evaluation index
        ``round((lo + hi - 1) / 2)`` (mean of the covered bins, halves rounded to even).

    Returns:
      int32 ``[...]``.
    """
    intervals = jnp.asarray(intervals, jnp.int32)
    lo, hi = intervals[..., 0], intervals[..., 1]
    if key is None:
        return jnp.round((lo + hi - 1) / 2.0).astype(jnp.int32)
    return jax.random.randint(key, lo.shape, lo, jnp.maximum(hi, lo + 1), jnp.int32)


class TextTokenizer:
    """SentencePiece text tokenizer with ids in ``[0, vocab_size)`` (paper: 32000 pieces).

    Load a trained model file, or train one from local text:

        >>> tok = TextTokenizer.train(sentences, vocab_size=64)   # or a text file's path
        >>> ids = tok.encode("pick up the red block")   # np.int32 [n]
        >>> tok.decode(ids)
        'pick up the red block'

    Args:
      model_proto: serialised SentencePiece model bytes.
      name: where it came from (for messages).
    """

    def __init__(self, model_proto: bytes, name: str = "<memory>"):
        import sentencepiece as spm

        self.name = name
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError on bad protos
            raise ValueError(
                f"TextTokenizer: {name} is not a valid SentencePiece model: {e}"
            ) from e

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextTokenizer:
        """Loads a ``.model`` file written by SentencePiece (or :meth:`save`).

        Raises:
          FileNotFoundError: the file does not exist (message names the path).
          ValueError: the file is not a SentencePiece model (message names the path).
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TextTokenizer.load: no SentencePiece model at {path!r}")
        with open(path, "rb") as f:
            return cls(f.read(), name=repr(path))

    @classmethod
    def train(
        cls,
        text: Iterable[str] | str | os.PathLike,
        *,
        vocab_size: int = TEXT_VOCAB_SIZE,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
        **trainer_kwargs,
    ) -> TextTokenizer:
        """Trains a model from sentences in memory or a local text file (one sentence a line).

        Args:
          text: an iterable of sentences, or the path of a text file.
          vocab_size: number of pieces (32000 in the paper; tests use tiny ones).
          model_type: SentencePiece model type (``unigram`` or ``bpe``).
          character_coverage: SentencePiece ``character_coverage``.
          **trainer_kwargs: passed to ``SentencePieceTrainer.train``.

        Returns:
          The trained tokenizer (call :meth:`save` to keep it).
        """
        import sentencepiece as spm

        if vocab_size > TEXT_VOCAB_SIZE:
            raise ValueError(
                f"TextTokenizer.train: vocab_size={vocab_size} exceeds the {TEXT_VOCAB_SIZE} "
                "text ids of the Gato vocabulary"
            )
        kwargs = dict(
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            num_threads=1,  # one thread: training is deterministic
            minloglevel=2,
            **trainer_kwargs,
        )
        buf = io.BytesIO()
        if isinstance(text, str | os.PathLike):
            if not os.path.isfile(os.fspath(text)):
                raise FileNotFoundError(f"TextTokenizer.train: no text file at {text!r}")
            source = dict(input=os.fspath(text))
            name = f"trained on {os.fspath(text)!r}"
        else:
            source = dict(sentence_iterator=iter(text))
            name = "trained in memory"
        try:
            spm.SentencePieceTrainer.train(model_writer=buf, **source, **kwargs)
        except RuntimeError as e:  # e.g. vocab_size larger than the text supports
            raise ValueError(f"TextTokenizer.train: SentencePiece training failed: {e}") from e
        return cls(buf.getvalue(), name=name)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the model file (loadable by :meth:`load` and by SentencePiece itself)."""
        with open(path, "wb") as f:
            f.write(self._proto)

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def encode(self, text: str) -> np.ndarray:
        """One string -> int32 ids ``[n]`` in ``[0, vocab_size)``."""
        if not isinstance(text, str):
            raise ValueError(f"TextTokenizer.encode: expected a str, got {type(text).__name__}")
        return np.asarray(self._sp.EncodeAsIds(text), np.int32)

    def decode(self, ids) -> str:
        """Int ids ``[n]`` -> string (ids outside ``[0, vocab_size)`` raise ValueError)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"TextTokenizer.decode: ids {bad[:5]} outside [0, {self.vocab_size})")
        return self._sp.DecodeIds(ids)
