"""Exactness decided from the model itself: on a small copy, each dimension's units are masked in one copy and cut out
of another (rebuilt from its config, as from_pretrained would); what differs is refused when asked for and left out
of StructuredPruning's defaults."""

import json
import os
from pathlib import Path

import pytest
import test_families as tf
import torch
from helpers import trainer
from torch.utils.data import DataLoader

from lightning_prune import AtSteps, ExportPretrained, StructuredPruning
from lightning_prune.lm import CausalLM
from lightning_prune.structured import exact
from lightning_prune.structured.dims import shrinkable
from lightning_prune.structured.exact import inexact_dims, small_copy

INEXACT = {  # family → the dimensions whose masked model is another model than the export
    "olmo2": {"heads"},  # q/k norms over all heads: a head cut changes the kept heads' normalisation
    "starcoder2": {"hidden"},  # LayerNorm: centring over zeroed features is not undone by a cut
    "bert": {"layers"},  # post-norm: a zeroed block's norm outputs zeros instead of passing its input on
    "roberta": {"layers"},
    "mixtral": {"experts"},  # the router still gives a zeroed expert a share
    "qwen3_moe": {"experts"},
}
MORE = {  # families beyond the described ones that transformers builds offline (skipped where it has not them)
    "doge": (tf.LLAMA, {"layers"}),  # learned residual scales, zeroed with a removed block
    "diffllama": (tf.LLAMA, {"layers"}),  # lambda_init computed from the block's index: renumbering changes it
    "cohere2": ({**tf.LLAMA, "layer_types": tf.LAYER_TYPES, "sliding_window": 4}, {"hidden"}),  # mean-centring norm
    "cohere": (tf.LLAMA, set()),
    "olmo": (tf.LLAMA, set()),
    "exaone4": (tf.LLAMA, set()),
}


@pytest.fixture
def structure_alone(monkeypatch):
    """Probe on a copy built from the config (random weights, epsilons set aside): the structure alone decides."""
    monkeypatch.setattr(exact, "_SMALL", 0)
    monkeypatch.setattr(exact, "_CACHE", {})


def _builds():
    builds = {case: (lambda c=case: tf.build(c)) for case in tf.CASES}
    return builds | {kind: (lambda k=kind: tf.make(k, **MORE[k][0])) for kind in MORE}


@pytest.fixture(scope="module")
def probed():
    """``{family: (model, what its config cannot shrink, what is not exact)}``, probed once by structure alone."""
    from lightning_prune.structured.dims import why_not

    mp = pytest.MonkeyPatch()
    mp.setattr(exact, "_SMALL", 0)
    mp.setattr(exact, "_CACHE", {})
    out = {}
    for name, build in _builds().items():
        try:
            model = build()
        except (KeyError, ValueError):  # not in this transformers
            continue
        out[name] = (why_not(model), set(inexact_dims(model, shrinkable(model))))
    mp.undo()
    return out


@pytest.mark.parametrize("case", list(tf.CASES))
def test_every_described_family_is_exact_where_its_structure_allows(case, probed):
    assert probed[case][1] == INEXACT.get(case, set())


@pytest.mark.parametrize("kind", list(MORE))
def test_families_found_by_their_module_names_are_probed_too(kind, probed):
    if kind not in probed:
        pytest.skip(f"{kind} is not in this transformers")
    assert probed[kind][1] == MORE[kind][1]


def test_a_large_model_is_probed_on_a_copy_built_from_its_config(structure_alone):
    model = tf.build("olmo2", num_hidden_layers=5, vocab_size=300)
    small = small_copy(model)
    assert type(small) is type(model) and small.config.num_hidden_layers == 3 and small.config.vocab_size == 128
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert set(inexact_dims(model, ("neurons", "heads", "layers"))) == {"heads"}
    assert inexact_dims(tf.build("llama", vocab_size=300), ("neurons", "heads", "layers", "hidden")) == {}


def _loader(vocab):
    ids = torch.randint(0, vocab, (16, 16), generator=torch.Generator().manual_seed(0))
    return DataLoader([{"input_ids": x, "labels": x} for x in ids], batch_size=4)


def test_asked_for_inexact_dimensions_are_refused_at_setup_and_left_out_of_the_defaults(tmp_path):
    module = CausalLM(model=tf.build("olmo2"), warmup_steps=2)
    with pytest.raises(ValueError, match=r"removing \['heads'\] from this olmo2 model would export another model"):
        trainer(max_steps=4, callbacks=[StructuredPruning(0.8, AtSteps({2: 1.0}), dims=("heads",))]).fit(
            module, _loader(tf.VOCAB)
        )
    pruning = StructuredPruning(0.8, AtSteps({2: 1.0}), criterion="activation", loss_batches=0)
    trainer(max_steps=4, callbacks=[pruning, ExportPretrained(str(tmp_path))]).fit(module, _loader(tf.VOCAB))
    assert "heads" not in pruning.dims and "neurons" in pruning.dims
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["reload_exact"] is True  # (hidden features: exact up to the norms' epsilon, which it accounts for)


def test_experts_asked_for_are_approximate_and_said_so():
    module = CausalLM(model=tf.build("mixtral"), warmup_steps=2)
    with pytest.warns(UserWarning, match="removing experts from this mixtral model is approximate"):
        trainer(max_steps=3, callbacks=[StructuredPruning(0.9, AtSteps({2: 1.0}), dims=("experts",))]).fit(
            module, _loader(tf.VOCAB)
        )


DOCS = Path(__file__).parent.parent / "docs" / "api" / "structured" / "families.md"
MARKS = ("<!-- table: exactness -->", "<!-- /table -->")


def _cell(dim, blocked, inexact) -> str:
    if dim in inexact:
        return "not exact"
    if dim not in blocked:
        return "exact"
    return (
        "—"
        if "no mixture-of-experts" in blocked[dim]
        else "no (fused experts)"
        if "fused" in blocked[dim]
        else "no (config)"
    )


def _table(probed) -> str:
    from lightning_prune.structured import DIMENSIONS

    rows = ["| family | " + " | ".join(DIMENSIONS) + " |", "|---|" + "---|" * len(DIMENSIONS)]
    for name, (blocked, inexact) in probed.items():
        cells = [_cell(d, blocked, inexact) for d in DIMENSIONS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def test_the_docs_table_is_what_the_probe_finds(probed):
    text = DOCS.read_text()
    start, end = text.index(MARKS[0]) + len(MARKS[0]), text.index(MARKS[1])
    table = _table(probed)
    if os.environ.get("LIGHTNING_PRUNE_WRITE_TABLES"):
        DOCS.write_text(text[:start] + "\n\n" + table + "\n\n" + text[end:])
        text = DOCS.read_text()
        start, end = text.index(MARKS[0]) + len(MARKS[0]), text.index(MARKS[1])
    assert text[start:end].strip() == table
