"""Exactness decided from the model itself: on a small copy, each dimension's units are masked in one copy and cut out
of another (rebuilt from its config, as from_pretrained would); what differs is refused when asked for and left out
of StructuredPruning's defaults."""

import pytest
import test_families as tf
import torch
from helpers import trainer
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

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


@pytest.mark.parametrize("case", list(tf.CASES))
def test_every_described_family_is_exact_where_its_structure_allows(case, structure_alone):
    model = tf.build(case)
    assert set(inexact_dims(model, shrinkable(model))) == INEXACT.get(case, set())


@pytest.mark.parametrize("kind", list(MORE))
def test_families_found_by_their_module_names_are_probed_too(kind, structure_alone):
    kwargs, expected = MORE[kind]
    try:
        model = tf.make(kind, **kwargs)
    except (KeyError, ValueError) as err:  # not in this transformers
        pytest.skip(f"{kind}: {err}")
    assert set(inexact_dims(model, shrinkable(model))) == expected


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
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, tf.VOCAB, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits)


def test_experts_asked_for_are_approximate_and_said_so():
    module = CausalLM(model=tf.build("mixtral"), warmup_steps=2)
    with pytest.warns(UserWarning, match="removing experts from this mixtral model is approximate"):
        trainer(max_steps=3, callbacks=[StructuredPruning(0.9, AtSteps({2: 1.0}), dims=("experts",))]).fit(
            module, _loader(tf.VOCAB)
        )
