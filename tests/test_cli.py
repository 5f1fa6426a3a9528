"""The recipes through the `lightning-prune` CLI: every YAML parses; the main job runs end to end (few steps)."""

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_prune.cli import cli

RECIPES = Path(__file__).parent.parent / "recipes"
FAST = [
    "--trainer.max_epochs=8",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.precision=bf16-mixed",
    "--data.source=pydoc",
    "--data.batch_size=4",
    "--model.init_args.n_layer=1",
    "--model.init_args.n_embd=32",
    "--model.init_args.warmup_steps=2",
]


def _redirect(tmp_path: Path) -> list[str]:
    return [
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]


def _offline_hub(monkeypatch):
    """Local stand-ins for the hub: a tiny GPT-2, a locally trained tokenizer, an in-memory dataset."""
    import datasets
    import transformers
    from transformers import PreTrainedTokenizerFast

    import lightning_prune.lm as lm
    from lightning_prune.tokenizers import train_bpe

    text = "In the beginning God created the heaven and the earth.\n" * 200
    tok = PreTrainedTokenizerFast(tokenizer_object=train_bpe(text, 300))
    calls = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda name, **kw: calls.append(name) or tok)
    monkeypatch.setattr(lm, "_from_pretrained", lambda name: calls.append(name) or lm.gpt2(len(tok), 1, 16, 2, 1024))
    monkeypatch.setattr(
        datasets, "load_dataset", lambda *a, **kw: calls.append(a) or datasets.Dataset.from_dict({"text": [text] * 4})
    )
    return calls


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_parses_against_the_cli(recipe, monkeypatch):
    _offline_hub(monkeypatch)
    c = cli(["--config", str(recipe)], run=False)
    assert c.trainer is not None and c.model is not None and c.datamodule is not None


def test_hub_recipe_loads_model_tokenizer_and_dataset_by_name(tmp_path, monkeypatch):
    calls = _offline_hub(monkeypatch)
    args = ["fit", "--config", str(RECIPES / "hub.yaml"), *_redirect(tmp_path), "--trainer.max_epochs=1"]
    args += [
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.val_check_interval=2",
        "--data.block_size=32",
        "--data.batch_size=2",
    ]
    c = cli(args)
    assert "gpt2" in calls and ("wikitext", "wikitext-2-raw-v1") in [a[:2] for a in calls if isinstance(a, tuple)]
    assert c.trainer.global_step == 2


def test_main_recipe_runs_end_to_end_and_reports(tmp_path):
    args = ["fit", "--config", str(RECIPES / "main.yaml"), *FAST, *_redirect(tmp_path)]
    c = cli(args)
    pruning = next(cb for cb in c.trainer.callbacks if type(cb).__name__ == "ScheduledPruning")
    assert [e["target"] for e in pruning.events] == [0.2, 0.4, 0.6]
    assert pruning.events[-1]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["pruned"]["sparsity"] == pytest.approx(0.6, abs=1e-3) and report["dense"]["epoch"] == 2
    assert (tmp_path / "report.png").stat().st_size > 0
    for record in report["records"]:  # perplexity of the same epoch as the loss: exp(mean token NLL)
        assert math.log(record["val_ppl"]) == pytest.approx(record["val_loss"], abs=2e-3), record
    export = json.loads((tmp_path / "pruned_model" / "export.json").read_text())
    assert export["max_logit_difference"] == 0.0
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert ckpts and "ScheduledPruning" in torch.load(ckpts[0], weights_only=False)["callbacks"]


def test_block_size_beyond_the_model_context_is_rejected(tmp_path):
    args = ["fit", "--config", str(RECIPES / "main.yaml"), *FAST, *_redirect(tmp_path), "--data.block_size=256"]
    with pytest.raises(ValueError, match="256.*128|128.*256"):
        cli(args)
