"""simulator.hf_config: real Hub config.json files map to the ModelSpec fields they imply."""

from __future__ import annotations

import copy
import json

import pytest

from parasim.simulator.errors import SpecError
from parasim.simulator.hf_config import SUPPORTED_MODEL_TYPES, load_hf_config, model_from_hf_config
from parasim.simulator.model import MLASpec
from tests.hf_configs import CONFIGS, PUBLISHED_PARAMS


def spec(key: str, **overrides):
    config = {**copy.deepcopy(CONFIGS[key]), **overrides}
    return model_from_hf_config(config, name=key)


def without(key: str, *drop: str) -> dict:
    return {k: v for k, v in copy.deepcopy(CONFIGS[key]).items() if k not in drop}


# Every published config maps -----------------------------------------------------------------

def test_every_model_type_has_a_config_and_a_published_count():
    assert {c["model_type"] for c in CONFIGS.values()} == set(SUPPORTED_MODEL_TYPES)
    assert set(PUBLISHED_PARAMS) == set(CONFIGS)


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_every_config_builds_and_keeps_its_name(key):
    assert spec(key).name == key


def test_llama3_8b():
    m = spec("llama3-8b")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.kv_heads) == (32, 4096, 32, 8)
    assert (m.ffn_hidden_size, m.vocab_size, m.head_dim, m.qk_head_dim) == (14336, 128256, None, 128)
    assert (m.activation, m.norm, m.position_embedding) == ("swiglu", "rmsnorm", "rope")
    assert not (m.tied_embeddings or m.qkv_bias or m.linear_bias or m.qk_norm or m.dropout)
    assert not m.is_moe and m.mla is None


def test_mistral_7b():
    m = spec("mistral-7b")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.kv_heads) == (32, 4096, 32, 8)
    assert (m.ffn_hidden_size, m.vocab_size) == (14336, 32000)
    assert (m.activation, m.norm, m.position_embedding) == ("swiglu", "rmsnorm", "rope")
    assert not (m.tied_embeddings or m.qkv_bias or m.is_moe)


def test_mixtral_8x7b():
    m = spec("mixtral-8x7b")
    assert (m.num_layers, m.hidden_size, m.kv_heads, m.vocab_size) == (32, 4096, 8, 32000)
    assert (m.num_experts, m.experts_per_token, m.moe_ffn_hidden_size) == (8, 2, 14336)
    assert (m.num_shared_experts, m.first_dense_layers, m.num_moe_layers) == (0, 0, 32)
    assert m.activation == "swiglu" and not m.tied_embeddings


def test_qwen25_7b_has_qkv_bias():
    m = spec("qwen2.5-7b")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.kv_heads) == (28, 3584, 28, 4)
    assert (m.ffn_hidden_size, m.vocab_size, m.qk_head_dim) == (18944, 152064, 128)
    assert m.qkv_bias and not m.linear_bias and not m.qk_norm and not m.tied_embeddings


def test_qwen2_57b_a14b_shared_expert_with_gate():
    m = spec("qwen2-57b-a14b")
    assert (m.num_layers, m.hidden_size, m.kv_heads, m.vocab_size) == (28, 3584, 4, 151936)
    assert (m.num_experts, m.experts_per_token, m.moe_ffn_hidden_size) == (64, 8, 2560)
    assert (m.num_shared_experts, m.shared_ffn_hidden_size) == (1, 20480)
    assert m.shared_expert_gate and m.qkv_bias and not m.qk_norm
    assert m.ffn_hidden_size == 18944 and m.num_moe_layers == 28


def test_qwen3_8b_head_dim_and_qk_norm():
    m = spec("qwen3-8b")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.kv_heads) == (36, 4096, 32, 8)
    assert (m.ffn_hidden_size, m.vocab_size) == (12288, 151936)
    assert m.head_dim == 128  # Qwen3 always states it, even where it equals hidden/heads
    assert m.qk_norm and not m.qkv_bias and not m.tied_embeddings


def test_qwen3_30b_a3b_head_dim_differs_from_hidden_over_heads():
    m = spec("qwen3-30b-a3b")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.kv_heads) == (48, 2048, 32, 4)
    assert m.head_dim == m.qk_head_dim == 128  # 2048 / 32 would be 64
    assert (m.num_experts, m.experts_per_token, m.moe_ffn_hidden_size) == (128, 8, 768)
    assert m.num_shared_experts == 0 and not m.shared_expert_gate
    assert m.qk_norm and not m.qkv_bias and m.num_moe_layers == 48


def test_gpt2_small():
    m = spec("gpt2")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.vocab_size) == (12, 768, 12, 50257)
    assert m.ffn_hidden_size == 4 * 768  # the real file has no n_inner key at all
    assert (m.activation, m.norm, m.position_embedding) == ("gelu", "layernorm", "learned")
    assert m.max_position_embeddings == 1024
    assert m.tied_embeddings and m.linear_bias and m.dropout


def test_gpt2_explicit_n_inner_and_no_dropout():
    m = spec("gpt2", n_inner=1000, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    assert m.ffn_hidden_size == 1000 and not m.dropout
    assert spec("gpt2", n_inner=None).ffn_hidden_size == 3072


def test_pythia_1_4b_partial_rotary_is_still_rope():
    m = spec("pythia-1.4b")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads) == (24, 2048, 16)
    assert (m.ffn_hidden_size, m.vocab_size) == (8192, 50304)
    assert (m.activation, m.norm, m.position_embedding) == ("gelu", "layernorm", "rope")
    assert m.linear_bias and not m.tied_embeddings and not m.dropout


def test_gpt_neox_dropout_from_its_own_keys():
    assert spec("pythia-1.4b", hidden_dropout=0.1).dropout
    assert spec("pythia-1.4b", attention_dropout=0.1).dropout
    assert not spec("pythia-1.4b", attention_probs_dropout_prob=0.1).dropout  # not read by HF


def test_deepseek_v3_mla_and_moe():
    m = spec("deepseek-v3")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.vocab_size) == (61, 7168, 128, 129280)
    assert m.mla == MLASpec(q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                            qk_rope_head_dim=64, v_head_dim=128)
    assert (m.qk_head_dim, m.v_head_dim, m.num_kv_heads) == (192, 128, None)
    assert (m.num_experts, m.experts_per_token, m.moe_ffn_hidden_size) == (256, 8, 2048)
    assert (m.num_shared_experts, m.shared_ffn_hidden_size) == (1, 2048)
    assert (m.first_dense_layers, m.ffn_hidden_size, m.num_moe_layers) == (3, 18432, 58)
    assert not m.tied_embeddings and not m.shared_expert_gate


def test_deepseek_layer_count_excludes_mtp():
    assert spec("deepseek-v3", num_nextn_predict_layers=3).num_layers == 61


def test_deepseek_v2_lite_null_q_lora_rank_is_full_rank():
    m = spec("deepseek-v2-lite")
    assert m.mla.q_lora_rank == 0 and m.mla.kv_lora_rank == 512
    assert (m.num_experts, m.experts_per_token, m.num_shared_experts) == (64, 6, 2)
    assert (m.first_dense_layers, m.num_layers, m.ffn_hidden_size) == (1, 27, 10944)


def test_llama_defaults_and_biases():
    assert spec("llama3-8b", num_key_value_heads=None).kv_heads == 32  # old Llama: no GQA key
    assert model_from_hf_config(without("llama3-8b", "num_key_value_heads"), name="x").kv_heads == 32
    qkv = spec("llama3-8b", attention_bias=True)
    assert qkv.qkv_bias and not qkv.linear_bias
    both = spec("llama3-8b", attention_bias=True, mlp_bias=True)
    assert both.linear_bias and not both.qkv_bias
    assert not spec("llama3-8b", mlp_bias=True).linear_bias
    assert spec("llama3-8b", tie_word_embeddings=True).tied_embeddings
    assert spec("llama3-8b", hidden_act="swish").activation == "swiglu"


def test_llama_head_dim_only_when_it_differs():
    assert spec("llama3-8b", head_dim=128).head_dim is None  # 4096 / 32 anyway
    assert spec("mistral-7b", hidden_size=5120, head_dim=128).head_dim == 128  # Mistral-Nemo


def test_transformers_5_expert_key_is_read():
    config = without("qwen3-30b-a3b", "num_experts")
    config["num_local_experts"] = 128
    assert model_from_hf_config(config, name="x").num_experts == 128


# Errors name the field -------------------------------------------------------------------------

def raises(config, *, name="m", field="model", source=None) -> str:
    with pytest.raises(SpecError) as info:
        model_from_hf_config(config, name=name, field=field, source=source)
    return str(info.value)


def test_unsupported_model_type_lists_the_supported_ones():
    message = raises({**CONFIGS["llama3-8b"], "model_type": "xyz"}, source="/m/config.json")
    assert message.startswith("model='/m/config.json': unsupported model_type 'xyz'")
    assert "valid: llama, mistral," in message and "deepseek_v3" in message


def test_missing_model_type():
    message = raises(without("llama3-8b", "model_type"), field="teacher")
    assert message.startswith("teacher='m': no model_type in config.json")


def test_missing_key_names_field_and_key():
    message = raises(without("llama3-8b", "hidden_size"), source="/m/config.json")
    assert message.startswith("model.hidden_size='/m/config.json': missing from config.json; valid:")


@pytest.mark.parametrize("key, drop", [
    ("gpt2", "n_embd"), ("pythia-1.4b", "intermediate_size"), ("mixtral-8x7b", "num_local_experts"),
    ("qwen2-57b-a14b", "shared_expert_intermediate_size"), ("deepseek-v3", "kv_lora_rank"),
    ("deepseek-v3", "q_lora_rank"), ("deepseek-v3", "first_k_dense_replace"),
])
def test_missing_key_per_family(key, drop):
    assert raises(without(key, drop)).startswith(f"model.{drop}=")


def test_wrong_type_names_the_key():
    assert raises({**CONFIGS["llama3-8b"], "hidden_size": "4096"}).startswith("model.hidden_size=")
    assert raises({**CONFIGS["llama3-8b"], "tie_word_embeddings": 1}).startswith(
        "model.tie_word_embeddings=")


def test_not_a_json_object():
    assert raises([1, 2], source="c.json").startswith(
        "model='c.json': config.json must be a JSON object, not list")


def test_non_silu_hidden_act_in_a_llama_like():
    message = raises({**CONFIGS["qwen3-8b"], "hidden_act": "gelu"})
    assert message.startswith("model.hidden_act='gelu': only the SiLU-gated MLP")
    assert raises({**CONFIGS["deepseek-v3"], "hidden_act": "relu"}).startswith("model.hidden_act=")


@pytest.mark.parametrize("key", ["qwen2-57b-a14b", "qwen3-30b-a3b"])
def test_interleaved_dense_layers_unsupported(key):
    assert raises({**CONFIGS[key], "mlp_only_layers": [0, 5]}).startswith(
        "model.mlp_only_layers=[0, 5]: dense layers among MoE layers are not supported")
    assert raises({**CONFIGS[key], "decoder_sparse_step": 2}).startswith(
        "model.decoder_sparse_step=2:")


def test_deepseek_moe_layer_freq_must_be_one():
    assert raises({**CONFIGS["deepseek-v3"], "moe_layer_freq": 2}).startswith(
        "model.moe_layer_freq=2:")


def test_spec_errors_are_reported_under_the_field_and_file():
    message = raises({**CONFIGS["qwen2.5-7b"], "num_key_value_heads": 5}, field="teacher",
                     source="/q/config.json")
    assert message.startswith("teacher.num_kv_heads=5: must divide num_attention_heads=28")
    assert "(read from /q/config.json)" in message


# load_hf_config ---------------------------------------------------------------------------------

def write(path, config) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def test_load_names_the_model_after_its_type_and_file(tmp_path):
    # issue 17: a config in a folder called `hf` was named "hf"; the name now says what the
    # model is and where it came from
    path = tmp_path / "hf" / "config.json"
    write(path, CONFIGS["llama3-8b"])
    m = load_hf_config(path)
    assert m.name == "llama from hf/config.json" and m.kv_heads == 8
    assert load_hf_config(path.parent).name == "llama from hf/config.json"  # the folder works too


def test_load_names_the_model_after_its_name_or_path(tmp_path):
    path = tmp_path / "hf" / "config.json"
    write(path, {**CONFIGS["llama3-8b"], "_name_or_path": "meta-llama/Meta-Llama-3-8B"})
    assert load_hf_config(path).name == "Meta-Llama-3-8B"


def test_load_other_file_names_use_the_file(tmp_path):
    path = tmp_path / "qwen3-moe.json"
    write(path, CONFIGS["qwen3-30b-a3b"])
    assert load_hf_config(path).name == "qwen3_moe from qwen3-moe.json"


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope" / "config.json"
    with pytest.raises(SpecError) as info:
        load_hf_config(path, field="model")
    assert str(info.value).startswith(f"model={str(path)!r}: cannot read: No such file or directory; valid:")


def test_load_bad_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "model_type": "llama",\n  "hidden_size": ,\n}\n', encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_hf_config(path, field="teacher")
    assert str(info.value).startswith(
        f"teacher={str(path)!r}: not valid JSON: line 3 column 18: Expecting value")


def test_load_errors_show_the_path(tmp_path):
    path = tmp_path / "m" / "config.json"
    write(path, without("gpt2", "n_layer"))
    with pytest.raises(SpecError) as info:
        load_hf_config(path)
    assert str(info.value).startswith(f"model.n_layer={str(path)!r}: missing from config.json; valid:")
