"""Tests for lightning_prune.data and lightning_prune.tokenizers (offline: no hub access)."""

from __future__ import annotations

import os

import pytest
import torch

import lightning_prune.tokenizers as tokenizers_mod
from lightning_prune.data import (
    TextDataModule,
    check_block_size,
    kjv_text,
    load_text,
    pack_blocks,
    pydoc_text,
    split_text,
)
from lightning_prune.tokenizers import ByteTokenizer, build_tokenizer, encode_corpus, train_bpe


def byte_ids(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


# --- tokenizers -------------------------------------------------------------------------------------------


def test_byte_tokenizer_round_trip() -> None:
    tok = ByteTokenizer()
    text = "In the beginning — naïve café, 日本語, 🙂\n\ttabs"
    ids = tok.encode(text)
    assert tok.vocab_size == 256
    assert ids[:2] == [73, 110]  # "I", "n"
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert encode_corpus(tok, text).tolist() == ids


def test_encode_corpus_chunks_join_back_for_a_generic_tokenizer() -> None:
    class Chars:  # a user tokenizer following the TextTokenizer protocol
        vocab_size = 0x110000

        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

        def decode(self, ids: list[int]) -> str:
            return "".join(map(chr, ids))

    text = pydoc_text()[:200_000]  # longer than one encoding chunk
    tok = build_tokenizer(Chars(), text="")
    assert tok.decode(encode_corpus(tok, text).tolist()) == text


# --- split and packing ------------------------------------------------------------------------------------


def test_split_text_is_the_line_aligned_tail() -> None:
    text = "".join(f"line {i}\n" for i in range(1000))
    train, val = split_text(text, 0.1)
    assert train + val == text
    assert train.endswith("\n") and val.startswith("line ")
    assert abs(len(val) - 0.1 * len(text)) < len("line 999\n")
    assert split_text(text, 0.1) == (train, val)


def test_pack_blocks_drops_the_remainder() -> None:
    blocks = pack_blocks(torch.arange(10), 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_batches_have_exact_shape_and_labels_equal_inputs() -> None:
    dm = TextDataModule(source="pydoc", block_size=64, batch_size=4, max_tokens=64 * 20 + 7, max_val_tokens=64 * 3)
    dm.setup("fit")
    assert dm.vocab_size == 256
    assert len(dm.train_dataset) == 20 and len(dm.val_dataset) == 3
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].shape == (4, 64) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["labels"], batch["input_ids"])
    # blocks are the training text's tokens in order, the remainder (7 tokens) dropped
    assert torch.equal(dm.train_dataset.blocks.flatten(), byte_ids(dm.train_text)[: 64 * 20])
    val = torch.cat([b["input_ids"] for b in dm.val_dataloader()])  # not shuffled: corpus order
    assert torch.equal(val.flatten(), byte_ids(dm.val_text)[: 64 * 3])


def test_split_is_deterministic_and_disjoint() -> None:
    a = TextDataModule(source="pydoc", block_size=128, batch_size=8, seed=3)
    b = TextDataModule(source="pydoc", block_size=128, batch_size=8, seed=3)
    a.setup("fit")
    b.setup("fit")
    text = pydoc_text()
    assert a.train_text == b.train_text and a.val_text == b.val_text
    assert a.train_text + a.val_text == text  # val is the tail, nothing shared or lost
    assert abs(len(a.val_text) - 0.05 * len(text)) < 200
    assert torch.equal(a.train_dataset.blocks, b.train_dataset.blocks)
    assert torch.equal(a.val_dataset.blocks, b.val_dataset.blocks)
    train_rows = {tuple(r) for r in a.train_dataset.blocks.tolist()}
    assert not train_rows & {tuple(r) for r in a.val_dataset.blocks.tolist()}
    # the shuffle follows the seed: same seed, same order; not the corpus order
    first_a = next(iter(a.train_dataloader()))["input_ids"]
    assert torch.equal(first_a, next(iter(b.train_dataloader()))["input_ids"])
    assert not torch.equal(first_a, a.train_dataset.blocks[:8])
    c = TextDataModule(source="pydoc", block_size=128, batch_size=8, seed=4)
    c.setup("fit")
    assert not torch.equal(first_a, next(iter(c.train_dataloader()))["input_ids"])


# --- sources ----------------------------------------------------------------------------------------------


def test_kjv_is_the_default_source_and_loads_real_text() -> None:
    dm = TextDataModule(block_size=32, max_tokens=32 * 4, max_val_tokens=32 * 2)
    dm.setup("fit")
    assert dm.train_text.startswith("In the beginning God created the heaven and the earth.\n")
    assert dm.val_text.rstrip().endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    assert 4_000_000 < len(kjv_text()) < 4_300_000
    assert ByteTokenizer().decode(dm.train_dataset.blocks[0].tolist()) == dm.train_text[:32]


def test_local_files(tmp_path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first file\n" * 50, encoding="utf-8")
    b.write_text("second file\n" * 50, encoding="utf-8")
    assert load_text(files=[str(a), str(b)]) == a.read_text() + "\n\n" + b.read_text()
    dm = TextDataModule(files=[str(a), str(b)], block_size=16, val_fraction=0.2)
    dm.setup("fit")
    assert dm.train_text.startswith("first file\n") and dm.val_text.endswith("second file\n")
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        TextDataModule(files=[str(a), str(missing)])


def test_hub_dataset_through_load_dataset(monkeypatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        rows = [f" = Heading {i} = \n" if i % 10 == 0 else f"body line {i}" for i in range(400)]
        return datasets.Dataset.from_dict({"page": rows, "id": list(range(400))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dm = TextDataModule(dataset="wikitext", dataset_config="wikitext-2-raw-v1", text_column="page", block_size=32)
    dm.setup("fit")
    assert calls == [("wikitext", "wikitext-2-raw-v1", "train")]
    assert dm.train_text.startswith(" = Heading 0 = \nbody line 1\nbody line 2\n")  # one row per line
    assert dm.val_text.endswith("body line 399\n")
    with pytest.raises(ValueError, match=r"no column 'text'.*\['page', 'id'\]"):
        TextDataModule(dataset="wikitext", dataset_split="validation").setup("fit")
    assert calls[-1] == ("wikitext", None, "validation")


# --- BPE and transformers tokenizers ----------------------------------------------------------------------


def test_bpe_trains_once_then_loads_from_cache(tmp_path, monkeypatch) -> None:
    trained = []

    def counting_train_bpe(text: str, vocab_size: int):
        trained.append(vocab_size)
        return train_bpe(text, vocab_size)

    monkeypatch.setattr(tokenizers_mod, "train_bpe", counting_train_bpe)
    kw = dict(source="pydoc", tokenizer="bpe", vocab_size=512, cache_dir=str(tmp_path), block_size=64)
    first = TextDataModule(**kw)
    assert 256 < first.vocab_size <= 512  # available before setup (e.g. for a model config)
    first.setup("fit")
    (cached,) = tmp_path.glob("bpe-*.json")
    mtime = os.stat(cached).st_mtime_ns
    assert trained == [512]

    second = TextDataModule(**kw)
    second.prepare_data()
    second.setup("fit")
    assert trained == [512]  # loaded, not retrained
    assert os.stat(cached).st_mtime_ns == mtime
    assert second.vocab_size == first.vocab_size
    assert torch.equal(first.train_dataset.blocks, second.train_dataset.blocks)
    ids = first.train_dataset.blocks
    assert int(ids.max()) < first.vocab_size
    assert ids.numel() < 0.6 * len(first.train_text.encode())  # merges compress the text
    assert first.tokenizer.decode(first.tokenizer.encode(first.val_text)) == first.val_text

    TextDataModule(**{**kw, "vocab_size": 300}).prepare_data()
    assert trained == [512, 300] and len(list(tmp_path.glob("bpe-*.json"))) == 2


def test_transformers_tokenizer_object(monkeypatch) -> None:
    import transformers

    text = pydoc_text()[:100_000]
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=train_bpe(text, 400))
    dm = TextDataModule(source="pydoc", tokenizer=hf_tok, block_size=64, max_tokens=64 * 10)
    dm.setup("fit")
    assert dm.vocab_size == len(hf_tok) == 400
    assert dm.train_dataset.blocks[0].tolist() == hf_tok.encode(dm.train_text[:2000], add_special_tokens=False)[:64]

    names = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda name: names.append(name) or hf_tok)
    assert TextDataModule(source="pydoc", tokenizer="hf:gpt2").vocab_size == 400
    assert names == ["gpt2"]


# --- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(source="shakespeare"), ValueError, r"Unknown source 'shakespeare'; allowed: 'kjv', 'pydoc'"),
        (dict(source="pydoc", files=["a.txt"]), ValueError, "one of source, files or dataset, got source and files"),
        (dict(files=["a.txt"], dataset="wikitext"), ValueError, "got files and dataset"),
        (dict(files=[]), ValueError, "files is an empty list"),
        (dict(block_size=1), ValueError, r"block_size must be an int >= 2.*got 1"),
        (dict(block_size=64.0), ValueError, r"block_size must be an int >= 2.*got 64.0"),
        (dict(val_fraction=0.0), ValueError, r"val_fraction must be a fraction in \(0, 1\), got 0.0"),
        (dict(val_fraction=1), ValueError, r"val_fraction must be a fraction in \(0, 1\), got 1"),
        (dict(val_fraction=-0.2), ValueError, r"got -0.2"),
        (dict(block_size=2048, model_context=1024), ValueError, r"block_size=2048 .* context of 1024 positions"),
        (dict(block_size=64, max_tokens=10), ValueError, r"max_tokens must be an int >= 64 .*got 10"),
        (dict(block_size=64, max_val_tokens=0), ValueError, r"max_val_tokens must be an int >= 64 .*got 0"),
        (dict(batch_size=0), ValueError, r"batch_size must be an int >= 1, got 0"),
        (dict(tokenizer="gpt"), ValueError, r"Unknown tokenizer 'gpt'; allowed: 'byte', 'bpe'"),
        (dict(tokenizer="bpe"), ValueError, "tokenizer='bpe' needs vocab_size"),
        (dict(tokenizer="bpe", vocab_size=100), ValueError, r"vocab_size must be an int >= 256, got 100"),
        (dict(vocab_size=1000), ValueError, r"vocab_size=1000 is only used with tokenizer='bpe'"),
        (dict(tokenizer="hf:"), ValueError, r"Unknown tokenizer 'hf:'"),
        (dict(tokenizer=42), TypeError, "object with encode/decode, got int"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        TextDataModule(**kwargs)


def test_check_block_size_names_both_numbers() -> None:
    assert check_block_size(1024, model_context=1024) == 1024
    assert check_block_size(4096) == 4096
    with pytest.raises(ValueError, match=r"block_size=1025 is larger than the model's context of 1024"):
        check_block_size(1025, model_context=1024)


def test_corpus_too_short_for_one_block(tmp_path) -> None:
    f = tmp_path / "tiny.txt"
    f.write_text("just a few words\n" * 20, encoding="utf-8")  # 340 bytes; val is the last 17
    with pytest.raises(ValueError, match=r"Training text of \d+ tokens is too short for one block of block_size=512"):
        TextDataModule(files=[str(f)], block_size=512).setup("fit")
    with pytest.raises(ValueError, match=r"Validation text of 17 tokens is too short .* block_size=64"):
        TextDataModule(files=[str(f)], block_size=64).setup("fit")


def test_dataloader_before_setup_says_so() -> None:
    with pytest.raises(RuntimeError, match=r"setup\(\)"):
        TextDataModule(source="pydoc").train_dataloader()


# --- with a Trainer ---------------------------------------------------------------------------------------


def test_fits_with_a_trainer(tmp_path) -> None:
    from lightning.pytorch import LightningModule, Trainer

    class TinyLM(LightningModule):
        def __init__(self, vocab_size: int) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(vocab_size, 16)
            self.head = torch.nn.Linear(16, vocab_size)

        def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = self.head(self.emb(batch["input_ids"]))  # (B, T, V)
            return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())

        def training_step(self, batch, batch_idx):
            return self.step(batch)

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.step(batch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = TextDataModule(source="pydoc", block_size=32, batch_size=4, max_tokens=32 * 16, max_val_tokens=32 * 4)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(TinyLM(dm.vocab_size), datamodule=dm)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["val_loss"])


def test_shuffle_order_depends_only_on_seed_and_epoch():
    """A resumed run (fresh data module, set_epoch(e)) sees the same batches as an uninterrupted one."""
    from lightning_prune.data import EpochShuffle

    a, b = EpochShuffle(50, seed=3), EpochShuffle(50, seed=3)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    b.set_epoch(1)
    assert list(b) == second and first != second and sorted(second) == list(range(50))


# --- unreadable inputs name the file ----------------------------------------------------------------------


def test_empty_or_blank_text_file_is_named(tmp_path) -> None:
    good, empty, blank = tmp_path / "good.txt", tmp_path / "empty.txt", tmp_path / "blank.txt"
    good.write_text("some text\n" * 50, encoding="utf-8")
    empty.write_bytes(b"")
    blank.write_text("\n  \n\t\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"Text file '.*empty\.txt' is empty \(0 bytes\)"):
        TextDataModule(files=[str(good), str(empty)], block_size=8)
    with pytest.raises(ValueError, match=r"Text file '.*blank\.txt' has no text .*remove it from files"):
        TextDataModule(files=[str(blank)], block_size=8).setup("fit")


def test_empty_text_encodes_to_no_tokens_and_packing_says_too_short() -> None:
    for tok in (ByteTokenizer(), build_tokenizer(train_bpe("abc abd\n" * 20, 260), "")):
        ids = encode_corpus(tok, "")
        assert ids.dtype == torch.long and ids.shape == (0,)
    with pytest.raises(ValueError, match="Validation text of 0 tokens is too short"):
        pack_blocks(encode_corpus(ByteTokenizer(), ""), 8, "Validation text")


def test_non_utf8_text_file_is_named_with_the_bad_byte(tmp_path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 20)
    with pytest.raises(ValueError, match=r"Text file '.*latin\.txt' is not UTF-8: byte b'\\xe9' at offset 3.*iconv"):
        TextDataModule(files=[str(latin)], block_size=8).setup("fit")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_bpe_cache_is_rebuilt_with_a_warning(tmp_path, damage) -> None:
    kw = dict(source="pydoc", tokenizer="bpe", vocab_size=300, cache_dir=str(tmp_path), block_size=16)
    first = TextDataModule(**kw)
    first.setup("fit")
    (cached,) = tmp_path.glob("bpe-*.json")
    good = cached.read_bytes()
    cached.write_bytes({"truncated": good[: len(good) // 2], "garbage": b"\x00\xff not json", "empty": b""}[damage])
    with pytest.warns(UserWarning, match=rf"BPE tokenizer cache {cached} cannot be read .*training the tokenizer"):
        again = TextDataModule(**kw)
        again.setup("fit")
    assert cached.read_bytes() == good  # replaced by a fresh, identical training
    assert torch.equal(again.train_dataset.blocks, first.train_dataset.blocks)
    assert list(tmp_path.iterdir()) == [cached]  # no temporary files left behind


def test_bpe_cache_still_unreadable_after_rebuild_names_it_and_how_to_delete(tmp_path, monkeypatch) -> None:
    path = tmp_path / "cache"
    tokenizers_mod.load_or_train_bpe("abc abd\n" * 20, 260, path)
    (cached,) = path.glob("bpe-*.json")
    cached.write_text("{", encoding="utf-8")

    class Broken:
        def save(self, file: str) -> None:
            with open(file, "w", encoding="utf-8") as f:
                f.write("{")

    monkeypatch.setattr(tokenizers_mod, "train_bpe", lambda text, vocab_size: Broken())
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=rf"{cached} cannot be read.*rm {cached}"):
        tokenizers_mod.load_or_train_bpe("abc abd\n" * 20, 260, path)
