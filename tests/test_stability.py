"""runtime.stability: a busy host is found from the profile's own timings (issue 17).

Synthetic GEMM tables stand in for measurements: time proportional to m·n·k on a steady host;
the oracle is which entries a busy spell made slow, and whether they come back fast."""

from __future__ import annotations

import itertools

import pytest

from parasim.runtime.stability import (
    AGREEMENT,
    ROUNDS,
    SHAPES,
    order_breaks,
    recheck,
    SPREAD,
    suspects,
)

SIZES = (64, 128, 256, 512)
GEMM = SHAPES["gemm"]


def steady(m: int, n: int, k: int) -> dict:
    seconds = 1e-10 * m * n * k + 1e-6
    return {"m": m, "n": n, "k": k, "forward_s": seconds, "backward_input_s": seconds,
            "backward_weight_s": seconds, SPREAD: 1.05}


def table() -> list[dict]:
    return [steady(m, n, k) for m, n, k in itertools.product(SIZES, SIZES, SIZES)]


def slowed(row: dict, factor: float) -> dict:
    return {**row, **{c: row[c] * factor for c in GEMM.times}}


def test_a_steady_table_has_no_suspects():
    rows = table()
    assert order_breaks(rows, GEMM) == [] and suspects(rows, GEMM) == []
    out, verdict = recheck("gemm", rows, GEMM, lambda i: pytest.fail("nothing to measure"))
    assert out == rows and verdict.steady and not verdict.refused and verdict.remeasured == 0


def test_a_slow_small_gemm_is_out_of_order_and_measured_again():
    """A busy spell makes 128x128x128 100x slow: bigger neighbours are now faster, it is
    measured again, comes back fast, and the table is steady (the fast one kept)."""
    rows = table()
    index = rows.index(steady(128, 128, 128))
    rows[index] = slowed(rows[index], 100)
    breaks = order_breaks(rows, GEMM)
    assert {(b.smaller, b.column) for b in breaks} >= {(index, "forward_s")}
    assert index in suspects(rows, GEMM)
    calls = []

    def again(i: int) -> dict:
        calls.append(i)
        return steady(rows[i]["m"], rows[i]["n"], rows[i]["k"])

    out, verdict = recheck("gemm", rows, GEMM, again)
    assert index in calls
    assert out[index]["forward_s"] == steady(128, 128, 128)["forward_s"]
    assert verdict.steady and not verdict.refused and verdict.changed == 1
    assert order_breaks(out, GEMM) == []


def test_a_host_busy_throughout_is_refused_with_the_numbers():
    """A third of the cells slow (10-1000x) every time they are measured, by a different
    amount each time: unsteady, and refused."""
    rows = table()
    busy = set(range(0, len(rows), 3))
    factors = itertools.cycle([10.0, 1000.0, 50.0, 300.0])
    for i in busy:
        rows[i] = slowed(rows[i], next(factors))

    def again(i: int) -> dict:
        good = steady(rows[i]["m"], rows[i]["n"], rows[i]["k"])
        return slowed(good, next(factors)) if i in busy else good

    out, verdict = recheck("gemm", rows, GEMM, again)
    assert verdict.refused and verdict.unsteady > 0.05 * len(rows) and verdict.worst > 3
    line = verdict.line()
    assert line.startswith(f"gemm: {verdict.unsteady} of {len(rows)} entries still disagree "
                           f"after measuring them {ROUNDS + 1} times (up to x")
    assert " ms, then " in line


def test_a_slow_shape_that_reproduces_is_kept_as_measured():
    """A shape that is slow every time (a BLAS heuristic, not the host) is settled on its
    first retry and kept; the table is not refused, and says so."""
    rows = table()
    index = rows.index(steady(64, 512, 64))
    rows[index] = slowed(rows[index], 4)

    def again(i: int) -> dict:
        return dict(rows[i])  # the same medians again

    out, verdict = recheck("gemm", rows, GEMM, again)
    assert out[index] == rows[index] and verdict.steady and not verdict.refused
    assert verdict.out_of_order > 0 and "kept as measured (they reproduced)" in verdict.line()


def test_a_wide_spread_is_a_suspect_even_in_order():
    rows = table()
    rows[5] = {**rows[5], SPREAD: 2 * 2.0}
    assert suspects(rows, GEMM) == [5]
    out, verdict = recheck("gemm", rows, GEMM, lambda i: {**rows[i], SPREAD: 1.1})
    assert verdict.steady and out[5][SPREAD] == 1.1


def test_a_task_of_several_rows_is_not_measured_again():
    rows = table()
    rows[10] = slowed(rows[10], 100)
    out, verdict = recheck("gemm", rows, GEMM, lambda i: None)
    assert verdict.steady and verdict.remeasured == 0  # nothing could be checked


def test_spread_is_the_quartile_ratio():
    pytest.importorskip("torch")
    from parasim.runtime.timing import spread_of

    assert spread_of([1.0]) == 1.0
    assert spread_of([1.0, 1.0, 1.0, 1.0, 1.0]) == 1.0
    assert spread_of([1.0, 1.0, 2.0, 3.0, 3.0]) == pytest.approx(3.0)
    assert AGREEMENT > 1
