"""Structured pruning across model families: a tiny random model of every described family, its units masked
(entries zeroed), shrunk, saved and reloaded with plain ``from_pretrained``."""

import copy

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.utils import logging

from lightning_prune.structured import (
    FAMILIES,
    block_layouts,
    expert_masks_from_scores,
    family_of,
    ffn_neuron_weights,
    head_masks_from_scores,
    head_weight_masks,
    hidden_mask_from_scores,
    hidden_weight_masks,
    is_supported,
    layer_mask_from_scores,
    layer_weight_masks,
    model_family,
    neuron_masks_from_scores,
    neuron_weight_masks,
    shrink_,
)

logging.set_verbosity_error()  # tiny configs trip warnings about special tokens and sliding windows

VOCAB = 64
TOKENS = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
LLAMA = {
    **TOKENS,
    "num_hidden_layers": 3,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
MHA = {**TOKENS, "num_hidden_layers": 3, "hidden_size": 32, "num_attention_heads": 4, "max_position_embeddings": 64}
GPT = {**TOKENS, "n_layer": 3, "n_embd": 32, "n_head": 4, "n_inner": 64, "n_positions": 64}
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]

CASES = {  # test id → (model_type, config kwargs)
    "gpt2": ("gpt2", GPT),
    "llama": ("llama", LLAMA),
    "mistral": ("mistral", {**LLAMA, "sliding_window": 4}),
    "qwen2": ("qwen2", LLAMA),
    "qwen3": ("qwen3", {**LLAMA, "head_dim": 8}),
    "gemma": ("gemma", {**LLAMA, "head_dim": 8}),
    "gemma2": ("gemma2", {**LLAMA, "head_dim": 8, "sliding_window": 4}),
    "gemma3_text": ("gemma3_text", {**LLAMA, "head_dim": 8, "sliding_window": 4, "layer_types": LAYER_TYPES}),
    "olmo2": ("olmo2", LLAMA),
    "smollm3": ("smollm3", {**LLAMA, "no_rope_layers": [1, 0, 1]}),
    "granite": ("granite", {**LLAMA, "embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 2.0}),
    "phi3": ("phi3", LLAMA),
    "starcoder2": ("starcoder2", LLAMA),
    "stablelm": ("stablelm", LLAMA),
    "gpt_neox": ("gpt_neox", {**MHA, "intermediate_size": 64}),
    "opt": ("opt", {**MHA, "ffn_dim": 64, "word_embed_proj_dim": 32}),
    "falcon-mqa": ("falcon", {**MHA, "ffn_hidden_size": 64}),  # the tiny default: multi_query, old architecture
    "falcon-mha": ("falcon", {**MHA, "ffn_hidden_size": 64, "multi_query": False}),
    "falcon-new": ("falcon", {**MHA, "ffn_hidden_size": 64, "new_decoder_architecture": True, "num_kv_heads": 2}),
    "gptj": ("gptj", {**GPT, "rotary_dim": 4}),
    "bert": ("bert", {**MHA, "intermediate_size": 64}),
    "roberta": ("roberta", {**MHA, "intermediate_size": 64, "pad_token_id": 1, "bos_token_id": 0}),
    "mixtral": ("mixtral", {**LLAMA, "intermediate_size": 16, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3_moe": (  # layer 1 is dense
        "qwen3_moe",
        {**LLAMA, "head_dim": 8, "moe_intermediate_size": 16, "num_experts": 4, "num_experts_per_tok": 2}
        | {"mlp_only_layers": [1]},
    ),
}
ENCODERS = {"bert", "roberta"}  # AutoModel, post-norm: a zeroed block is not the identity
HEAD_DIM_IN_CONFIG = {  # the attention reads head_dim from the config: heads and hidden features can go
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "smollm3", "granite", "phi3",
    "starcoder2", "mixtral", "qwen3_moe",
}  # fmt: skip
HEADS_SHARE_A_NORM = {"olmo2"}  # q/k norms over all heads: removing heads changes the kept heads' normalisation


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: one intra-op thread is faster than two that wait for each other on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(kind, auto=AutoModelForCausalLM, **kwargs):
    torch.manual_seed(0)
    return auto.from_config(AutoConfig.for_model(kind, **kwargs)).eval()


def build(case, **overrides):
    kind, kwargs = CASES[case]
    return make(kind, _auto(case), **{**kwargs, **overrides})


def _auto(case):
    return AutoModel if case in ENCODERS else AutoModelForCausalLM


def outputs(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def zeroed(model, *entries):
    """A copy of ``model`` with every entry of the ``{fqn: bool pruned}`` dicts set to zero."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for owned in entries:
            for fqn, pruned in owned.items():
                masked.get_parameter(fqn).masked_fill_(pruned, 0.0)
    return masked


def reload(model, case, path):
    model.save_pretrained(path)
    return _auto(case).from_pretrained(path).eval()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def neuron_masks(model, sparsity=0.25):
    """Per block, remove a quarter of the neurons (of every expert in an experts block)."""
    shapes = [(lay.n_experts, lay.n_neurons) if lay.n_experts else (lay.n_neurons,) for lay in block_layouts(model)]
    scores = [torch.rand(shape) for shape in shapes]
    return neuron_masks_from_scores(scores, sparsity)


def head_masks(model):
    layouts = block_layouts(model)
    group = layouts[0].n_heads // layouts[0].n_kv_heads
    return head_masks_from_scores(model, [torch.rand(lay.n_heads) for lay in layouts], n_remove=max(group, 2))


def ffn_widths(model):
    """(dense width, expert width) as the config states them."""
    family = family_of(model)
    return getattr(model.config, family.ffn_key), getattr(model.config, family.expert_ffn_key, None)


@pytest.mark.parametrize("case", list(CASES))
def test_masked_model_equals_shrunk_and_reloaded(tmp_path, case):
    """Neurons (per expert too), heads where the config can express them, and pre-norm layers: zeroing the entries
    the removed units own computes exactly what the smaller, reloaded model computes."""
    model = build(case)
    ids = torch.randint(3, VOCAB, (2, 12))
    neurons = neuron_masks(model)
    heads = head_masks(model) if case in HEAD_DIM_IN_CONFIG - HEADS_SHARE_A_NORM else None
    layers = layer_mask_from_scores(torch.rand(3), n_remove=1) if case not in ENCODERS else None
    owned = [neuron_weight_masks(model, neurons)]
    owned += [head_weight_masks(model, heads)] if heads else []
    owned += [layer_weight_masks(model, layers)] if layers is not None else []
    expected = outputs(zeroed(model, *owned), ids)
    assert not torch.allclose(expected, outputs(model, ids), atol=1e-3)  # the masks changed something
    before, (dense_width, expert_width) = n_params(model), ffn_widths(model)

    shrink_(model, neurons, heads, layer_mask=layers)
    assert torch.allclose(outputs(model, ids), expected, atol=1e-5)
    reloaded = reload(model, case, tmp_path)
    assert n_params(reloaded) == n_params(model) < before
    assert torch.allclose(outputs(reloaded, ids), expected, atol=1e-5)

    config = reloaded.config
    assert config.num_hidden_layers == (3 if layers is None else 2) == len(block_layouts(reloaded))
    dense = [lay.n_neurons for lay in block_layouts(reloaded) if not lay.n_experts]
    experts = [lay.n_neurons for lay in block_layouts(reloaded) if lay.n_experts]
    assert set(dense) <= {dense_width * 3 // 4} and set(experts) <= {(expert_width or 0) * 3 // 4}
    if heads:
        assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 8)


@pytest.mark.parametrize("case", list(CASES))
def test_every_supported_dimension_at_once_reloads_as_shrunk(tmp_path, case):
    """Hidden features, experts, heads sharing a q/k norm and post-norm layers are not exactly their zeroed
    entries (norms and the router see every unit): the reloaded model must equal the shrunk one."""
    model = build(case)
    ids = torch.randint(3, VOCAB, (2, 12))
    original = outputs(model, ids)
    layers = layer_mask_from_scores(torch.rand(3), n_remove=1)
    hidden = hidden_mask_from_scores(torch.rand(32), n_remove=8) if case in HEAD_DIM_IN_CONFIG else None
    heads = head_masks(model) if case in HEAD_DIM_IN_CONFIG else None
    moe = [lay for lay in block_layouts(model) if lay.n_experts]
    experts = expert_masks_from_scores([torch.rand(lay.n_experts) for lay in moe], 1) if moe else None

    shrink_(model, neuron_masks(model), heads, layer_mask=layers, hidden_mask=hidden, expert_masks=experts)
    shrunk = outputs(model, ids)
    assert not torch.allclose(shrunk, original, atol=1e-3)
    reloaded = reload(model, case, tmp_path)
    assert n_params(reloaded) == n_params(model)
    assert torch.allclose(outputs(reloaded, ids), shrunk, atol=1e-5)
    config = reloaded.config
    assert config.num_hidden_layers == 2
    if hidden is not None:
        assert (config.hidden_size, config.head_dim, config.num_attention_heads) == (24, 8, 2)
        assert reloaded.get_input_embeddings().weight.shape == (VOCAB, 24)
    if experts:
        assert family_of(reloaded).experts_key and getattr(config, family_of(reloaded).experts_key) == 3


@pytest.mark.parametrize("case", list(CASES))
def test_hidden_entries_hold_removed_features_at_zero(case):
    """Zeroing what :func:`hidden_weight_masks` names keeps the removed residual features exactly zero in every
    layer's output (in every family), and the shrink keeps the kept features' embedding columns."""
    model = build(case)
    keep = hidden_mask_from_scores(torch.rand(32), n_remove=8)
    masked = zeroed(model, hidden_weight_masks(model, keep))
    with torch.no_grad():
        states = masked(torch.randint(3, VOCAB, (2, 12)), output_hidden_states=True).hidden_states
    assert all(bool((h[..., ~keep] == 0).all()) for h in states)
    assert not torch.equal(states[-1][..., keep], torch.zeros_like(states[-1][..., keep]))
    if case not in HEAD_DIM_IN_CONFIG:
        return
    embedding = model.get_input_embeddings().weight.detach().clone()
    shrink_(model, hidden_mask=keep)
    # Gemma's input embedding is scaled by sqrt(hidden_size): its kept columns keep that scale (sqrt(32 / 24) here)
    scale = (32 / 24) ** 0.5 if family_of(model).scaled_embedding else 1.0
    assert torch.allclose(model.get_input_embeddings().weight, embedding[:, keep] * scale, rtol=1e-6, atol=0)
    head = model.get_output_embeddings()
    if model.config.tie_word_embeddings:
        assert head.weight is model.get_input_embeddings().weight  # still tied


@pytest.mark.parametrize("case", sorted(HEAD_DIM_IN_CONFIG - {"starcoder2"}))  # LayerNorm: centring stays
def test_a_model_trained_with_hidden_features_zeroed_is_what_the_shrunk_model_computes(tmp_path, case):
    """Norms rescaled, and a scaled input embedding (Gemma) kept at the masked model's scale, tied head included:
    exact but for the norms' epsilon (set negligible here)."""
    from lightning_prune.structured import Units, shrink_units_

    kind, kwargs = CASES[case]
    model = make(kind, _auto(case), **{**kwargs, "rms_norm_eps": 1e-12})
    ids = torch.randint(3, VOCAB, (2, 12))
    keep = hidden_mask_from_scores(torch.rand(32), n_remove=8)
    expected = outputs(zeroed(model, hidden_weight_masks(model, keep)), ids)
    shrink_units_(model, Units(hidden=keep))
    assert torch.allclose(outputs(reload(model, case, tmp_path), ids), expected, atol=1e-5)


DERIVED_HEAD_DIM = sorted(set(CASES) - HEAD_DIM_IN_CONFIG)


@pytest.mark.parametrize("case", DERIVED_HEAD_DIM)
def test_heads_and_hidden_removal_refused_where_head_dim_is_derived(case):
    model = build(case)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kind = CASES[case][0]
    heads = [torch.tensor([True, True, False, False])] * 3
    if block_layouts(model)[0].n_kv_heads == 1:  # one key/value head for all queries: removing any splits it
        match = "splits key/value group"
    else:
        match = f"removing attention heads is not supported for {kind}.*mask_heads_"
    with pytest.raises(ValueError, match=match):
        shrink_(model, head_masks=heads)
    with pytest.raises(ValueError, match=f"removing hidden features is not supported for {kind}.*hidden_size //"):
        shrink_(model, hidden_mask=torch.arange(32) < 24)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize(
    ("case", "rows"),
    [  # removing query head 1 of 4 (head_dim 8, groups kept whole): the fused projection's pruned rows
        ("gpt2", [*range(8, 16), *range(40, 48), *range(72, 80)]),  # q | k | v, 32 each
        ("gpt_neox", range(24, 48)),  # per head [q k v]
        ("falcon-mha", range(24, 48)),  # per head [q k v]
    ],
)
def test_fused_qkv_entries_of_one_head(case, rows):
    model = build(case)
    heads = [torch.tensor([True, False, True, True])] * 3
    lay = block_layouts(model)[0]
    fqn = lay.attn_in[0][0]
    pruned = head_weight_masks(model, heads)[f"{fqn}.weight"]
    module = model.get_submodule(fqn)
    by_row = pruned.any(0) if type(module).__name__ == "Conv1D" else pruned.any(1)
    assert by_row.nonzero().flatten().tolist() == list(rows)


@pytest.mark.parametrize(
    ("case", "rows"),
    [  # removing key/value group 0 (query heads 0 and 1 of 4, 2 key/value heads, head_dim 8)
        ("phi3", [*range(0, 16), *range(32, 40), *range(48, 56)]),  # q (32) | k (16) | v (16)
        ("falcon-new", range(0, 32)),  # per key/value head [q q k v]
    ],
)
def test_fused_qkv_entries_of_one_group(case, rows):
    model = build(case)
    heads = [torch.tensor([False, False, True, True])] * 3
    fqn = block_layouts(model)[0].attn_in[0][0]
    pruned = head_weight_masks(model, heads)[f"{fqn}.weight"]
    assert pruned.any(1).nonzero().flatten().tolist() == list(rows)


@pytest.mark.parametrize(
    ("case", "layout"),
    [("falcon-mqa", ("blocked", 4, 1)), ("falcon-mha", ("grouped", 4, 4)), ("falcon-new", ("grouped", 4, 2))],
)
def test_falcon_variants_read_their_qkv_layout_from_the_config(case, layout):
    lay = block_layouts(build(case))[0]
    assert (lay.qkv_layout, lay.n_heads, lay.n_kv_heads) == layout


@pytest.mark.parametrize(("kind", "head_dim_free"), [("ministral", True), ("olmo3", True), ("helium", False)])
def test_a_llama_like_family_needs_no_description(tmp_path, kind, head_dim_free):
    """Families with Llama's module names are recognised by structure, q/k norms by their shape. Whether the config
    can express fewer heads or a narrower stream is checked against the class built from the new config: Helium
    sizes o_proj as hidden_size x hidden_size, so there only neurons and layers go."""
    assert kind not in FAMILIES
    model = make(kind, **LLAMA, head_dim=8)
    assert model_family(model) == kind and is_supported(model)
    ids = torch.randint(3, VOCAB, (2, 12))
    neurons, layers = neuron_masks(model), layer_mask_from_scores(torch.rand(3), n_remove=1)
    expected = outputs(zeroed(model, neuron_weight_masks(model, neurons), layer_weight_masks(model, layers)), ids)
    shrink_(model, neurons, layer_mask=layers)
    assert torch.allclose(outputs(reload(model, kind, tmp_path / "a"), ids), expected, atol=1e-5)
    heads, hidden = head_masks(model), torch.arange(32) >= 8
    if not head_dim_free:
        for call in (lambda: shrink_(model, head_masks=heads), lambda: shrink_(model, hidden_mask=hidden)):
            with pytest.raises(ValueError, match=r"o_proj.weight: shrunk \(\d+, \d+\), built .*mask these units"):
                call()
        return
    shrink_(model, head_masks=heads, hidden_mask=hidden)
    assert torch.allclose(outputs(reload(model, kind, tmp_path / "b"), ids), outputs(model, ids), atol=1e-5)


def decodes_like_a_full_pass(model):
    """Decoding token by token through the key/value cache gives the logits of one full pass."""
    ids = torch.randint(3, VOCAB, (1, 10))
    with torch.no_grad():
        full = model(ids).logits
        cache = model(ids[:, :6], use_cache=True).past_key_values
        steps = [model(ids[:, i : i + 1], cache=cache, use_cache=True).logits for i in range(6, 10)]
    return torch.allclose(torch.cat(steps, dim=1), full[:, 6:], atol=1e-5)


def test_depth_renumbers_layers_for_the_cache_and_slices_per_layer_config(tmp_path):
    model = build("gemma3_text")  # sliding, full, sliding attention; the window (4) is shorter than the input
    shrink_(model, layer_mask=torch.tensor([False, True, True]))
    assert model.config.layer_types == LAYER_TYPES[1:]
    assert [block.self_attn.layer_idx for block in model.model.layers] == [0, 1]
    assert decodes_like_a_full_pass(model)
    assert decodes_like_a_full_pass(reload(model, "gemma3_text", tmp_path))


@pytest.mark.parametrize("case", ["qwen2", "qwen3", "gemma2", "gemma3_text", "llama"])
def test_a_config_with_per_layer_lists_accepts_fewer_blocks(case):
    from dataclasses import replace

    from lightning_prune.structured import SizeModel
    from lightning_prune.structured.config import config_accepts

    model = build(case)
    full = SizeModel.from_model(model).full
    dropped = replace(full, layers=(False, *full.layers[1:]))
    assert config_accepts(model)(dropped)  # layer_types is shortened with the blocks, as the shrink does


@pytest.mark.parametrize("case", ["mixtral", "qwen3_moe"])
def test_experts_models_keep_hidden_sizes_their_expert_kernels_run(case):
    from dataclasses import replace

    from lightning_prune.structured import SizeModel
    from lightning_prune.structured.config import config_accepts

    model = build(case)
    full, accepts = SizeModel.from_model(model).full, config_accepts(model)
    assert not [h for h in range(1, full.hidden) if accepts(replace(full, hidden=h)) and h % 8]
    assert accepts(replace(full, hidden=full.hidden - 8))


@pytest.mark.parametrize(
    ("overrides", "dense_after"), [({"mlp_only_layers": [1]}, [0]), ({"decoder_sparse_step": 2}, [1])]
)
def test_qwen3_moe_dense_layers_survive_depth_removal(tmp_path, overrides, dense_after):
    model = build("qwen3_moe", **{"mlp_only_layers": [], **overrides})
    shrink_(model, layer_mask=torch.tensor([False, True, True]))
    assert (model.config.decoder_sparse_step, model.config.mlp_only_layers) == (1, dense_after)
    reloaded = reload(model, "qwen3_moe", tmp_path)
    assert [i for i, lay in enumerate(block_layouts(reloaded)) if not lay.n_experts] == dense_after


def test_a_model_built_without_an_optional_module_still_shrinks(tmp_path):
    """The check against the class built from the config compares only what that class reproduces."""
    kind, kwargs = CASES["bert"]
    model = AutoModel.from_config(AutoConfig.for_model(kind, **kwargs), add_pooling_layer=False).eval()
    assert not hasattr(model, "pooler") or model.pooler is None
    ids = torch.randint(3, VOCAB, (2, 12))
    neurons = neuron_masks(model)
    expected = outputs(zeroed(model, neuron_weight_masks(model, neurons)), ids)
    shrink_(model, neurons, layer_mask=torch.tensor([True, True, False]))
    assert torch.allclose(outputs(model, ids), outputs(reload(model, "bert", tmp_path), ids), atol=1e-5)
    assert not torch.allclose(outputs(model, ids), expected, atol=1e-3)  # post-norm: the removed layer mattered


def test_fused_gate_up_neuron_owns_a_gate_row_and_an_up_row():
    model = build("phi3")  # gate_up_proj (2·64, 32) = [gate | up]
    keep = [torch.arange(64) != 5] * 3
    rows = neuron_weight_masks(model, keep)["model.layers.0.mlp.gate_up_proj.weight"].any(1)
    assert rows.nonzero().flatten().tolist() == [5, 69]
    w_in, w_out = ffn_neuron_weights(model)[0]
    gate_up = model.model.layers[0].mlp.gate_up_proj.weight
    assert w_in.shape == (64, 64) and torch.equal(w_in[5], torch.cat([gate_up[5], gate_up[69]]))
    assert w_out.shape == (64, 32)


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleDict({"attn": nn.Linear(4, 4)})])


def test_unsupported_models_name_what_is_missing():
    with pytest.raises(ValueError, match=r"model_type in .*found no block list `layers`"):
        block_layouts(Custom())
    bloom = make("bloom", n_layer=1, hidden_size=16, n_head=2)
    with pytest.raises(ValueError, match=r"'bloom'.*found no block list `layers`"):
        model_family(bloom)
    assert not is_supported(bloom) and not is_supported(Custom())
    assert is_supported(build("gpt2")) and not is_supported(nn.Linear(2, 2))
    model = build("llama")
    del model.model.layers[0].self_attn.o_proj
    with pytest.raises(ValueError, match=r"found no attention projections named \['self_attn.o_proj'\] in block"):
        block_layouts(model)
    model = build("mixtral")
    del model.model.layers[1].mlp.gate
    with pytest.raises(ValueError, match=r"found no feed-forward projections .*experts 'mlp.experts'.*model.layers.1"):
        block_layouts(model)
