"""The recipes through the `lightning-prune` CLI: every YAML parses; the main job runs end to end (few steps), dense
with `--dense true`, and its shipped dense reference was measured with the recipe's budget."""

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_prune import ImportanceTracking, PruningReport, ScheduledPruning
from lightning_prune.cli import cli

RECIPES = Path(__file__).parent.parent / "recipes"
SHIPPED = RECIPES / "main_dense.json"  # the main recipe's dense reference, written by a --dense run of it
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


def _run_folder(tmp_path: Path, version: int = 0) -> Path:
    """Where a run redirected by :func:`_redirect` writes everything: the logger's version folder."""
    return tmp_path / "tensorboard" / f"version_{version}"


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
    ramp = "{final: 0.5, start: 200, end: 2000, every: 100, unit: step}"
    recipe = (RECIPES / "hub.yaml").read_text()
    assert ramp in recipe
    short = tmp_path / "hub.yaml"  # the recipe's ramp, shortened to the two steps run here
    short.write_text(recipe.replace(ramp, "{final: 0.5, start: 0, end: 1, every: 1, unit: step}"))
    args = ["fit", "--config", str(short), *_redirect(tmp_path), "--trainer.max_epochs=1"]
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


def test_main_recipe_runs_end_to_end_and_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(RECIPES.parent)  # the recipe names its reference relative to the repository root
    args = ["fit", "--config", str(RECIPES / "main.yaml"), *FAST, *_redirect(tmp_path)]
    c = cli(args)
    pruning = next(cb for cb in c.trainer.callbacks if type(cb).__name__ == "ScheduledPruning")
    assert [e["target"] for e in pruning.events] == [0.2, 0.4, 0.6]
    assert pruning.events[-1]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    run = _run_folder(tmp_path)
    assert Path(c.trainer.log_dir) == run and not (tmp_path / "report.json").exists()
    report = json.loads((run / "report.json").read_text())
    assert report["final"]["sparsity"] == pytest.approx(0.6, abs=1e-3) and report["final_label"] == "weights pruned"
    assert report["dense_before_pruning"]["epoch"] == 2
    # the shipped reference has the recipe's budget, not these few steps: it is refused, naming why
    assert report["dense_same_budget"] is None and report["reference"]["used"] is False
    if SHIPPED.is_file():
        assert "trainer.limit_train_batches: 2 vs 180" in report["reference"]["why"]
    else:
        assert report["reference"]["why"] == "reference file recipes/main_dense.json not found"
    samples = report["samples"]
    assert samples["prompt"] == "And I saw" and samples["new_tokens"] == 60
    assert isinstance(samples["dense_before_pruning"], str) and isinstance(samples["final"], str)
    assert (run / "report.png").stat().st_size > 0
    for record in report["records"]:  # perplexity of the same epoch as the loss: exp(mean token NLL)
        assert math.log(record["val_ppl"]) == pytest.approx(record["val_loss"], abs=2e-3), record
    export = json.loads((run / "pruned_model" / "export.json").read_text())
    assert export["max_logit_difference"] == 0.0 and export["tokenizer_matches_training"] is True
    assert (run / "pruned_model" / "tokenizer.json").is_file()
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert ckpts and pruning.state_key in torch.load(ckpts[0], weights_only=False)["callbacks"]
    assert all(run in ckpt.parents for ckpt in ckpts)
    # TensorBoard: one series per metric, no placeholder hp_metric, sparsity at the target from its event on
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "hp_metric" not in tags and not [t for t in tags if t.endswith(("_step", "_epoch"))], tags
    last = pruning.events[-1]
    after = [e.value for e in events.Scalars("sparsity/global") if e.step >= last["step"]]
    assert after and all(v == pytest.approx(last["target"], abs=1e-3) for v in after)


def test_dense_flag_trains_the_same_budget_reference_of_the_pruned_run(tmp_path):
    dense = cli(["fit", "--config", str(RECIPES / "main.yaml"), *FAST, *_redirect(tmp_path / "dense"), "--dense=true"])
    kinds = {type(cb) for cb in dense.trainer.callbacks}
    assert not kinds & {ScheduledPruning, ImportanceTracking} and PruningReport in kinds
    reference = json.loads((_run_folder(tmp_path / "dense") / "report.json").read_text())
    assert reference["final_label"] == "dense" and reference["nonzero"] == reference["parameters"]
    pruned = cli(["--config", str(RECIPES / "main.yaml"), *FAST, *_redirect(tmp_path / "pruned")], run=False)
    next(cb for cb in pruned.trainer.callbacks if isinstance(cb, PruningReport)).reference = str(
        _run_folder(tmp_path / "dense") / "report.json"
    )
    pruned.trainer.fit(pruned.model, datamodule=pruned.datamodule)
    report = json.loads((_run_folder(tmp_path / "pruned") / "report.json").read_text())
    assert report["reference"]["used"] is True and report["budget"] == reference["budget"]
    assert report["dense_same_budget"]["val_loss"] == reference["final"]["val_loss"]
    assert report["dense_same_budget"]["step"] == report["final"]["step"] == 16
    # epochs 0-2 are the same training in both runs
    assert report["reference"]["check"] == {"validations_before_pruning": 3, "max_abs_val_loss_difference": 0.0}
    assert report["samples"]["dense_same_budget"] == reference["samples"]["final"]


@pytest.mark.skipif(not SHIPPED.is_file(), reason="recipes/main_dense.json not measured yet (see recipes/main.yaml)")
def test_shipped_dense_reference_was_measured_with_the_main_recipe_budget():
    import yaml

    recipe = yaml.safe_load((RECIPES / "main.yaml").read_text())
    reference = json.loads(SHIPPED.read_text())
    budget = reference["budget"]
    assert reference["final_label"] == "dense" and any(
        a.startswith("--dense") for a in reference["measured_with"]["argv"]
    )
    assert budget["seed"] == str(recipe["seed_everything"])
    assert (
        budget["trainer"]["optimizer_steps"]
        == recipe["trainer"]["max_epochs"] * recipe["trainer"]["limit_train_batches"]
    )
    for key in ("max_epochs", "limit_train_batches", "limit_val_batches", "gradient_clip_val"):
        assert budget["trainer"][key] == recipe["trainer"][key], key
    assert budget["trainer"]["precision"] == recipe["trainer"]["precision"]
    assert budget["model"].items() >= recipe["model"]["init_args"].items()
    assert budget["data"].items() >= recipe["data"].items()
    report = next(cb for cb in recipe["trainer"]["callbacks"] if "PruningReport" in str(cb))["init_args"]
    assert (
        reference["samples"]["prompt"] == report["prompt"]
        and reference["samples"]["new_tokens"] == report["sample_tokens"]
    )
    assert [r["epoch"] for r in reference["records"]] == list(range(recipe["trainer"]["max_epochs"]))


@pytest.mark.skipif(not SHIPPED.is_file(), reason="recipes/main_dense.json not measured yet (see recipes/main.yaml)")
def test_the_main_recipe_as_shipped_has_the_data_budget_of_its_dense_reference(tmp_path):
    c = cli(["--config", str(RECIPES / "main.yaml"), *_redirect(tmp_path)], run=False)  # no data overrides
    data = {k: v for k, v in dict(c.datamodule.hparams).items() if k not in ("num_workers", "cache_dir")}
    shipped = json.loads(SHIPPED.read_text())["budget"]["data"]
    assert data["source"] == "kjv"  # the default corpus is recorded as used, not as the unset argument
    assert {k: data.get(k) for k in shipped} == shipped


def test_block_size_beyond_the_model_context_is_rejected(tmp_path):
    args = ["fit", "--config", str(RECIPES / "main.yaml"), *FAST, *_redirect(tmp_path), "--data.block_size=256"]
    with pytest.raises(ValueError, match="256.*128|128.*256"):
        cli(args)


README = Path(__file__).parent.parent / "README.md"


def _readme_overrides() -> list[list[str]]:
    """The command-line overrides the README shows for recipes/main.yaml (the `--flag value` spans of its Recipes
    section)."""
    import re
    import shlex

    section = README.read_text().split("## Recipes", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(span) for span in re.findall(r"`(--[^`]+ [^`]+)`", section)]  # a flag with its value


def test_every_override_the_readme_shows_works_on_the_main_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(RECIPES.parent)
    overrides = _readme_overrides()
    assert len(overrides) >= 3
    text = tmp_path / "my.txt"
    text.write_text("In the beginning was the Word, and the Word was with God.\n" * 400)
    monkeypatch.chdir(tmp_path)  # `my.txt` as the README writes it
    for override in overrides:
        args = ["fit", "--config", str(RECIPES / "main.yaml"), *FAST, *_redirect(tmp_path), *override]
        if "--data.files" in override or "--data.source" in " ".join(override):
            args = [a for a in args if not a.startswith("--data.source")]
        c = cli(args)
        assert c.trainer.global_step > 0, override


def test_a_shorter_run_is_refused_with_the_flag_that_fits_the_schedule(tmp_path, monkeypatch):
    monkeypatch.chdir(RECIPES.parent)
    args = ["fit", "--config", str(RECIPES / "main.yaml"), *FAST, *_redirect(tmp_path), "--trainer.max_epochs=4"]
    with pytest.raises(ValueError, match=r"epoch 5.*--trainer.max_epochs 6.*|--schedule"):
        cli(args)
    assert not list((tmp_path / "tensorboard").glob("version_*"))  # the refused run left no folder behind
    schedule = ["--schedule", "{1: 0.3, 2: 0.6}"]
    c = cli([*args, *schedule])
    pruning = next(cb for cb in c.trainer.callbacks if isinstance(cb, ScheduledPruning))
    assert [e["target"] for e in pruning.events] == [0.3, 0.6]
    assert Path(c.trainer.log_dir) == _run_folder(tmp_path, 0) and (_run_folder(tmp_path, 0) / "report.json").is_file()


def test_a_second_run_writes_into_its_own_folder_and_keeps_the_first(tmp_path, monkeypatch):
    monkeypatch.chdir(RECIPES.parent)
    args = ["fit", "--config", str(RECIPES / "main.yaml"), *FAST, *_redirect(tmp_path), "--trainer.max_epochs=2"]
    args += ["--schedule", "{1: 0.5}"]
    cli(args)
    first = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in _run_folder(tmp_path, 0).rglob("*")}
    assert Path("tensorboard/version_0/report.json") in first
    assert Path("tensorboard/version_0/pruned_model/export.json") in first
    cli([*args, "--schedule", "{1: 0.3}"])
    second = json.loads((_run_folder(tmp_path, 1) / "report.json").read_text())
    assert second["final"]["sparsity"] == pytest.approx(0.3, abs=1e-3)
    assert (_run_folder(tmp_path, 1) / "pruned_model" / "export.json").is_file()
    assert {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in _run_folder(tmp_path, 0).rglob("*")} == first
    assert json.loads((_run_folder(tmp_path, 0) / "report.json").read_text())["final"]["sparsity"] == pytest.approx(
        0.5, abs=1e-3
    )
    assert not [p for p in tmp_path.iterdir() if p.name != "tensorboard"]  # nothing outside the version folders
