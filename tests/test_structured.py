import copy

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
)

from lightning_prune.structured import (
    block_layouts,
    check_head_masks,
    expert_weight_masks,
    ffn_neuron_weights,
    ffn_output_modules,
    head_masks_from_scores,
    mask_heads_,
    mask_neurons_,
    model_family,
    neuron_masks_from_scores,
    shrink_,
    shrink_heads_,
)

VOCAB = 64


def gpt2():
    return GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0)
    ).eval()


def llama():
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval()


def bert():
    config = BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=32,
    )
    return BertModel(config).eval()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def random_masks(model, sparsity, heads_removed):
    layouts = block_layouts(model)
    neurons = neuron_masks_from_scores([torch.rand(lay.n_neurons) for lay in layouts], sparsity)
    heads = head_masks_from_scores(model, [torch.rand(lay.n_heads) for lay in layouts], heads_removed)
    return neurons, heads


def outputs(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize(
    ("make", "auto", "heads_removed"),
    [(gpt2, AutoModelForCausalLM, 0), (llama, AutoModelForCausalLM, 2), (bert, AutoModel, 0)],
    ids=["gpt2", "llama-gqa", "bert"],
)
def test_shrink_round_trip_equals_masked_model(tmp_path, make, auto, heads_removed):
    torch.manual_seed(0)
    model = make()
    neurons, heads = random_masks(model, 0.5, heads_removed)
    masked = copy.deepcopy(model)
    mask_neurons_(masked, neurons)
    mask_heads_(masked, heads)
    ids = torch.randint(0, VOCAB, (2, 12))
    expected = outputs(masked, ids)
    assert not torch.allclose(expected, outputs(model, ids), atol=1e-3)  # the masks changed something

    before, n_neurons = n_params(model), block_layouts(model)[0].n_neurons
    shrink_(model, neuron_masks=neurons, head_masks=heads if model_family(model) == "llama" else None)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = auto.from_pretrained(tmp_path).eval()

    assert n_params(reloaded) == n_params(model) < before
    assert all(lay.n_neurons == n_neurons // 2 for lay in block_layouts(reloaded))
    assert torch.allclose(outputs(reloaded, ids), expected, atol=1e-5)


def test_llama_gqa_head_shrink_updates_config(tmp_path):
    torch.manual_seed(0)
    model = llama()
    neurons, heads = random_masks(model, 0.25, 2)
    shrink_(model, neurons, heads)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    cfg = reloaded.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (2, 1, 8, 48)
    attn = reloaded.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (16, 32) and attn.k_proj.weight.shape == (8, 32)
    assert attn.o_proj.weight.shape == (32, 16) and attn.num_key_value_groups == 2


def test_gqa_head_removal_keeps_groups_together():
    model = llama()  # 4 query heads, 2 key/value heads: groups {0, 1} and {2, 3}
    scores = [torch.tensor([10.0, 0.0, 1.0, 1.0])] * 2  # head 1 scores lowest alone, but group {0, 1} sums higher
    masks = head_masks_from_scores(model, scores, n_remove=2)
    assert [m.tolist() for m in masks] == [[True, True, False, False]] * 2


def test_gqa_breaking_head_count_raises():
    model = llama()
    with pytest.raises(ValueError, match="breaks grouped-query attention.*multiple of 2"):
        head_masks_from_scores(model, [torch.rand(4)] * 2, n_remove=1)
    split = [torch.tensor([True, False, True, True])] * 2
    with pytest.raises(ValueError, match="splits key/value group"):
        check_head_masks(model, split)
    with pytest.raises(ValueError, match="splits key/value group"):
        mask_heads_(model, split)


def test_removing_all_neurons_or_heads_raises():
    model = gpt2()
    none_kept = [torch.zeros(128, dtype=torch.bool)] * 2
    with pytest.raises(ValueError, match="removes all 128 neurons"):
        shrink_(model, neuron_masks=none_kept)
    with pytest.raises(ValueError, match="removes all 128 neurons"):
        mask_neurons_(model, none_kept)
    with pytest.raises(ValueError, match="removes all 4 heads"):
        mask_heads_(model, [torch.zeros(4, dtype=torch.bool)] * 2)
    with pytest.raises(ValueError, match="keep at least one"):
        neuron_masks_from_scores([torch.rand(2)], 0.9)
    with pytest.raises(ValueError, match="keep at least one"):
        head_masks_from_scores(llama(), [torch.rand(4)] * 2, n_remove=4)
    assert n_params(model) == n_params(gpt2())  # nothing was changed by the failed calls


def test_uneven_layers_cannot_shrink():
    model = gpt2()
    masks = [torch.ones(128, dtype=torch.bool), torch.arange(128) < 64]
    with pytest.raises(ValueError, match="same count in every layer"):
        shrink_(model, neuron_masks=masks)
    mask_neurons_(model, masks)  # zeroing allows different counts per layer


def test_gpt2_and_bert_heads_mask_but_do_not_shrink():
    model = gpt2()
    heads = [torch.tensor([True, False, True, True])] * 2
    with pytest.raises(ValueError, match="not supported for gpt2.*mask_heads_"):
        shrink_heads_(model, heads)
    with pytest.raises(ValueError, match="not supported for bert"):
        shrink_(bert(), head_masks=heads)
    mask_heads_(model, heads)
    ids = torch.randint(0, VOCAB, (1, 8))
    ref = outputs(model, ids)
    with torch.no_grad():  # a zeroed head has no effect: changing its q/k/v weights changes nothing
        model.transformer.h[0].attn.c_attn.weight[:, 8:16].normal_()
        model.transformer.h[0].attn.c_attn.weight[:, 64 + 8 : 64 + 16].normal_()
    assert torch.allclose(outputs(model, ids), ref, atol=1e-6)


def test_layouts_and_neuron_weights():
    model = llama()
    layouts = block_layouts(model)
    assert [lay.prefix for lay in layouts] == ["model.layers.0", "model.layers.1"]
    assert (layouts[0].n_neurons, layouts[0].n_heads, layouts[0].n_kv_heads, layouts[0].head_dim) == (64, 4, 2, 8)
    assert list(ffn_output_modules(model)) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    w_in, w_out = ffn_neuron_weights(model)[0]
    assert w_in.shape == (64, 64) and w_out.shape == (64, 32)  # gate|up rows, down columns
    assert torch.equal(w_out, model.model.layers[0].mlp.down_proj.weight.t())
    gw_in, gw_out = ffn_neuron_weights(gpt2())[0]
    assert gw_in.shape == (128, 32) and gw_out.shape == (128, 32)
    with pytest.raises(ValueError, match="model_type in"):
        model_family(torch.nn.Linear(2, 2))


def llama_mha(heads=4):
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=VOCAB,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval()


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.config.to_dict()


def assert_unchanged(model, before):
    state, config = before
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert model.config.to_dict() == config


def test_llama_head_count_that_does_not_divide_hidden_size_is_refused_before_any_change(tmp_path):
    torch.manual_seed(0)
    model = llama_mha()  # hidden 32, 4 heads of 8, no GQA
    before = snapshot(model)
    three = [torch.tensor([True, True, True, False])] * 2
    halved = neuron_masks_from_scores([torch.rand(64)] * 2, 0.5)
    for call in (lambda: shrink_(model, halved, three), lambda: shrink_heads_(model, three)):
        with pytest.raises(ValueError, match=r"keep 3 of 4 .*hidden_size 32 is not a multiple of 3.*\[1, 2, 4\]"):
            call()
        assert_unchanged(model, before)
    model.save_pretrained(tmp_path)  # still a valid model
    two = [torch.tensor([True, False, True, False])] * 2
    shrink_(model, halved, two)  # a count that divides hidden_size works
    assert (model.config.num_attention_heads, model.config.intermediate_size) == (2, 32)
    model.save_pretrained(tmp_path / "shrunk")


def test_shrink_validates_heads_and_neurons_before_changing_either():
    for make, heads in ((gpt2, [torch.tensor([True, False, True, True])] * 2), (llama, None)):
        model = make()
        before = snapshot(model)
        n = block_layouts(model)[0].n_neurons
        valid = neuron_masks_from_scores([torch.rand(n)] * 2, 0.5)
        uneven = [torch.ones(n, dtype=torch.bool), torch.arange(n) < n // 2]
        with pytest.raises(ValueError):
            shrink_(model, valid if heads else uneven, heads if heads else [torch.ones(4, dtype=torch.bool)] * 2)
        assert_unchanged(model, before)


def test_a_config_transformers_refuses_is_reported_before_any_change(monkeypatch):
    model = llama()
    before = snapshot(model)

    def refuse(self):
        raise ValueError("intermediate_size must be even")

    monkeypatch.setattr(LlamaConfig, "validate", refuse)
    odd = [torch.arange(64) < 33] * 2
    with pytest.raises(ValueError, match=r"'intermediate_size': 33.*refused by LlamaConfig.*must be even"):
        shrink_(model, neuron_masks=odd)
    assert_unchanged(model, before)


def mixtral():
    config = MixtralConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        vocab_size=VOCAB,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return MixtralForCausalLM(config).eval()


def test_expert_removal_keeps_slices_and_caps_experts_per_token(tmp_path):
    model = mixtral()
    keep = [torch.tensor([False, True, False, False])] * 2
    owned = expert_weight_masks(model, keep)
    assert owned["model.layers.0.mlp.gate.weight"].any(1).tolist() == [True, False, True, True]
    assert owned["model.layers.0.mlp.experts.down_proj"].flatten(1).all(1).tolist() == [True, False, True, True]
    down = model.model.layers[1].mlp.experts.down_proj.detach().clone()
    shrink_(model, expert_masks=keep)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert (reloaded.config.num_local_experts, reloaded.config.num_experts_per_tok) == (1, 1)
    assert torch.equal(reloaded.model.layers[1].mlp.experts.down_proj, down[1:2])
    assert reloaded.model.layers[1].mlp.gate.top_k == model.model.layers[1].mlp.gate.top_k == 1


def test_expert_neurons_need_one_width_for_every_expert():
    model = mixtral()
    uneven = [torch.ones(4, 16, dtype=torch.bool), torch.ones(4, 16, dtype=torch.bool)]
    uneven[1][0, :4] = False  # expert 0 of layer 1 keeps 12, every other expert 16
    with pytest.raises(ValueError, match="same count in every layer"):
        shrink_(model, neuron_masks=uneven)
    with pytest.raises(ValueError, match=r"neuron mask must be bool of shape \(4, 16\)"):
        shrink_(model, neuron_masks=[torch.ones(16, dtype=torch.bool)] * 2)


def test_shrink_checks_every_dimension_before_changing_any():
    model = mixtral()
    before = snapshot(model)
    neurons = neuron_masks_from_scores([torch.rand(4, 16)] * 2, 0.25)
    heads = [torch.tensor([True, True, False, False])] * 2
    no_experts = [torch.zeros(4, dtype=torch.bool)] * 2
    with pytest.raises(ValueError, match="removes all 4 experts"):
        shrink_(
            model,
            neurons,
            heads,
            layer_mask=torch.tensor([True, False]),
            hidden_mask=torch.arange(32) >= 8,
            expert_masks=no_experts,
        )
    assert_unchanged(model, before)


def test_depth_refused_where_blocks_depend_on_their_index():
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, scale_attn_by_inverse_layer_idx=True)
    model = GPT2LMHeadModel(config)
    with pytest.raises(ValueError, match=r"scale_attn_by_inverse_layer_idx.*depends on its index"):
        shrink_(model, layer_mask=torch.tensor([True, False]))
    assert model.config.n_layer == 2


def test_fused_experts_have_no_per_neuron_modules():
    model = mixtral()
    for call in (ffn_output_modules, ffn_neuron_weights):
        with pytest.raises(ValueError, match=r"layers \[0, 1\] keep their feed-forward neurons in fused experts"):
            call(model)
