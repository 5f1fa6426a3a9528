"""Export: masks made permanent, save_pretrained, reload in plain transformers with the same logits; the training
tokenizer saved beside the model, so AutoTokenizer and pipeline("text-generation") work on the directory."""

import json

import lightning.pytorch as pl
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel, pipeline

from lightning_prune import tokenizers
from lightning_prune.callbacks.export import ExportPretrained, reload_class
from lightning_prune.callbacks.report import greedy_continuation
from lightning_prune.data import TextDataModule, pydoc_text
from lightning_prune.export import export_pretrained, make_permanent_
from lightning_prune.lm import CausalLM, gpt2


def test_export_round_trip_reloads_with_identical_logits_and_reports_nonzeros(tmp_path):
    torch.manual_seed(0)
    model = gpt2(vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_positions=32).eval()
    masks = {f"model.transformer.h.{i}.mlp.c_fc.weight": torch.rand(32, 128) > 0.7 for i in range(2)}
    report = export_pretrained(model, tmp_path / "out", masks)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 64, (2, 10))
    assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    for i in range(2):
        w = reloaded.transformer.h[i].mlp.c_fc.weight
        assert torch.all(w[~masks[f"model.transformer.h.{i}.mlp.c_fc.weight"]] == 0)
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert report["nonzero"] == sum(int((p != 0).sum()) for p in reloaded.parameters())
    assert report["nonzero"] <= report["parameters"] - pruned  # (GPT-2's biases start at zero too)
    assert report["bytes_on_disk"] == (tmp_path / "out" / "model.safetensors").stat().st_size


def test_masks_that_do_not_fit_are_rejected():
    model = gpt2(vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_positions=32)
    with pytest.raises(ValueError, match="does not fit"):
        make_permanent_(model, {"transformer.h.0.mlp.c_fc.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="no save_pretrained"):
        export_pretrained(torch.nn.Linear(2, 2), "unused")


class Wrapped(pl.LightningModule):
    """A bare transformers model as ``.model``; the loss is its main output's mean square (logits or hidden state)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model(input_ids=batch[0])
        main = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        return main.float().pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-2)


def tiny_bert() -> BertModel:
    config = BertConfig(
        num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2, vocab_size=64,
        max_position_embeddings=32,
    )  # fmt: skip
    return BertModel(config)


@pytest.mark.parametrize(
    ("build", "key", "cls"),
    [
        (tiny_bert, "max_hidden_state_difference", BertModel),
        (lambda: gpt2(vocab_size=64, n_layer=1, n_embd=16, n_head=2, n_positions=32), "max_logit_difference", None),
    ],
    ids=["bert-encoder", "gpt2-causal-lm"],
)
def test_export_pretrained_verifies_encoders_and_causal_lms(tmp_path, build, key, cls):
    pl.seed_everything(0, verbose=False)
    module = Wrapped(build())
    loader = DataLoader(TensorDataset(torch.randint(0, 64, (8, 12))), batch_size=4)
    trainer = pl.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[ExportPretrained(str(tmp_path / "out"))],
    )  # fmt: skip
    trainer.fit(module, loader)
    report = json.loads((tmp_path / "out" / "export.json").read_text())
    assert report[key] < 1e-5
    assert reload_class(tmp_path / "out") is (cls or type(module.model))
    reloaded = reload_class(tmp_path / "out").from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        got, want = reloaded(input_ids=ids), module.model.eval()(input_ids=ids)
    name = "logits" if key == "max_logit_difference" else "last_hidden_state"
    torch.testing.assert_close(getattr(got, name), getattr(want, name))


def test_reload_class_falls_back_to_auto_model_and_names_unknown_architectures(tmp_path):
    model = tiny_bert()
    model.save_pretrained(tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "plain" / "config.json").write_text(json.dumps(config))
    assert reload_class(tmp_path / "plain") is AutoModel
    config["architectures"] = ["NoSuchModel"]
    (tmp_path / "plain" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'NoSuchModel'.*does not have"):
        reload_class(tmp_path / "plain")


def _bpe_with_newline_merges() -> Tokenizer:
    """A byte-level BPE trained on whole texts, not line by line: like GPT-2's, it merges a newline with the
    indentation after it, so a corpus cut into pieces at arbitrary line ends would encode differently."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator([pydoc_text()], trainer=trainer)
    assert {"ĊĠ", "ĊĠĠ"} <= set(tok.get_vocab())  # newline + spaces
    return tok


def _datamodule(tmp_path, kind: str) -> TextDataModule:
    extra = {"vocab_size": 400, "cache_dir": str(tmp_path / "bpe")} if kind == "bpe" else {}
    tokenizer = _bpe_with_newline_merges() if kind == "bpe-newline-merges" else kind
    dm = TextDataModule(source="pydoc", tokenizer=tokenizer, block_size=32, batch_size=4, **extra)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("kind", ["byte", "bpe", "bpe-newline-merges"])
def test_exported_tokenizer_gives_the_training_token_ids(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(tokenizers, "_CHUNK_CHARS", 997)  # many chunk boundaries, inside pydoc's indented lines
    dm = _datamodule(tmp_path, kind)
    model = gpt2(vocab_size=dm.vocab_size, n_layer=1, n_embd=16, n_head=2, n_positions=32)
    report = export_pretrained(model, tmp_path / "out", tokenizer=dm.tokenizer)
    assert report["tokenizer"] is not None and (tmp_path / "out" / "tokenizer.json").is_file()
    saved = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert saved.model_max_length == 32  # the model's context
    train_ids = tokenizers.encode_corpus(dm.tokenizer, dm.train_text).tolist()  # what training read
    assert saved.encode(dm.train_text, add_special_tokens=False) == train_ids
    assert saved.encode(dm.train_text) == train_ids  # no special tokens added by default either
    blocks = dm.train_dataset.blocks.flatten().tolist()  # the packed training blocks: a prefix of those ids
    assert train_ids[: len(blocks)] == blocks
    assert saved.decode(train_ids) == dm.train_text


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_text_generation_pipeline_runs_offline_on_the_export(tmp_path, kind):
    pl.seed_everything(0, verbose=False)
    dm = _datamodule(tmp_path, kind)
    module = CausalLM(vocab_size=dm.vocab_size, n_layer=1, n_embd=32, n_head=2, n_positions=32, warmup_steps=1)
    out = tmp_path / "out"
    trainer = pl.Trainer(
        max_steps=3, limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[ExportPretrained(str(out))],
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    report = json.loads((out / "export.json").read_text())
    assert report["tokenizer_matches_training"] is True and report["max_logit_difference"] == 0.0
    generate = pipeline("text-generation", model=str(out), device="cpu")
    prompt = "The import statement"
    text = generate(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    # the pipeline's greedy text is what the trained model continues the training-tokenized prompt with
    assert text == prompt + greedy_continuation(module.model, dm.tokenizer, prompt, 12, 32)
