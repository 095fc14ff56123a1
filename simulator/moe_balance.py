"""Expert load imbalance of a mixture-of-experts layer: how much slower than balanced routing.

Router skew. Expert popularity follows a Zipf law with exponent `router_skew`: the expert of
popularity rank r (1-based) gets probability proportional to r^-skew (0 = uniform). The Zipf
shape is our modelling assumption, a one-parameter stand-in for measured routing histograms;
we take skews of about 0.2-1.2 as typical of trained routers, even with a load-balancing
loss (Fedus et al. 2021, "Switch Transformers", §2.2, on why balance must be enforced). Popularity
ranks are laid over the experts by a seeded random permutation, and every token picks k
distinct experts from those probabilities (Gumbel top-k sampling without replacement, Kool et
al. 2019; numpy.random.default_rng(seed) throughout), so as with a real top-k router an expert
takes at most one slot per token: at most num_experts/k times the mean.

Expert parallelism. Experts are placed on EP ranks contiguously, expert e on rank
e // (num_experts / ep), as Megatron-Core does (`MoELayer` local expert indices,
`local_expert_indices_offset = ep_rank * num_local_experts`). The all-to-all makes every rank
wait for the busiest one, so the busiest rank's load sets the pace of the expert GEMMs.

Capacity. With a capacity factor c each expert takes at most
capacity = ceil(c · tokens · k / num_experts) slots and the excess is dropped (GShard,
Lepikhin et al. 2020, §2.2; Switch Transformer, Fedus et al. 2021, §2.2; Megatron-Core
`get_capacity`). We model Megatron's drop-and-pad mode (`moe_pad_expert_input_to_capacity`):
every expert then processes exactly `capacity` slots, padded, so every EP rank carries
capacity · num_experts/ep slots whatever the routing, and
pace_factor = capacity · (num_experts/ep) / (tokens·k/ep) ≈ c. A capacity factor above 1 thus
costs padding and buys nothing in speed; below 1 it runs faster than the balanced share
(pace < 1) by dropping tokens. Without a capacity factor (dropless, e.g. Megatron's grouped
GEMM with token dropping off) pace_factor = busiest rank's slots / balanced share >= 1.

`simulator.ops.ffn_ops` already pads the expert slots by the capacity factor, so the step
model scales those ops by pace_factor / capacity_factor (the imbalance alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from parasim.simulator.errors import SpecError

MAX_ROUTER_SKEW = 3.0  # Zipf exponents above this put nearly all slots on one expert


@dataclass(frozen=True)
class ExpertLoad:
    """Load imbalance of one MoE layer, all as ratios (dimensionless)."""

    pace_factor: float  # busiest EP rank's slots (padded to capacity if any) / (total slots / ep)
    dropped_fraction: float  # share of routed slots dropped by the capacity cap; 0 when dropless
    busiest_expert_factor: float  # busiest expert's slots / mean expert slots, before capping


def _check_router_skew(router_skew: object) -> float:
    """router_skew must be a number in [0, MAX_ROUTER_SKEW]."""
    valid = f"a number in 0..{MAX_ROUTER_SKEW:g} (0 = uniform; measured routers are ~0.2-1.2)"
    if isinstance(router_skew, bool) or not isinstance(router_skew, (int, float)):
        raise SpecError("model.router_skew", router_skew, "must be a number", valid)
    if not 0.0 <= router_skew <= MAX_ROUTER_SKEW:  # also rejects NaN
        raise SpecError("model.router_skew", router_skew, "out of range", valid)
    return float(router_skew)


def zipf_probabilities(num_experts: int, router_skew: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Routing probability of each expert: Zipf(router_skew) over a random permutation."""
    weights = np.arange(1, num_experts + 1, dtype=float) ** -router_skew
    probabilities = weights / weights.sum()
    return probabilities[rng.permutation(num_experts)]


def expert_capacity(num_experts: int, experts_per_token: int, tokens: int,
                    capacity_factor: float) -> int:
    """Slots one expert may take: ceil(c · tokens · k / num_experts) (Megatron-Core
    `moe_utils.get_capacity`, GShard §2.2)."""
    return math.ceil(capacity_factor * tokens * experts_per_token / num_experts)


def _top_k_loads(tokens: int, k: int, probabilities: np.ndarray, rng: np.random.Generator
                 ) -> np.ndarray:
    """Slots per expert when every token picks k distinct experts with these probabilities
    (Gumbel top-k: sampling k without replacement, Kool et al. 2019), so no expert takes more
    than one slot per token, as a real top-k router cannot."""
    if k == 1:
        return rng.multinomial(tokens, probabilities)
    uniform = rng.random((tokens, len(probabilities)), dtype=np.float32)
    gumbel = -np.log(-np.log(np.maximum(uniform, np.float32(1e-12))))
    scores = np.log(probabilities).astype(np.float32)[None, :] + gumbel
    chosen = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.bincount(chosen.ravel(), minlength=len(probabilities))


@lru_cache(maxsize=256)
def _sampled_loads(num_experts: int, experts_per_token: int, tokens: int, skew: float,
                   seed: int) -> np.ndarray:
    """Slots per expert of one seeded routing sample: shared by every ep and capacity factor
    that `expert_load` is asked about for the same tokens (the sampling is most of its time)."""
    rng = np.random.default_rng(seed)
    loads = _top_k_loads(tokens, experts_per_token, zipf_probabilities(num_experts, skew, rng),
                         rng)
    loads.setflags(write=False)
    return loads


@lru_cache(maxsize=4096)
def expert_load(num_experts: int, experts_per_token: int, ep: int, tokens: int, router_skew: float,
                capacity_factor: float | None, seed: int = 0) -> ExpertLoad:
    """Pace, dropped share and busiest-expert factor of `tokens` tokens routed top-k over
    `num_experts` experts on `ep` expert-parallel ranks (see the module docstring)."""
    skew = _check_router_skew(router_skew)
    assert 1 <= experts_per_token <= num_experts, (num_experts, experts_per_token)
    assert ep >= 1 and num_experts % ep == 0, (num_experts, ep)
    assert tokens >= 1, tokens
    assert capacity_factor is None or capacity_factor > 0, capacity_factor

    total = tokens * experts_per_token
    loads = _sampled_loads(num_experts, experts_per_token, tokens, skew, seed)
    busiest_expert = float(loads.max()) / (total / num_experts)
    balanced_share = total / ep
    local = num_experts // ep

    if capacity_factor is None:
        rank_loads = loads.reshape(ep, local).sum(axis=1)  # contiguous placement
        return ExpertLoad(float(rank_loads.max()) / balanced_share, 0.0, busiest_expert)

    capacity = expert_capacity(num_experts, experts_per_token, tokens, capacity_factor)
    dropped = float(np.maximum(loads - capacity, 0).sum()) / total
    # Drop-and-pad: every expert computes exactly `capacity` slots, so every rank is as busy.
    return ExpertLoad(capacity * local / balanced_share, dropped, busiest_expert)
