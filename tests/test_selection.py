import pytest
from helpers import TinyLM
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lightning_prune.selection import in_dim, select_parameters


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
