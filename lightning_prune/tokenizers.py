"""Tokenizers for the text data: byte-level, a locally trained byte-level BPE, or a ``transformers`` one.

Every tokenizer here offers the same three things (the `TextTokenizer` protocol): ``vocab_size``,
``encode(text) -> list[int]`` and ``decode(ids) -> str``. `encode_corpus` turns a whole corpus
into one 1-D ``LongTensor`` of token ids, with a fast path per kind, and gives the same ids as ``encode`` of
the whole text. `pretrained_tokenizer` turns any of them into a ``transformers`` tokenizer that encodes
exactly as training did, to ship with an exported model (``save_pretrained``).

Examples:
    >>> tok = ByteTokenizer()
    >>> tok.encode("hé")
    [104, 195, 169]
    >>> tok.decode(tok.encode("hé"))
    'hé'
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "HFTokenizer",
    "TextTokenizer",
    "build_tokenizer",
    "default_cache_dir",
    "encode_corpus",
    "byte_level_tokenizer",
    "bytes_to_unicode",
    "load_or_train_bpe",
    "pretrained_tokenizer",
    "train_bpe",
]

BYTE_VOCAB = 256
_CHUNK_CHARS = 1 << 16  # corpora are encoded in chunks of about this many characters
_BREAKS = frozenset(" \t\n")  # whitespace the pre-tokenizer regex never joins to a preceding non-space character


@runtime_checkable
class TextTokenizer(Protocol):
    """What the data module needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...  # every id is in [0, vocab_size)

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """Raw UTF-8 bytes as tokens (vocabulary 256); ``decode(encode(s)) == s`` for every string."""

    vocab_size = BYTE_VOCAB

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        # Generated ids may cut a character in half; replace such bytes instead of failing.
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """A ``tokenizers.Tokenizer`` (e.g. the byte-level BPE from `train_bpe`) behind the protocol."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False))


class HFTokenizer:
    """A ``transformers`` tokenizer object (anything with ``encode``/``decode``) behind the protocol."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        # len() counts added tokens too; ``.vocab_size`` alone may be smaller than the largest id.
        return int(len(self.tokenizer)) if hasattr(self.tokenizer, "__len__") else int(self.tokenizer.vocab_size)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids]))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lightning_prune`` (``~/.cache/lightning_prune`` when the variable is unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightning_prune"


def train_bpe(text: str, vocab_size: int) -> Any:
    """Train a byte-level BPE (GPT-2 style, no special tokens) on ``text``; returns a ``tokenizers.Tokenizer``.

    The 256 byte symbols are always in the vocabulary, so any text encodes and decodes back exactly; the
    vocabulary has at most ``vocab_size`` entries (fewer when ``text`` has too few distinct pairs).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return tok


def load_or_train_bpe(text: str, vocab_size: int, cache_dir: str | Path | None = None) -> BPETokenizer:
    """Load the BPE for ``(text, vocab_size)`` from the cache, or train it with `train_bpe` and cache it.

    The cache file is ``<cache_dir>/bpe-<sha256 of text and vocab_size>.json``. A new file is published
    with an exclusive link, so when several processes train at once the first file wins and every process
    loads that same file (identical token ids on every rank). A cache file that cannot be read (truncated or
    corrupt) is retrained and replaced, with a warning naming it.

    Args:
        text: the training text.
        vocab_size: the largest vocabulary wanted, at least 256.
        cache_dir: folder for the cache; default `default_cache_dir`.

    Raises:
        ValueError: if ``vocab_size`` is below 256, or naming the cache file if it still cannot be read after
            being rebuilt.
    """
    if vocab_size < BYTE_VOCAB:
        raise ValueError(f"vocab_size must be at least {BYTE_VOCAB} for a byte-level BPE, got {vocab_size!r}.")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(f"bpe-v1:{vocab_size}:".encode() + text.encode("utf-8")).hexdigest()[:24]
    path = folder / f"bpe-{digest}.json"
    if path.exists():
        try:
            return BPETokenizer(_read_bpe(path))
        except ValueError as err:
            warnings.warn(f"{err}; training the tokenizer again and replacing the file.", stacklevel=2)
            _publish_bpe(text, vocab_size, path, replace=True)
    else:
        _publish_bpe(text, vocab_size, path, replace=False)
    try:
        return BPETokenizer(_read_bpe(path))
    except ValueError as err:
        raise ValueError(
            f"{err}, even after rebuilding it: delete it (rm {path}) and run again, or pass another cache_dir."
        ) from err


def _read_bpe(path: Path) -> Any:
    """``tokenizers.Tokenizer.from_file(path)``; raises ValueError naming the file when it cannot be read."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception, e.g. "EOF while parsing a value"
        raise ValueError(f"the BPE tokenizer cache {path} cannot be read ({err})") from err


def _publish_bpe(text: str, vocab_size: int, path: Path, replace: bool) -> None:
    """Train and write ``path`` through a temporary file; without ``replace`` the first process to publish wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bpe-", suffix=".json")
    os.close(fd)
    try:
        train_bpe(text, vocab_size).save(tmp)
        if replace:
            os.replace(tmp, path)  # atomic: readers see the old file or the new one, never a partial one
        else:
            try:
                os.link(tmp, path)  # fails if another process published first: use theirs
            except FileExistsError:
                pass
    finally:
        Path(tmp).unlink(missing_ok=True)


def build_tokenizer(
    tokenizer: str | Any, text: str, vocab_size: int | None = None, cache_dir: str | Path | None = None
) -> TextTokenizer:
    """Turn a tokenizer spec into a `TextTokenizer`.

    Args:
        tokenizer: ``"byte"``; ``"bpe"`` (trained on ``text`` with ``vocab_size``, cached); ``"hf:NAME"``
            (``transformers.AutoTokenizer.from_pretrained(NAME)``, needs the hub or its cache); a
            ``tokenizers.Tokenizer``; a ``transformers`` tokenizer; or a `TextTokenizer`.
        text: the training text (used by ``"bpe"`` only).
        vocab_size: the BPE vocabulary size (``"bpe"`` only).
        cache_dir: the BPE cache folder.

    Raises:
        ValueError: for an unknown name, or ``"bpe"`` without ``vocab_size``.
        TypeError: for an object that is not a tokenizer.
    """
    if isinstance(tokenizer, str):
        if tokenizer == "byte":
            return ByteTokenizer()
        if tokenizer == "bpe":
            if vocab_size is None:
                raise ValueError("tokenizer='bpe' needs vocab_size, e.g. vocab_size=4096.")
            return load_or_train_bpe(text, vocab_size, cache_dir)
        if tokenizer.startswith("hf:") and len(tokenizer) > 3:
            import transformers

            return HFTokenizer(transformers.AutoTokenizer.from_pretrained(tokenizer[3:]))
        raise ValueError(f"Unknown tokenizer {tokenizer!r}; use 'byte', 'bpe', 'hf:<name>' or a tokenizer object.")
    if isinstance(tokenizer, (ByteTokenizer, BPETokenizer, HFTokenizer)):
        return tokenizer
    if hasattr(tokenizer, "get_vocab_size") and hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return BPETokenizer(tokenizer)
    if hasattr(tokenizer, "convert_tokens_to_ids") and hasattr(tokenizer, "decode"):  # transformers
        return HFTokenizer(tokenizer)
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    raise TypeError(
        f"tokenizer must be 'byte', 'bpe', 'hf:<name>' or an object with vocab_size/encode/decode, "
        f"got {type(tokenizer).__name__}."
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters (the symbols of a byte-level vocabulary)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = chr(256 + n)
    return dict(sorted(chars.items()))


def byte_level_tokenizer() -> Any:
    """A ``tokenizers.Tokenizer`` that gives `ByteTokenizer`'s ids: token ``b`` is the byte ``b``.

    A BPE without merges over GPT-2's byte symbols (no regex split, no special tokens), so ``encode(text).ids ==
    list(text.encode("utf-8"))`` and decoding joins the bytes back (invalid UTF-8 becomes U+FFFD).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: b for b, symbol in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def pretrained_tokenizer(tokenizer: TextTokenizer, model_max_length: int | None = None) -> Any:
    """A ``transformers`` tokenizer (``save_pretrained``, ``AutoTokenizer``, ``pipeline``) encoding as ``tokenizer``.

    `ByteTokenizer` becomes `byte_level_tokenizer`, `BPETokenizer` its own
    ``tokenizers.Tokenizer``, both wrapped in a ``PreTrainedTokenizerFast``; an `HFTokenizer` is its
    ``transformers`` tokenizer. None of them adds special tokens, as training did not.

    Args:
        tokenizer: the tokenizer the model was trained with.
        model_max_length: the model's context, so that ``transformers`` knows where to truncate.

    Raises:
        TypeError: for a tokenizer of another kind (it cannot be saved as a ``transformers`` tokenizer).
    """
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.tokenizer
    if isinstance(tokenizer, ByteTokenizer):
        backend = byte_level_tokenizer()
    elif isinstance(tokenizer, BPETokenizer):
        backend = tokenizer.tokenizer
    else:
        raise TypeError(
            f"cannot save a {type(tokenizer).__name__} as a transformers tokenizer: use 'byte', 'bpe', 'hf:<name>' "
            "or a transformers / tokenizers tokenizer object."
        )
    from transformers import PreTrainedTokenizerFast

    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **kwargs)


def _chunks(text: str, size: int) -> Iterator[str]:
    """Consecutive pieces of ``text`` (which join back to it) of at most about ``size`` characters.

    A piece ends between a non-space character and a space, tab or newline: no piece of GPT-2's pre-tokenizer
    regex (the byte-level BPE's) spans such a place, and the regex has no look-behind, so encoding the pieces one by
    one gives the ids of encoding the whole text. Only ``size`` characters without such a place are cut elsewhere.
    """
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = end
            while cut > start + 1 and not (text[cut] in _BREAKS and not text[cut - 1].isspace()):
                cut -= 1
            end = cut if cut > start + 1 else end
        yield text[start:end]
        start = end


def encode_corpus(tokenizer: TextTokenizer, text: str) -> torch.Tensor:
    """Encode a whole corpus into a 1-D ``LongTensor``, in chunks cut where the BPE's pre-tokenizer splits anyway, so
    the ids are those of ``tokenizer.encode(text)`` (deterministic for a given text)."""
    if not text:
        return torch.zeros(0, dtype=torch.long)  # (0,); frombuffer refuses an empty buffer
    if isinstance(tokenizer, ByteTokenizer):
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()  # (N,)
    if isinstance(tokenizer, BPETokenizer):
        encodings = tokenizer.tokenizer.encode_batch(list(_chunks(text, _CHUNK_CHARS)), add_special_tokens=False)
        ids = [i for enc in encodings for i in enc.ids]
    else:
        ids = [i for chunk in _chunks(text, _CHUNK_CHARS) for i in tokenizer.encode(chunk)]
    return torch.tensor(ids, dtype=torch.long)  # (N,)
