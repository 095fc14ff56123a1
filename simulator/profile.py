"""ProfileDB: op and collective times from a measured profile, and where each time came from.

A profile (`parasim profile`, format in profiles/README.md) holds grids of measured times.
A query on a grid point is *measured*; a query inside the grid is *interpolated*: linear in
log(time) over log(size) along every axis (multilinear in log-log space), on a grid first made
monotone (time never falls as a size grows: cumulative maxima along each axis, which removes
timing noise without inventing speed); below a table's smallest size, the time at that size
(also *interpolated*, see `LogGrid.lookup`). Anything above a table, or a table the profile
lacks, is left to the analytic roofline and labelled *analytic*.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from parasim import profiles
from parasim.simulator.errors import SpecError
from parasim.simulator.ops import Op

Source = Literal["measured", "interpolated", "analytic"]
SOURCES: tuple[Source, ...] = ("measured", "interpolated", "analytic")

TABLES = {
    "gemm.csv": ("m", "n", "k", "forward_s", "backward_input_s", "backward_weight_s"),
    "attention.csv": ("batch", "heads", "seq_length", "head_dim", "forward_s", "backward_s"),
    "elementwise.csv": ("kernel", "elements", "forward_s", "backward_s"),
    "optimizer.csv": ("params", "step_s"),
    "collectives.csv": ("collective", "group_size", "bytes", "time_s"),
}
META_KEYS = ("device", "gpu", "dtype")


@dataclass(frozen=True)
class Timed:
    """A time and where it came from."""

    seconds: float
    source: Source


class LogGrid:
    """Times on a rectangular grid of sizes, interpolated multilinearly in log-log space."""

    def __init__(self, axes: list[np.ndarray], times: np.ndarray):
        self.axes = [np.asarray(a, dtype=float) for a in axes]
        monotone = np.asarray(times, dtype=float)
        for axis in range(monotone.ndim):
            monotone = np.maximum.accumulate(monotone, axis=axis)
        self.log_axes = [np.log(a) for a in self.axes]
        self.log_times = np.log(monotone)

    @classmethod
    def from_rows(cls, keys: list[tuple[float, ...]], times: list[float], what: str) -> LogGrid:
        axes = [np.unique([k[i] for k in keys]) for i in range(len(keys[0]))]
        grid = np.full([len(a) for a in axes], np.nan)
        for key, time in zip(keys, times):
            grid[tuple(int(np.searchsorted(a, v)) for a, v in zip(axes, key))] = time
        if np.isnan(grid).any():
            missing = np.argwhere(np.isnan(grid))[0]
            point = tuple(float(a[i]) for a, i in zip(axes, missing))
            raise SpecError(f"profile.{what}", point, "the grid has a hole at this point",
                            "a full grid: every combination of the measured sizes")
        return cls(axes, grid)

    def lookup(self, point: tuple[float, ...]) -> Timed | None:
        """The time at `point`, or None above the grid (or at a size of 0).

        Below the grid's smallest size along an axis, the time at that size: an upper bound,
        since the grid's times never fall as a size grows, and a close one, because a problem
        smaller than the smallest measured is dominated by the fixed costs (launch, dispatch,
        a message's latency) that the smallest measurement already holds. (The analytic
        roofline knows nothing of these costs on the profiled device: a 4-wide MoE router GEMM
        costs it tens of milliseconds on a CPU.) Labelled interpolated: it is read from the
        grid, but not at a measured point."""
        corners: list[tuple[int, int, float]] = []
        exact = True
        for log_axis, value in zip(self.log_axes, point):
            if not value > 0:
                return None
            x = math.log(value)
            if x > log_axis[-1] + 1e-9:
                return None
            if x < log_axis[0] - 1e-9:
                x, exact = log_axis[0], False
            hi = int(np.clip(np.searchsorted(log_axis, x), 1, len(log_axis) - 1)) \
                if len(log_axis) > 1 else 0
            lo = max(hi - 1, 0)
            span = log_axis[hi] - log_axis[lo]
            weight = 0.0 if span == 0 else (x - log_axis[lo]) / span
            weight = min(max(weight, 0.0), 1.0)
            if min(abs(x - log_axis[lo]), abs(x - log_axis[hi])) > 1e-9:
                exact = False
            corners.append((lo, hi, weight))
        log_time = self._blend(corners)
        return Timed(math.exp(log_time), "measured" if exact else "interpolated")

    def _blend(self, corners: list[tuple[int, int, float]]) -> float:
        total = 0.0
        for bits in range(1 << len(corners)):
            weight, index = 1.0, []
            for axis, (lo, hi, w) in enumerate(corners):
                upper = bits >> axis & 1
                weight *= w if upper else 1 - w
                index.append(hi if upper else lo)
            if weight:
                total += weight * self.log_times[tuple(index)]
        return total


@dataclass
class ProfileDB:
    """The tables of one measured profile."""

    path: str
    meta: dict
    gemm: dict[str, LogGrid] = field(default_factory=dict)  # pass -> grid over (m, n, k)
    attention: dict[str, LogGrid] = field(default_factory=dict)  # pass -> (seq, head_dim)
    attention_batch_heads: float = 0.0  # batch·heads the attention grid was measured at
    elementwise: dict[tuple[str, str], LogGrid] = field(default_factory=dict)  # (kernel, pass)
    optimizer: LogGrid | None = None  # over params
    collectives: dict[tuple[str, int], LogGrid] = field(default_factory=dict)  # over bytes

    @property
    def gpu(self) -> str:
        return str(self.meta["gpu"])

    def op_time(self, op: Op, backward: bool) -> Timed | None:
        """The measured or interpolated time of `op` on one rank, or None (use the analytic)."""
        if op.kind == "gemm":
            return self._gemm(op, backward)
        if op.kind == "attention":
            return self._attention(op, backward)
        if op.kernel == "embedding" and backward and op.shape:
            return self._embedding_backward(op)
        grid = self.elementwise.get((op.kernel, "backward" if backward else "forward"))
        return grid.lookup((op.elements,)) if grid else None

    def _embedding_backward(self, op: Op) -> Timed | None:
        """A dense embedding backward (PyTorch's `embedding_dense_backward`, Megatron's too)
        allocates the gradient of the rank's whole table, scatter-adds the token gradients
        into it and accumulates it: a pass over the table, timed as the profile's copy of as
        many elements, plus the scatter, which moves what the forward's gather moves. The
        profile's own embedding backward is not used: it holds the pass over the profile's
        table (profiles/README.md), not the job's, and so is wrong by the ratio of the tables
        (on a CPU, 50 ms for a 8192 x 4096 table against 0.2 ms for the job's 2048 x 256)."""
        copy = self.elementwise.get(("copy", "forward"))
        gather = self.elementwise.get(("embedding", "forward"))
        rows, hidden = op.shape
        parts = [copy.lookup((rows * hidden,)) if copy else None,
                 gather.lookup((op.elements,)) if gather else None]
        if None in parts:
            return None
        return Timed(sum(p.seconds for p in parts), "interpolated")

    def _gemm(self, op: Op, backward: bool) -> Timed | None:
        m, n, k = op.shape
        if not backward:
            one = self.gemm["forward"].lookup((m, n, k))
        else:
            parts = [self.gemm["backward_input"].lookup((m, n, k)),
                     self.gemm["backward_weight"].lookup((m, n, k))]
            one = None if None in parts else Timed(
                sum(p.seconds for p in parts),
                "measured" if all(p.source == "measured" for p in parts) else "interpolated")
        if one is None or op.count == 1:
            return one
        return Timed(one.seconds * op.count, "interpolated")  # batched/grouped: per instance

    def gemm_weight_time(self, op: Op) -> Timed | None:
        """The weight-gradient GEMM alone (ZB-H1's W pass)."""
        one = self.gemm["backward_weight"].lookup(op.shape)
        if one is None or op.count == 1:
            return one
        return Timed(one.seconds * op.count, "interpolated")

    def _attention(self, op: Op, backward: bool) -> Timed | None:
        """Causal attention scales with batch·heads (the grid's at one batch·heads) and, under
        context parallelism, with the share s_q/s of the queries a rank holds."""
        grid = self.attention.get("backward" if backward else "forward")
        batch, heads, s_q, s_kv, dqk, _dv = op.shape
        found = grid.lookup((s_kv, dqk)) if grid else None
        if found is None:
            return None
        scale = batch * heads / self.attention_batch_heads * s_q / s_kv
        source = found.source if scale == 1 else "interpolated"
        return Timed(found.seconds * scale, source)

    def optimizer_time(self, params: float) -> Timed | None:
        return self.optimizer.lookup((params,)) if self.optimizer and params > 0 else None

    def collective_time(self, kind: str, group_size: int, size_bytes: float) -> Timed | None:
        grid = self.collectives.get((kind, group_size))
        return grid.lookup((size_bytes,)) if grid else None


# Loading -------------------------------------------------------------------------------------


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SpecError("--profile", str(path), f"cannot read: {err}", "a CSV table") from None
    missing = [c for c in columns if not rows or c not in rows[0]]
    if missing:
        raise SpecError("--profile", str(path), f"missing column {missing[0]!r}" if rows
                        else "has no rows", ", ".join(columns))
    return rows


def _number(row: dict[str, str], column: str, path: Path, line: int) -> float:
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SpecError(f"--profile {path.name}:{line}.{column}", row.get(column),
                        "must be a positive number", "seconds or sizes > 0")
    return value


def _grids(path: Path, keys: tuple[str, ...], passes: tuple[str, ...],
           groups: tuple[str, ...] = ()) -> dict[tuple, LogGrid]:
    """A grid of each pass column over the key columns, one per value of the `groups`
    columns; keyed (*group values, pass name without _s)."""
    rows = _read_csv(path, TABLES[path.name])
    by_label: dict[tuple, list[tuple[tuple[float, ...], dict[str, float]]]] = {}
    for line, row in enumerate(rows, start=2):
        label = tuple(int(_number(row, g, path, line)) if g == "group_size" else row[g]
                      for g in groups)
        key = tuple(_number(row, c, path, line) for c in keys)
        by_label.setdefault(label, []).append(
            (key, {p: _number(row, p, path, line) for p in passes}))
    out = {}
    for label, entries in by_label.items():
        for p in passes:
            where = f"{path.name}[{', '.join(map(str, label))}]" if label else path.name
            out[(*label, p.removesuffix("_s"))] = LogGrid.from_rows(
                [e[0] for e in entries], [e[1][p] for e in entries], where)
    return out


def load_profile(path: Path) -> ProfileDB:
    """Read and check a profile folder (SpecError naming the file and field if malformed)."""
    meta_path = path / "meta.json"
    if not path.is_dir():
        raise SpecError("--profile", str(path), "is not a profile folder",
                        "a folder written by `parasim profile` (profiles/measured/NAME)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SpecError("--profile", str(meta_path), f"cannot read: {err}",
                        "a meta.json written by `parasim profile`") from None
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise SpecError("--profile", str(meta_path), f"missing key {missing[0]!r}",
                        ", ".join(META_KEYS))
    if not (path / "gemm.csv").exists():
        raise SpecError("--profile", str(path), "has no gemm.csv", "; ".join(TABLES))
    db = ProfileDB(path=str(path), meta=meta)
    grids = _grids(path / "gemm.csv", ("m", "n", "k"),
                   ("forward_s", "backward_input_s", "backward_weight_s"))
    db.gemm = {name: grid for (name,), grid in grids.items()}
    _load_optional(db, path)
    return db


def _load_optional(db: ProfileDB, path: Path) -> None:
    if (path / "attention.csv").exists():
        rows = _read_csv(path / "attention.csv", TABLES["attention.csv"])
        sizes = {(r["batch"], r["heads"]) for r in rows}
        if len(sizes) != 1:
            raise SpecError("--profile", str(path / "attention.csv"),
                            "mixes several batch·heads", "one batch and heads for every row")
        batch, heads = sizes.pop()
        db.attention_batch_heads = float(batch) * float(heads)
        grids = _grids(path / "attention.csv", ("seq_length", "head_dim"),
                       ("forward_s", "backward_s"))
        db.attention = {name: grid for (name,), grid in grids.items()}
    if (path / "elementwise.csv").exists():
        db.elementwise = _grids(path / "elementwise.csv", ("elements",),
                                ("forward_s", "backward_s"), ("kernel",))
    if (path / "optimizer.csv").exists():
        db.optimizer = _grids(path / "optimizer.csv", ("params",), ("step_s",))[("step",)]
    if (path / "collectives.csv").exists():
        grids = _grids(path / "collectives.csv", ("bytes",), ("time_s",),
                       ("collective", "group_size"))
        db.collectives = {(kind, size): g for (kind, size, _time), g in grids.items()}


def resolve_profile(name: str) -> Path:
    """A profile by path, or by name under the user's measured/ folder ($PARASIM_HOME or
    ~/.parasim, where `parasim profile` writes) or the ones shipped with parasim."""
    direct = Path(name)
    if direct.is_dir():
        return direct
    for folder in profiles.locations("measured"):
        if (folder / name).is_dir():
            return folder / name
    known = sorted({p.name for folder in profiles.locations("measured")
                    for p in folder.glob("*") if p.is_dir()})
    raise SpecError("--profile", name, "no such profile folder",
                    "a path, or one of " + (", ".join(known) if known else
                                            f"the profiles in {profiles.home() / 'measured'} "
                                            "(none yet: `parasim profile` writes them)"))


@lru_cache(maxsize=8)
def profile_db(name: str) -> ProfileDB:
    return load_profile(resolve_profile(name))


def mismatches(db: ProfileDB, gpus: set[str], precision: str) -> list[str]:
    """Why a profile may not describe a job: another device or another precision."""
    out = []
    if db.gpu not in gpus:
        out.append(f"profile {db.path} was measured on {db.gpu}, the job runs on "
                   f"{', '.join(sorted(gpus))}")
    if db.meta["dtype"] != precision:
        out.append(f"profile {db.path} was measured in {db.meta['dtype']}, the job trains in "
                   f"{precision}")
    return out
