"""The README's Quick start is a complete script: run as written, it trains, prunes to its schedule's last target
exactly, and leaves the pruned entries at exact zeros."""

import re
from pathlib import Path

import torch

from lightning_prune import AtEpochs, ScheduledPruning

README = Path(__file__).parent.parent / "README.md"


def quickstart_code() -> str:
    """The first ```python block after the Quick start heading, exactly as the README shows it."""
    section = README.read_text().split("## Quick start: add it to your Trainer", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "no ```python block after the Quick start heading"
    return found.group(1)


def test_the_quickstart_is_a_complete_script_of_top_level_names():
    code = quickstart_code()
    compile(code, "README.md (Quick start)", "exec")
    assert "trainer.fit(" in code
    assert "TextDataModule(" in code and "CausalLM(" in code  # no model or data left to guess
    # the paragraph after it says what a batch is and what the callbacks ask of one's own module
    after = README.read_text().split(code, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    for words in ('"input_ids"', '"labels"', "your LightningModule", "StructuredPruning", "Distillation"):
        assert words in after, words


def test_the_quickstart_runs_as_written_and_prunes_to_its_last_target_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the script writes runs/quickstart/ where it is run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-layer, 64-wide model: a second thread only waits on a shared machine
    try:
        namespace: dict = {"__name__": "__main__"}
        exec(compile(quickstart_code(), "README.md (Quick start)", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)

    trainer, model = namespace["trainer"], namespace["model"]
    assert trainer.state.finished and trainer.current_epoch == trainer.max_epochs == 8
    assert (tmp_path / "runs" / "quickstart").is_dir()
    [pruning] = [cb for cb in trainer.callbacks if isinstance(cb, ScheduledPruning)]
    assert isinstance(pruning.schedule, AtEpochs)
    last = pruning.schedule.end_sparsity()
    assert last == 0.6 and pruning.sparsity == last

    params = dict(model.named_parameters())
    masks = pruning.masks  # {fqn: True keeps}
    assert masks and all(re.search(r"\.h\.\d+\..*\.weight$", f) for f in masks), sorted(masks)
    assert len(masks) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj of each of the 2 blocks
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(last * total)  # the schedule's last target, exactly
    for f, keep in masks.items():
        weight = params[f].detach()
        assert torch.equal(weight[~keep], torch.zeros_like(weight[~keep])), f"{f}: pruned entries are not zeros"
    zeros = sum(int((params[f].detach() == 0).sum()) for f in masks)
    assert zeros == pruned  # the measured sparsity is the target: no kept weight is zero
    assert pruning.events[-1]["sparsity"] == pruned / total
    assert [e["target"] for e in pruning.events] == [0.3, 0.5, 0.6]
