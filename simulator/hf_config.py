"""ModelSpec from a Hugging Face `config.json`, for the architectures whose layout parasim knows.

One builder per family, each following the transformers modeling file it names. Only keys that
change a count (parameters, FLOPs, activation bytes) are read; everything else in the file
(`rope_theta`, `rope_scaling`, `torch_dtype`, token ids, `sliding_window`, quantization, ...) is
ignored. A key the layout needs and the file lacks is an error rather than a guessed default,
except where transformers itself fills it in the same way for every checkpoint (e.g.
`num_key_value_heads` = `num_attention_heads`, GPT-2's `n_inner` = 4·`n_embd`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parasim.simulator.errors import SpecError
from parasim.simulator.model import MLASpec, ModelSpec

_MISSING = object()
_SILU = ("silu", "swish")  # transformers ACT2FN: the same function under two names


@dataclass(frozen=True)
class _Keys:
    """One config.json being read: every error names `field.key` and shows the file."""

    config: Mapping[str, Any]
    field: str  # job-file field the model came from, e.g. "model"
    source: str  # what errors show as the value: the file path, or the model name

    def _get(self, key: str) -> Any:
        value = self.config.get(key, _MISSING)
        if value is _MISSING:
            raise SpecError(f"{self.field}.{key}", self.source, "missing from config.json",
                            f"a config.json that sets {key}")
        return value

    def _check_count(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SpecError(f"{self.field}.{key}", value,
                            f"must be an integer >= {minimum} (in {self.source})",
                            f"an integer >= {minimum}")
        return value

    def count(self, key: str, *, minimum: int = 1) -> int:
        """A required integer."""
        return self._check_count(key, self._get(key), minimum)

    def count_of(self, keys: tuple[str, ...], *, minimum: int = 1) -> int:
        """A required integer stored under any of `keys` (renamed across transformers versions)."""
        for key in keys:
            if key in self.config:
                return self.count(key, minimum=minimum)
        return self.count(keys[0], minimum=minimum)  # raises: names the current key

    def count_or_zero(self, key: str) -> int:
        """A required key whose `null` means none (DeepSeek's `q_lora_rank`, `n_shared_experts`)."""
        value = self._get(key)
        return 0 if value is None else self._check_count(key, value, 0)

    def count_or(self, key: str, default: int, *, minimum: int = 1) -> int:
        """An integer that transformers defaults to `default` when absent or null."""
        value = self.config.get(key)
        return default if value is None else self._check_count(key, value, minimum)

    def flag(self, key: str, default: bool) -> bool:
        value = self.config.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SpecError(f"{self.field}.{key}", value,
                            f"must be true or false (in {self.source})", "true, false")
        return value

    def rate(self, key: str, default: float) -> float:
        """A dropout probability."""
        value = self.config.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise SpecError(f"{self.field}.{key}", value,
                            f"must be a probability (in {self.source})", "a number in [0, 1]")
        return float(value)

    def text(self, key: str, default: str) -> str:
        value = self.config.get(key)
        return default if value is None else value


# Shared pieces ------------------------------------------------------------------------------

def _require_silu(c: _Keys) -> None:
    """The gated MLP `down(act(gate(x)) * up(x))` is modelled as SwiGLU: act must be SiLU."""
    act = c.text("hidden_act", "silu")
    if act not in _SILU:
        raise SpecError(f"{c.field}.hidden_act", act,
                        f"only the SiLU-gated MLP (SwiGLU) is modelled for "
                        f"model_type {c.config['model_type']!r} (in {c.source})",
                        ", ".join(_SILU))


def _head_dim(c: _Keys, hidden: int, heads: int, *, always: bool) -> int | None:
    """`head_dim` when the file sets one that differs from hidden/heads (or `always`)."""
    head_dim = c.count_or("head_dim", 0)
    if not head_dim:
        return None
    if always or hidden % heads or head_dim != hidden // heads:
        return head_dim
    return None


def _require_every_layer_moe(c: _Keys) -> None:
    """Qwen MoE: a layer is sparse unless listed in `mlp_only_layers` or skipped by the step.

    parasim models MoE in every layer after a leading run of dense ones, so any other pattern
    (transformers models/qwen2_moe/modeling_qwen2_moe.py, Qwen2MoeDecoderLayer) is refused.
    """
    dense = c.config.get("mlp_only_layers") or []
    if dense:
        raise SpecError(f"{c.field}.mlp_only_layers", dense,
                        f"dense layers among MoE layers are not supported (in {c.source})",
                        "[] (every layer MoE)")
    step = c.count_or("decoder_sparse_step", 1)
    if step != 1:
        raise SpecError(f"{c.field}.decoder_sparse_step", step,
                        f"MoE in one layer of every {step} is not supported (in {c.source})", "1")


# Builders: config.json -> ModelSpec keyword arguments -------------------------------------

def _llama(c: _Keys) -> dict[str, Any]:
    """LlamaForCausalLM (transformers models/llama/modeling_llama.py); Mistral is the same.

    Pre-norm RMSNorm blocks, rotary positions, GQA, gated SiLU MLP, untied LM head by default.
    `attention_bias` puts biases on q/k/v (and o, h values per layer, not modelled);
    `mlp_bias` as well makes every linear biased. `mlp_bias` alone is not modelled.
    """
    _require_silu(c)
    hidden, heads = c.count("hidden_size"), c.count("num_attention_heads")
    attention_bias = c.flag("attention_bias", False)
    all_bias = attention_bias and c.flag("mlp_bias", False)
    return {
        "num_layers": c.count("num_hidden_layers"),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_kv_heads": c.count_or("num_key_value_heads", heads),
        "head_dim": _head_dim(c, hidden, heads, always=False),
        "ffn_hidden_size": c.count("intermediate_size"),
        "vocab_size": c.count("vocab_size"),
        "activation": "swiglu",
        "norm": "rmsnorm",
        "position_embedding": "rope",
        "tied_embeddings": c.flag("tie_word_embeddings", False),
        "linear_bias": all_bias,
        "qkv_bias": attention_bias and not all_bias,
    }


def _mixtral(c: _Keys) -> dict[str, Any]:
    """MixtralForCausalLM (transformers models/mixtral/modeling_mixtral.py).

    Llama attention; every layer's MLP is `num_local_experts` SwiGLU experts of width
    `intermediate_size`, top-`num_experts_per_tok`, no shared expert.
    """
    spec = _llama(c)
    spec.update(num_experts=c.count_of(("num_local_experts", "num_experts")),
                experts_per_token=c.count("num_experts_per_tok"),
                moe_ffn_hidden_size=spec["ffn_hidden_size"])
    return spec


def _qwen2(c: _Keys) -> dict[str, Any]:
    """Qwen2ForCausalLM (transformers models/qwen2/modeling_qwen2.py): Llama with q/k/v biases."""
    return {**_llama(c), "qkv_bias": True, "linear_bias": False}


def _qwen3(c: _Keys) -> dict[str, Any]:
    """Qwen3ForCausalLM (transformers models/qwen3/modeling_qwen3.py).

    Llama with a per-head RMSNorm on queries and keys and an explicit `head_dim`.
    """
    spec = _llama(c)
    spec.update(qk_norm=True,
                head_dim=_head_dim(c, spec["hidden_size"], spec["num_attention_heads"],
                                   always=True))
    return spec


def _qwen2_moe(c: _Keys) -> dict[str, Any]:
    """Qwen2MoeForCausalLM (transformers models/qwen2_moe/modeling_qwen2_moe.py).

    Qwen2 attention; Qwen2MoeSparseMoeBlock: `num_experts` routed experts of width
    `moe_intermediate_size`, plus one shared expert of width `shared_expert_intermediate_size`
    scaled by a sigmoid gate (a h -> 1 linear).
    """
    _require_every_layer_moe(c)
    spec = _llama(c)
    shared = c.count("shared_expert_intermediate_size", minimum=0)
    spec.update(qkv_bias=c.flag("qkv_bias", True), linear_bias=False,
                num_experts=c.count_of(("num_experts", "num_local_experts"), minimum=0),
                experts_per_token=c.count("num_experts_per_tok"),
                moe_ffn_hidden_size=c.count("moe_intermediate_size"),
                num_shared_experts=1 if shared else 0,
                shared_expert_ffn_hidden_size=shared,
                shared_expert_gate=bool(shared))
    return spec


def _qwen3_moe(c: _Keys) -> dict[str, Any]:
    """Qwen3MoeForCausalLM (transformers models/qwen3_moe/modeling_qwen3_moe.py).

    Qwen3 attention (q/k norm, explicit head_dim); routed experts only, no shared expert.
    transformers 5 saves `num_experts` as `num_local_experts`; both are read.
    """
    _require_every_layer_moe(c)
    spec = _qwen3(c)
    spec.update(num_experts=c.count_of(("num_experts", "num_local_experts"), minimum=0),
                experts_per_token=c.count("num_experts_per_tok"),
                moe_ffn_hidden_size=c.count("moe_intermediate_size"))
    return spec


def _deepseek(c: _Keys) -> dict[str, Any]:
    """DeepseekV3ForCausalLM (transformers models/deepseek_v3/modeling_deepseek_v3.py).

    DeepSeek-V2 (models/deepseek_v2/modeling_deepseek_v2.py) has the same layout. Multi-head
    latent attention; the first `first_k_dense_replace` layers have a dense MLP of width
    `intermediate_size`, the rest `n_routed_experts` experts of width `moe_intermediate_size`
    plus `n_shared_experts` shared ones (one MLP of n_shared·moe width, the same parameters).

    `num_layers` is `num_hidden_layers` only: the multi-token-prediction modules
    (`num_nextn_predict_layers`, stored as extra layers in the checkpoint) are not counted.
    """
    _require_silu(c)
    freq = c.count_or("moe_layer_freq", 1)
    if freq != 1:
        raise SpecError(f"{c.field}.moe_layer_freq", freq,
                        f"MoE in one layer of every {freq} is not supported (in {c.source})", "1")
    if c.flag("attention_bias", False):
        raise SpecError(f"{c.field}.attention_bias", True,
                        f"biases in the MLA projections are not modelled (in {c.source})",
                        "false")
    experts = c.count_or_zero("n_routed_experts")
    spec = {
        "num_layers": c.count("num_hidden_layers"),
        "hidden_size": c.count("hidden_size"),
        "num_attention_heads": c.count("num_attention_heads"),
        "ffn_hidden_size": c.count("intermediate_size"),
        "vocab_size": c.count("vocab_size"),
        "activation": "swiglu",
        "norm": "rmsnorm",
        "position_embedding": "rope",
        "tied_embeddings": c.flag("tie_word_embeddings", False),
        "mla": {
            "q_lora_rank": c.count_or_zero("q_lora_rank"),
            "kv_lora_rank": c.count("kv_lora_rank"),
            "qk_nope_head_dim": c.count("qk_nope_head_dim"),
            "qk_rope_head_dim": c.count("qk_rope_head_dim"),
            "v_head_dim": c.count("v_head_dim"),
        },
    }
    if experts:
        spec.update(num_experts=experts,
                    experts_per_token=c.count("num_experts_per_tok"),
                    moe_ffn_hidden_size=c.count("moe_intermediate_size"),
                    num_shared_experts=c.count_or_zero("n_shared_experts"),
                    first_dense_layers=c.count("first_k_dense_replace", minimum=0))
    return spec


def _gpt2(c: _Keys) -> dict[str, Any]:
    """GPT2LMHeadModel (transformers models/gpt2/modeling_gpt2.py).

    Learned positions, pre-norm LayerNorm, two-matrix GELU MLP, biases on every linear,
    LM head tied to the token embedding. Dropout defaults to 0.1 as in GPT2Config.
    """
    hidden = c.count("n_embd")
    dropout = any(c.rate(key, 0.1) > 0 for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"))
    return {
        "num_layers": c.count("n_layer"),
        "hidden_size": hidden,
        "num_attention_heads": c.count("n_head"),
        "ffn_hidden_size": c.count_or("n_inner", 4 * hidden),
        "vocab_size": c.count("vocab_size"),
        "activation": "gelu",
        "norm": "layernorm",
        "position_embedding": "learned",
        "max_position_embeddings": c.count("n_positions"),
        "tied_embeddings": c.flag("tie_word_embeddings", True),
        "linear_bias": True,
        "dropout": dropout,
    }


def _gpt_neox(c: _Keys) -> dict[str, Any]:
    """GPTNeoXForCausalLM (transformers models/gpt_neox/modeling_gpt_neox.py), e.g. Pythia.

    Rotary positions on `rotary_pct` of each head (still no position table), LayerNorm,
    two-matrix GELU MLP, biases on every linear, untied `embed_out` by default.
    """
    dropout = any(c.rate(key, 0.0) > 0 for key in ("attention_dropout", "hidden_dropout"))
    return {
        "num_layers": c.count("num_hidden_layers"),
        "hidden_size": c.count("hidden_size"),
        "num_attention_heads": c.count("num_attention_heads"),
        "ffn_hidden_size": c.count("intermediate_size"),
        "vocab_size": c.count("vocab_size"),
        "activation": "gelu",
        "norm": "layernorm",
        "position_embedding": "rope",
        "tied_embeddings": c.flag("tie_word_embeddings", False),
        "linear_bias": True,
        "dropout": dropout,
    }


_BUILDERS: dict[str, Callable[[_Keys], dict[str, Any]]] = {
    "llama": _llama,
    "mistral": _llama,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen2_moe": _qwen2_moe,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
}
SUPPORTED_MODEL_TYPES = tuple(_BUILDERS)


# Front doors ---------------------------------------------------------------------------------

def model_from_hf_config(config: object, *, name: str, field: str = "model",
                         source: str | None = None) -> ModelSpec:
    """The ModelSpec of a parsed Hugging Face `config.json`.

    `field` is the job-file field errors are reported under; `source` (default: `name`) is what
    they show as the value, normally the file's path.
    """
    shown = name if source is None else source
    if not isinstance(config, dict):
        raise SpecError(field, shown,
                        f"config.json must be a JSON object, not {type(config).__name__}",
                        "an object with a model_type")
    model_type = config.get("model_type")
    builder = _BUILDERS.get(model_type) if isinstance(model_type, str) else None
    if builder is None:
        why = ("no model_type in config.json" if model_type is None
               else f"unsupported model_type {model_type!r} in config.json")
        raise SpecError(field, shown, why, ", ".join(SUPPORTED_MODEL_TYPES))
    return _spec(builder(_Keys(config, field, shown)), name=name, field=field, shown=shown)


def _spec(kwargs: dict[str, Any], *, name: str, field: str, shown: str) -> ModelSpec:
    """Validate through the specs, reporting their errors under `field` and the file."""
    try:
        mla = kwargs.pop("mla", None)
        return ModelSpec(name=name, mla=None if mla is None else MLASpec(**mla), **kwargs)
    except SpecError as error:
        raise SpecError(field + error.field.removeprefix("model"), error.value,
                        f"{error.why} (read from {shown})", error.valid) from error


def load_hf_config(path: Path, *, field: str = "model") -> ModelSpec:
    """Read a Hugging Face `config.json` (or a folder holding one) into a ModelSpec, named
    after the config (`_name`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SpecError(field, str(path), f"cannot read: {error.strerror or error}",
                        "a readable config.json, or a folder holding one") from None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise SpecError(field, str(path), f"not valid JSON: line {error.lineno} column "
                        f"{error.colno}: {error.msg}", "a JSON object") from None
    except UnicodeDecodeError as error:
        raise SpecError(field, str(path), f"not valid JSON: not UTF-8 text ({error.reason} "
                        f"at byte {error.start})", "a UTF-8 JSON file") from None
    except (ValueError, RecursionError) as error:  # a 5000-digit number, nesting too deep
        why = "nested too deeply" if isinstance(error, RecursionError) else \
            str(error).split(";")[0]
        raise SpecError(field, str(path), f"not valid JSON: {why}", "a JSON object") from None
    return model_from_hf_config(config, name=_name(path, config), field=field,
                                source=str(path))


def _name(path: Path, config: object) -> str:
    """The model's name: the last part of the config's `_name_or_path` (the Hub id
    transformers wrote, `meta-llama/Meta-Llama-3-8B` -> `Meta-Llama-3-8B`) when it has one,
    else its `model_type` and the file (`llama from hf/config.json`)."""
    named = config.get("_name_or_path") if isinstance(config, dict) else None
    if isinstance(named, str) and " ".join(named.split()).strip("/"):
        return " ".join(named.split()).strip("/").replace("\\", "/").rsplit("/", 1)[-1][:100]
    where = path.name
    if path.name == "config.json" and path.absolute().parent.name:
        where = f"{path.absolute().parent.name}/{path.name}"
    model_type = config.get("model_type") if isinstance(config, dict) else None
    return f"{model_type} from {where}" if isinstance(model_type, str) else where
