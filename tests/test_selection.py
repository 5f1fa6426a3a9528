import pytest
from helpers import TinyLM
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lightning_prune._selection import in_dim, select_parameters


def test_default_picks_linear_weights_inside_blocks_including_multihead_attention():
    chosen = list(select_parameters(TinyLM()))
    assert chosen == [
        f"blocks.{i}.{n}"
        for i in range(2)
        for n in ("attn.in_proj_weight", "attn.out_proj.weight", "fc1.weight", "fc2.weight")
    ]


def test_default_on_gpt2_uses_conv1d_and_leaves_out_embeddings_norms_biases_and_head():
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
    selected = select_parameters(model)
    assert list(selected) == [
        f"transformer.h.{i}.{n}.weight"
        for i in range(2)
        for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    module, _ = selected["transformer.h.0.mlp.c_fc.weight"]
    assert in_dim(module) == 0  # Conv1D stores (in, out)


def test_default_on_llama_leaves_out_lm_head():
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        tie_word_embeddings=False,
    )
    chosen = list(select_parameters(LlamaForCausalLM(cfg)))
    assert "lm_head.weight" not in chosen and len(chosen) == 7  # q, k, v, o, gate, up, down


def test_patterns_and_exclusions():
    model = TinyLM()
    assert list(select_parameters(model, ["*.fc?.weight"], exclude=["blocks.1.*"])) == [
        "blocks.0.fc1.weight",
        "blocks.0.fc2.weight",
    ]


def test_patterns_that_match_nothing_are_rejected():
    with pytest.raises(ValueError, match="'*.mlp.*' matches no parameter"):
        select_parameters(TinyLM(), ["*.mlp.*"])
    with pytest.raises(ValueError, match="exclude pattern 'nope' matches no selected parameter"):
        select_parameters(TinyLM(), exclude=["nope"])


def test_the_output_layer_of_a_model_without_blocks_is_left_out():
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))

    assert list(select_parameters(Net())) == ["net.0.weight", "net.2.weight"]  # not net.4, the output


def test_a_shared_parameter_is_selected_once_by_its_first_name_and_frozen_ones_are_left_out():
    model = TinyLM()
    model.blocks[1].fc2.weight = model.blocks[0].fc2.weight
    model.blocks[1].attn.requires_grad_(False)
    chosen = list(select_parameters(model))
    assert "blocks.0.fc2.weight" in chosen and "blocks.1.fc2.weight" not in chosen
    assert not any(f.startswith("blocks.1.attn.") for f in chosen)
    with pytest.raises(ValueError, match=r"blocks\.1\.fc2\.weight is blocks\.0\.fc2\.weight"):
        select_parameters(model, ["blocks.1.fc2.weight"])
