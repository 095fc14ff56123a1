"""Memory per rank: model states (ZeRO) and activations (Korthikanti et al. 2022).

Model states: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", §3.1 and §5 (Figure 1): weights, gradients and K bytes of optimizer state per
parameter; stage 1 shards the optimizer states, stage 2 also the gradients, stage 3 also the
weights over the data-parallel ranks (Megatron-Core shards over dp·cp, experts over dp·cp/ep).

Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", §4 and Table 2, generalised tensor by tensor to GQA/MLA, SwiGLU, no dropout, fused
(flash) attention, context parallelism and MoE; their Table 2 is the special case MHA, GeLU
with 4h, dropout, unfused attention, 16-bit values.
"""

from __future__ import annotations

from dataclasses import dataclass

from parasim.simulator.dualpipe import dual_in_flight
from parasim.simulator.layout import (
    DEFAULT_RECOMPUTE_MODULES,
    DUAL_SCHEDULES,
    Layout,
    Recompute,
    rank_stages,
)
from parasim.simulator.model import ModelSpec
from parasim.simulator.ops import Shard
from parasim.simulator.params import StageParams, stage_params
from parasim.simulator.training import TrainingSpec

MASK_BYTES = 1  # dropout masks are stored as bytes


@dataclass(frozen=True)
class ModelStates:
    """Bytes of weights, gradients and optimizer states on one rank."""

    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes


def model_states(params: float, training: TrainingSpec, zero_stage: int, shards: int) -> ModelStates:
    """Model states of `params` parameters replicated over `shards` data-parallel ranks.

    ZeRO paper example: 7.5B parameters, 64 GPUs, fp16 Adam: 120 / 31.4 / 16.6 / 1.9 GB for
    stages 0 / 1 / 2 / 3."""
    w = training.weight_bytes_per_param * params
    g = training.grad_bytes_per_param * params
    k = training.optimizer_bytes_per_param * params
    return ModelStates(
        weights_bytes=w / shards if zero_stage >= 3 else w,
        gradients_bytes=g / shards if zero_stage >= 2 else g,
        optimizer_bytes=k / shards if zero_stage >= 1 else k,
    )


def rank_model_states(stage: StageParams, training: TrainingSpec, layout: Layout,
                      node_dp: int = 1) -> ModelStates:
    """One rank's model states in GPU memory: its stage's parameters split over tp (norms,
    row-parallel biases and learned positions whole) and experts over ep·tp; ZeRO shards dense
    states over dp·cp and expert states over dp·cp/ep. Optimizer offload keeps the optimizer
    states in host memory instead (`rank_host_state_bytes`); ZeRO++'s hpZ adds a secondary
    copy of the weights partitioned over the `node_dp` data-parallel ranks of a node
    (`zero_pp.secondary_weight_bytes`)."""
    states = _sharded_states(stage, training, layout)
    if layout.offload.optimizer:
        states = ModelStates(weights_bytes=states.weights_bytes,
                             gradients_bytes=states.gradients_bytes, optimizer_bytes=0.0)
    if layout.zero_pp:
        full = (stage.dense_per_rank(layout.tp) + stage.expert_per_rank(layout.tp, layout.ep)) \
            * training.weight_bytes_per_param
        states = ModelStates(weights_bytes=states.weights_bytes + full / node_dp,
                             gradients_bytes=states.gradients_bytes,
                             optimizer_bytes=states.optimizer_bytes)
    return states


def rank_host_state_bytes(stage: StageParams, training: TrainingSpec, layout: Layout) -> float:
    """Host memory one GPU's optimizer offload takes: its ZeRO shard's optimizer states (fp32
    master weights, Adam moments) and a copy of the shard's gradients it updates from
    (Ren et al. 2021, "ZeRO-Offload", §3: fp32 parameters, gradients, momentum and variance
    on the CPU; Megatron-Core's HybridDeviceOptimizer keeps the CPU gradients pinned,
    `--no-pin-cpu-grads`). 0 without optimizer offload."""
    if not layout.offload.optimizer:
        return 0.0
    optimizer = _sharded_states(stage, training, layout).optimizer_bytes
    return optimizer * (1 + training.grad_bytes_per_param / training.optimizer_bytes_per_param)


def _sharded_states(stage: StageParams, training: TrainingSpec, layout: Layout) -> ModelStates:
    """ZeRO's sharding of the rank's states, wherever they live."""
    assert layout.dp is not None
    dense = stage.dense_per_rank(layout.tp)
    expert = stage.expert_per_rank(layout.tp, layout.ep)
    twins = stage_holders(layout)
    dense_states = model_states(dense, training, layout.zero_stage,
                                layout.dp * layout.cp * twins)
    expert_states = model_states(expert, training, layout.zero_stage,
                                 layout.dp * layout.cp // layout.ep * twins)
    return ModelStates(
        weights_bytes=dense_states.weights_bytes + expert_states.weights_bytes,
        gradients_bytes=dense_states.gradients_bytes + expert_states.gradients_bytes,
        optimizer_bytes=dense_states.optimizer_bytes + expert_states.optimizer_bytes,
    )


def held_params(model: ModelSpec, stage_layers: tuple[int, ...], layout: Layout, rank: int
                ) -> StageParams:
    """What pipeline rank `rank` holds (`params.stage_params`); under DualPipe(V) its two
    stages (`layout.rank_stages`), each counted as a stage of its own: the ends' ranks hold
    both the embedding and the LM head."""
    if layout.schedule not in DUAL_SCHEDULES:
        return stage_params(model, stage_layers, layout.pp, rank)
    held = [stage_params(model, stage_layers, len(stage_layers), s)
            for s in rank_stages(layout, rank)]
    return StageParams(*(sum(getattr(p, f) for p in held)
                         for f in ("dense", "expert", "embedding", "lm_head", "replicated")))


def stage_holders(layout: Layout) -> int:
    """Copies of each stage per data-parallel replica: 2 under DualPipe, whose ranks r and
    pp-1-r both hold stage r (DeepSeek-V3 report, arXiv:2412.19437 §3.2.1: "DualPipe requires
    keeping two copies of the model parameters"; Table 2 "Parameter 2x"). Weights and
    gradients are per copy (each copy runs its own direction's micro-batches); the two copies'
    gradients are summed and one update serves both, so ZeRO shards the optimizer states (and
    with stage 2 and 3 gradients, weights) over both copies' data-parallel ranks: with ZeRO-1
    DualPipe costs 2x weights and gradients and 1x optimizer states per rank."""
    return 2 if layout.schedule == "dualpipe" else 1


# Activations ---------------------------------------------------------------------------------


def attention_activation_bytes(model: ModelSpec, shard: Shard,
                               repeated: frozenset[str] = frozenset()) -> float:
    """Tensors the attention half of a block keeps for its backward pass, per micro-batch,
    less what selective recompute repeats (`repeated`, `layout.RECOMPUTE_MODULES`). The inputs
    of its linear layers are kept at `shard.linear_input_bytes` (FP8 training keeps their FP8
    casts); everything else in the activations' precision."""
    h, bpv, lin = model.hidden_size, shard.bytes_per_value, shard.linear_input_bytes
    tokens, edge = shard.tokens, shard.elementwise_tokens  # edge: tokens of norm regions
    heads = model.num_attention_heads // shard.tp
    kv_heads = heads if model.mla else max(1, model.kv_heads // shard.tp)
    dqk, dv = model.qk_head_dim, model.v_head_dim
    total = bpv * edge * h  # norm input
    if "layernorm" not in repeated:
        total += lin * edge * h  # projection input (norm output)
    if not (model.mla and "mla_up_proj" in repeated):
        total += bpv * tokens * (heads * dqk + kv_heads * (dqk + dv))  # Q, K, V
    if model.mla:  # low-rank latents are the up-projections' inputs
        total += lin * tokens * (model.mla.q_lora_rank + model.mla.kv_lora_rank)
    if shard.flash_attention:
        total += 4 * tokens * heads  # fp32 softmax statistics (log-sum-exp) per query
    elif "core_attn" not in repeated:  # softmax output, with dropout its mask and output
        scores = shard.micro_batch * heads * (shard.seq_length // shard.cp) * shard.seq_length
        total += scores * ((2 * bpv + MASK_BYTES) if model.dropout else bpv)
    total += lin * tokens * heads * dv  # output projection input
    if model.dropout:
        total += MASK_BYTES * edge * h
    return total


def ffn_activation_bytes(model: ModelSpec, shard: Shard, moe: bool,
                         repeated: frozenset[str] = frozenset()) -> float:
    """Tensors the MLP / MoE half of a block keeps for its backward pass, per micro-batch
    (linear layers' inputs at `shard.linear_input_bytes`, the router's in 16 bits), less what
    selective recompute repeats (`repeated`). The experts' outputs are not kept for the
    combine: Megatron-Core applies the routing probabilities inside the experts' activation
    (megatron/core/transformer/moe/experts.py, TEGroupedMLP `bias_act_func`:
    `weighted_bias_swiglu_impl(..., permuted_probs, ...)`, whose backward recomputes the
    SwiGLU from its saved input), so the combine is an unweighted `unpermute` that saves
    nothing (moe/token_dispatcher.py)."""
    h, bpv, lin = model.hidden_size, shard.bytes_per_value, shard.linear_input_bytes
    tokens, edge = shard.tokens, shard.elementwise_tokens
    total = bpv * edge * h  # norm input
    if "layernorm" not in repeated:
        total += (bpv if moe else lin) * edge * h  # fc1 (or router) input: the norm output
    if model.dropout:
        total += MASK_BYTES * edge * h
    if not moe:
        return total + _mlp_inner_bytes(model, tokens, model.ffn_hidden_size // shard.tp, shard)
    slots = tokens * model.experts_per_token * (model.capacity_factor or 1.0)
    total += 4 * tokens * model.num_experts  # fp32 router probabilities
    total += lin * slots * h  # dispatched expert inputs (fc1's input)
    total += _mlp_inner_bytes(model, slots, model.moe_ffn_hidden_size // shard.tp, shard,
                              "moe_act" in repeated, moe=True)
    if model.num_shared_experts:
        width = model.num_shared_experts * model.shared_ffn_hidden_size // shard.tp
        total += lin * tokens * h + _mlp_inner_bytes(model, tokens, width, shard, moe=True)
    return total


def _mlp_inner_bytes(model: ModelSpec, tokens: float, width: int, shard: Shard,
                     act_repeated: bool = False, moe: bool = False) -> float:
    """fc1 output (the activation's input; gate and up for SwiGLU; in an MoE layer's experts
    at `shard.moe_act_input_bytes`) and fc2 input (a linear layer's input, not kept when the
    activation is recomputed)."""
    fc1_out = width * (2 if model.activation == "swiglu" else 1)
    fc2_in = 0 if act_repeated else shard.linear_input_bytes * width
    act_in = shard.moe_act_input_bytes if moe else shard.bytes_per_value
    return tokens * (act_in * fc1_out + fc2_in)


def block_activation_bytes(model: ModelSpec, shard: Shard, moe: bool, recompute: Recompute,
                           modules: frozenset[str] = DEFAULT_RECOMPUTE_MODULES) -> float:
    """Stored activations of one block for one micro-batch (Korthikanti et al. Table 2):
    GPT, no recompute: s·b·h·(34 + 5·a·s/h); tensor parallel: s·b·h·(10 + 24/t + 5·a·s/(h·t));
    with sequence parallelism: s·b·h·(34/t + 5·a·s/(h·t)); selective recompute drops the
    5·a·s/h term (core_attn, its default `modules`; the others drop what
    `layout.RECOMPUTE_MODULES` says); full recompute keeps only the block's input, 2·s·b·h
    (/t with SP)."""
    if recompute == "full":
        return shard.bytes_per_value * shard.elementwise_tokens * model.hidden_size
    repeated = modules if recompute == "selective" else frozenset()
    return attention_activation_bytes(model, shard, repeated) + \
        ffn_activation_bytes(model, shard, moe, repeated)


def head_activation_bytes(model: ModelSpec, shard: Shard) -> float:
    """Last stage: final norm and LM head inputs and the fp32 logits of the vocabulary-parallel
    cross-entropy, 4·s·b·h/t·(1 + V/h) (Korthikanti et al. §4.3)."""
    vocab = -(-model.vocab_size // shard.tp)
    return 2 * shard.bytes_per_value * shard.elementwise_tokens * model.hidden_size \
        + 4 * shard.tokens * vocab


def embedding_activation_bytes(model: ModelSpec, shard: Shard) -> float:
    """First stage: the embedding dropout mask (Korthikanti et al. §4.3)."""
    return MASK_BYTES * shard.elementwise_tokens * model.hidden_size if model.dropout else 0.0


def offloaded_activations(per_microbatch_bytes: float, blocks: int, chunks: int,
                          in_flight: float) -> tuple[float, float]:
    """(GPU bytes, host bytes) of a rank's stored block activations under activation offload,
    from its `per_microbatch_bytes` over `blocks` blocks in `chunks` virtual stages (a mean
    block). Transformer Engine's CPU offload (Megatron-Core `--cpu-offloading-num-layers`,
    which must be below the layer count: megatron/core/transformer/transformer_config.py)
    copies a block's activations to the host after its forward and fetches them back before
    its backward; the last block of each chunk stays (its backward follows at once), and one
    more block's activations are in flight over PCIe (the double buffer). Everything else of
    the `in_flight` micro-batches is in host memory."""
    if blocks <= 0 or per_microbatch_bytes <= 0:
        return 0.0, 0.0
    block = per_microbatch_bytes / blocks
    kept = min(blocks, chunks)
    host = in_flight * (blocks - kept) * block
    return in_flight * kept * block + min(block, host), host


def in_flight_microbatches(layout: Layout, rank: int, microbatches: int) -> float:
    """Micro-batches whose activations pipeline rank `rank` holds at its peak, in units of
    all the rank's layers. GPipe: all m. 1F1B and ZB-H1: pp - rank (Narayanan et al. 2021 §2.2;
    Qi et al. 2023, "Zero Bubble Pipeline Parallelism", §3: ZB-H1 keeps 1F1B's peak).
    Interleaved: Megatron-LM warms up 2·(pp - rank - 1) + (vpp - 1)·pp chunks and runs one
    more, each 1/vpp of the rank's layers: pp + (pp - 1)/vpp at rank 0 (Korthikanti et al. §4.2.3).
    DualPipe(V): PP + 1 stage-sized chunks on every rank (`dualpipe.dual_in_flight`)."""
    if layout.schedule in DUAL_SCHEDULES:
        return dual_in_flight(layout, microbatches)
    if layout.schedule == "gpipe":
        return float(microbatches)
    if layout.schedule == "interleaved":
        chunks = 2 * (layout.pp - rank - 1) + (layout.vpp - 1) * layout.pp + 1
        return min(chunks, microbatches * layout.vpp) / layout.vpp
    return float(min(layout.pp - rank, microbatches))
