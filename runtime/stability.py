"""Was the host steady while it was profiled? The spread and the size order of a table's times.

A busy host (another process taking the cores for a while) makes some entries of a profile
many times slower than the op is: on one shared VM 293 of 648 GEMM cells came out more than
10x slow, with nothing said. Two witnesses come from the measurements themselves:

- spread: the upper over the lower quartile of an entry's timed runs (`timing.Timed`); a
  steady host gives about 1.0-1.3, above SPREAD_LIMIT the runs disagree with each other;
- size order: an op on more data is not faster. A GEMM with a larger m, n or k (the other
  two equal), attention over a longer sequence or wider heads, an elementwise kernel over
  more elements, an optimizer step over more parameters: a neighbour in size that is faster
  by more than ORDER_TOLERANCE is out of order.

Every suspect entry (too wide a spread, or either end of an order break) is measured again,
up to ROUNDS times, keeping the faster median each time (a busy host only adds time). One
whose medians agree within AGREEMENT is settled: a real effect (some shapes are slow in some
BLAS builds, and stay slow). One that is still suspect and never measured the same twice is
unsteady: the host was busy throughout. A table is refused when more than REFUSE_SHARE of its
entries are unsteady or one's last two medians differ by more than REFUSE_FACTOR; fewer are a
warning. Collectives are not checked: they run in several processes
and small messages time bimodally on a shared host (`collectives_bench`).

Pure Python (no torch): the profiler passes the re-measuring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SPREAD = "spread"  # a measured row's key (not a table column): its timings' largest spread
SPREAD_LIMIT = 2.0  # upper / lower quartile of an entry's runs beyond which they disagree
ORDER_TOLERANCE = 1.5  # how much faster a bigger neighbour may be (timer and cache noise)
AGREEMENT = 1.5  # two medians of one entry within this factor agree
REFUSE_SHARE = 0.05  # more unsteady entries than this share of a table: refused
REFUSE_FACTOR = 3.0  # ... or one entry's two medians this far apart

Row = dict


@dataclass(frozen=True)
class TableShape:
    """Which columns of a table are sizes, which must match to compare, which are times."""

    sizes: tuple[str, ...]  # more of any one of them (the others equal) is more work
    same: tuple[str, ...]  # columns two compared rows share (kernel, batch, heads)
    times: tuple[str, ...]  # seconds


SHAPES = {
    "gemm": TableShape(("m", "n", "k"), (), ("forward_s", "backward_input_s",
                                               "backward_weight_s")),
    "attention": TableShape(("seq_length", "head_dim"), ("batch", "heads"),
                            ("forward_s", "backward_s")),
    "elementwise": TableShape(("elements",), ("kernel",), ("forward_s", "backward_s")),
    "optimizer": TableShape(("params",), (), ("step_s",)),
}


@dataclass(frozen=True)
class OrderBreak:
    """A bigger entry faster than its smaller neighbour."""

    smaller: int  # row index
    bigger: int
    column: str
    factor: float  # smaller's time / bigger's time (> ORDER_TOLERANCE)


def order_breaks(rows: list[Row], shape: TableShape) -> list[OrderBreak]:
    """Every pair of neighbours in one size (the other sizes and `same` equal) whose bigger
    entry is faster by more than ORDER_TOLERANCE."""
    found = []
    for axis in shape.sizes:
        fixed = [c for c in shape.sizes + shape.same if c != axis]
        lines: dict[tuple, list[int]] = {}
        for index, row in enumerate(rows):
            lines.setdefault(tuple(row[c] for c in fixed), []).append(index)
        for line in lines.values():
            line.sort(key=lambda i: rows[i][axis])
            for small, big in zip(line, line[1:]):
                for column in shape.times:
                    factor = _ratio(rows[small][column], rows[big][column])
                    if factor > ORDER_TOLERANCE:
                        found.append(OrderBreak(small, big, column, factor))
    return found


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def suspects(rows: list[Row], shape: TableShape) -> list[int]:
    """Row indices to measure again: a spread above SPREAD_LIMIT, or an end of an order
    break."""
    found = {i for i, row in enumerate(rows) if row.get(SPREAD, 1.0) > SPREAD_LIMIT}
    for gap in order_breaks(rows, shape):
        found.update((gap.smaller, gap.bigger))
    return sorted(found)


@dataclass(frozen=True)
class Verdict:
    """How steady one table's measurements were."""

    table: str
    entries: int
    remeasured: int  # entries measured again (some more than once)
    changed: int  # of those, entries whose medians moved by more than AGREEMENT at least once
    unsteady: int  # entries still suspect after ROUNDS that never measured the same twice
    worst: float  # the largest disagreement of an unsteady entry's last two medians (1.0: none)
    worst_entry: str  # which entry, with those two medians
    out_of_order: int  # order breaks left, between entries that reproduced (kept as measured)

    @property
    def refused(self) -> bool:
        return self.unsteady > REFUSE_SHARE * self.entries or self.worst > REFUSE_FACTOR

    @property
    def steady(self) -> bool:
        return self.unsteady == 0

    def line(self) -> str:
        """`gemm: 12 of 216 entries still disagree after measuring them again (up to x9.8:
        gemm 512x512x512 forward_s 7.9 ms, then 0.81 ms)`, and what was measured again."""
        if self.unsteady:
            text = (f"{self.table}: {self.unsteady} of {self.entries} entries still disagree "
                    f"after measuring them {ROUNDS + 1} times (up to x{self.worst:.3g}: "
                    f"{self.worst_entry})")
        else:
            text = f"{self.table}: {self.entries} entries steady"
        if self.changed:
            text += (f"; {self.changed} measured again moved by more than x{AGREEMENT:g} "
                     "(the faster kept)")
        if self.out_of_order:
            text += (f"; {self.out_of_order} pairs of sizes out of order kept as measured "
                     "(they reproduced)")
        return text


ROUNDS = 2  # times a suspect entry is measured again at most


def recheck(table: str, rows: list[Row], shape: TableShape,
            remeasure: Callable[[int], Row | None]) -> tuple[list[Row], Verdict]:
    """Measure the suspects again, up to ROUNDS times (`remeasure(index)`: the row anew, or
    None when it cannot be), keeping the faster of each time; an entry whose medians agree
    twice running is settled. The rows and the table's verdict."""
    rows = list(rows)
    settled: set[int] = set()
    last: dict[int, tuple[float, str]] = {}  # index -> (disagreement, what) of its last retry
    changed: set[int] = set()
    for _ in range(ROUNDS):
        todo = [i for i in suspects(rows, shape) if i not in settled]
        for index in todo:
            again = remeasure(index)
            if again is None:
                settled.add(index)
                continue
            first = rows[index]
            factor, column = max((_disagreement(first[c], again[c]), c) for c in shape.times)
            last[index] = (factor, f"{entry_name(table, first, shape)} {column} "
                                   f"{_ms(first[column])}, then {_ms(again[column])}")
            if factor > AGREEMENT:
                changed.add(index)
            else:
                settled.add(index)
            rows[index] = _faster(first, again, shape)
    unsteady = [i for i in suspects(rows, shape) if i not in settled and i in last]
    worst, worst_entry = max((last[i] for i in unsteady), default=(1.0, ""))
    left = [gap for gap in order_breaks(rows, shape)
            if gap.smaller not in unsteady and gap.bigger not in unsteady]
    return rows, Verdict(table=table, entries=len(rows), remeasured=len(last),
                         changed=len(changed), unsteady=len(unsteady), worst=worst,
                         worst_entry=worst_entry, out_of_order=len(left))


def _disagreement(a: float, b: float) -> float:
    low, high = sorted((a, b))
    return _ratio(high, low)


def _faster(first: Row, again: Row, shape: TableShape) -> Row:
    """Each time the faster of two measurements (a busy host only adds time), the smaller
    spread."""
    row = {**first, **{c: min(first[c], again[c]) for c in shape.times}}
    row[SPREAD] = min(first.get(SPREAD, 1.0), again.get(SPREAD, 1.0))
    return row


def entry_name(table: str, row: Row, shape: TableShape) -> str:
    """`gemm 512x512x1024`, `elementwise rmsnorm 1048576`."""
    return f"{table} " + " ".join(str(row[c]) for c in shape.same) \
        + (" " if shape.same else "") + "x".join(str(row[c]) for c in shape.sizes)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"
