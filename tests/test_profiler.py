"""`parasim profile` (runtime/profiler.py): a tiny profile, process cleanup, CLI errors.

The tables' columns are checked against profiles/README.md's format, written out here as the
oracle. Tiny grids keep the default run to a few seconds; the real `--quick` profile runs in the
slow pass (.ci/run).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from parasim.runtime import collectives_bench  # noqa: E402  (after the importorskip)
from parasim.runtime.device_info import catalog_gpu  # noqa: E402
from parasim.runtime.errors import MeasurementError  # noqa: E402
from parasim.runtime.grids import Grids, cpu_quick_grids  # noqa: E402
from parasim.runtime.profiler import prepare_out_dir, profile  # noqa: E402
from parasim.runtime.progress import Progress, bar_line  # noqa: E402
from parasim.runtime.timing import Timing  # noqa: E402
from parasim.simulator.catalog import entries  # noqa: E402
from parasim.simulator.errors import SpecError  # noqa: E402
from parasim.simulator.profile import load_profile  # noqa: E402
from tests.test_cli_errors import REPO, assert_user_error, run_cli  # noqa: E402

README_COLUMNS = {  # profiles/README.md, "Tables"
    "gemm": ["m", "n", "k", "forward_s", "backward_input_s", "backward_weight_s"],
    "attention": ["batch", "heads", "seq_length", "head_dim", "forward_s", "backward_s"],
    "elementwise": ["kernel", "elements", "forward_s", "backward_s"],
    "optimizer": ["params", "step_s"],
    "collectives": ["collective", "group_size", "bytes", "time_s"],
}
META_KEYS = {"device", "device_name", "gpu", "dtype", "torch", "driver", "host", "date",
             "threads", "quick", "repeats", "warmup", "notes"}
KERNELS = {"layernorm", "rmsnorm", "gelu", "swiglu", "rope", "softmax", "add", "copy", "embedding",
           "cross_entropy"}
TINY = Grids(gemm_m=(32, 64), gemm_n=(16, 48), gemm_k=(64,),
             attention_seq_lengths=(32, 64), attention_head_dims=(64,), attention_batch=1,
             attention_heads=2, elementwise_elements=(2**12, 2**14), row_elements=1024, vocab=256,
             optimizer_params=(2**10, 2**12), collective_group_sizes=(2,),
             collective_bytes=(2**10, 2**12))
TINY_TIMING = Timing(warmup=1, repeats=2)


def child_processes() -> list[int]:
    """Live children of this process, except multiprocessing's shared resource tracker."""
    me, found = str(os.getpid()), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == me and fields[0] != "Z" and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return found


def assert_no_children_left() -> None:
    assert multiprocessing.active_children() == []
    if Path("/proc").is_dir():
        assert child_processes() == []


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


# A tiny profile ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("profile") / "cpu-tiny"
    result = profile("cpu", None, False, out, False, grids=TINY, timing=TINY_TIMING,
                     keep_unsteady=True)  # 2 runs per entry on a shared host: may be unsteady
    assert result.out_dir == out
    return out


def test_tiny_profile_writes_every_table_in_the_readme_format(tiny_profile):
    expected_rows = {"gemm": 4, "attention": 2, "elementwise": 2 * len(KERNELS), "optimizer": 2,
                     "collectives": 10}  # 5 collectives (p2p in the group of 2) x 2 sizes
    for table, columns in README_COLUMNS.items():
        header, rows = read_table(tiny_profile / f"{table}.csv")
        assert header == columns, table
        assert len(rows) == expected_rows[table], table
        for row in rows:
            times = [float(row[c]) for c in columns if c.endswith("_s")]
            assert times and all(t > 0 for t in times), (table, row)


def test_tiny_profile_covers_the_grid(tiny_profile):
    _, gemm = read_table(tiny_profile / "gemm.csv")
    assert {(int(r["m"]), int(r["n"]), int(r["k"])) for r in gemm} == \
        {(m, n, k) for m in TINY.gemm_m for n in TINY.gemm_n for k in TINY.gemm_k}
    _, elementwise = read_table(tiny_profile / "elementwise.csv")
    assert {r["kernel"] for r in elementwise} == KERNELS
    _, attention = read_table(tiny_profile / "attention.csv")
    assert {(r["batch"], r["heads"]) for r in attention} == {("1", "2")}
    _, collectives = read_table(tiny_profile / "collectives.csv")
    assert {r["collective"] for r in collectives} == {"all_reduce", "all_gather",
                                                      "reduce_scatter", "all_to_all", "p2p"}
    assert {(r["group_size"], r["bytes"]) for r in collectives} == {("2", "1024"), ("2", "4096")}


def test_tiny_profile_meta(tiny_profile):
    meta = json.loads((tiny_profile / "meta.json").read_text(encoding="utf-8"))
    assert META_KEYS <= set(meta)
    assert (meta["device"], meta["gpu"], meta["dtype"], meta["driver"]) == \
        ("cpu", "cpu", "fp32", "cpu")
    assert (meta["warmup"], meta["repeats"], meta["quick"]) == (1, 2, False)
    assert meta["torch"] == torch.__version__
    assert any("embedding table of 256 rows" in note for note in meta["notes"])


def test_tiny_profile_loads_in_the_simulator(tiny_profile):
    db = load_profile(tiny_profile)
    assert db.gpu == "cpu" and set(db.gemm) == {"forward", "backward_input", "backward_weight"}
    assert db.collective_time("all_reduce", 2, 2048).source == "interpolated"
    assert db.optimizer_time(2**10).source == "measured"


def test_tiny_profile_leaves_no_process_behind(tiny_profile):
    assert_no_children_left()


# Collectives: the deadline stops every process -----------------------------------------------


def test_collectives_past_their_deadline_are_stopped():
    start_s = time.monotonic()
    with pytest.raises(MeasurementError, match="did not finish within"):
        collectives_bench.run_group(2, (2**20,), ("all_reduce",), "cpu", torch.float32,
                                    TINY_TIMING, timeout_s=0.3)
    assert time.monotonic() - start_s < 0.3 + 2 * collectives_bench.STOP_GRACE_S
    assert_no_children_left()


# Pieces ---------------------------------------------------------------------------------------


def test_progress_bar_text():
    assert bar_line(0.45, "gemm 512x1024x2048", 55.0) == \
        "[#########...........]  45% gemm 512x1024x2048  ~1m07s left"
    assert bar_line(0.0, "gemm", 1.0).endswith("estimating")
    assert bar_line(1.0, "done", 3725.0).endswith("done in 1h02m")


def test_progress_bar_is_silent_unless_enabled(capsys):
    for enabled in (False, True):
        bar = Progress(2.0, enabled)
        bar.advance(1.0, "half")
        bar.close("all")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "100% all" in err and "\r" in err


@pytest.mark.parametrize("name, gpu", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA H200", "h200"),
    ("Tesla V100-SXM2-32GB", "v100-32gb"),
    ("NVIDIA GeForce RTX 4090", "nvidia geforce rtx 4090"),
])
def test_cuda_device_names_map_to_the_catalog(name, gpu):
    assert catalog_gpu(name) == gpu
    if "rtx" not in name.lower():
        assert gpu in entries("gpus")


def test_out_dir_is_created_refused_when_not_empty_and_forced(tmp_path):
    out = prepare_out_dir(tmp_path / "a" / "b")
    assert out.is_dir()
    (out / "gemm.csv").write_text("m\n", encoding="utf-8")
    with pytest.raises(SpecError, match="not empty.*nothing is lost"):
        prepare_out_dir(out)
    assert prepare_out_dir(out, force=True) == out
    assert (out / "gemm.csv").read_text(encoding="utf-8") == "m\n"


def _busy_host(monkeypatch):
    """Every checked table judged as measured on a busy host (runtime.stability's verdict)."""
    from parasim.runtime import profiler
    from parasim.runtime.stability import Verdict

    def recheck(table, rows, shape, remeasure):
        return rows, Verdict(table=table, entries=len(rows), remeasured=len(rows),
                             changed=len(rows), unsteady=len(rows), worst=40.0,
                             worst_entry=f"{table} entry 1 ms, then 40 ms", out_of_order=0)
    monkeypatch.setattr(profiler, "recheck", recheck)


def test_a_busy_host_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    """Issue 17: on a busy host the profiler wrote tables up to 10,000x slow without a word.
    Refused with the numbers; the folder is not created; --force (keep_unsteady) keeps the
    tables and says so in meta.json."""
    _busy_host(monkeypatch)
    out = tmp_path / "busy"
    with pytest.raises(SpecError, match=r"profile=.*the host was too busy to profile: gemm: 4 "
                       r"of 4 entries still disagree .*up to x40: gemm entry 1 ms, then 40 "
                       r"ms.*load average .*nothing written") as err:
        profile("cpu", None, False, out, False, grids=TINY, timing=TINY_TIMING)
    assert "--force to keep these tables" in err.value.valid
    assert not out.exists()
    result = profile("cpu", None, False, out, False, grids=TINY, timing=TINY_TIMING,
                     keep_unsteady=True)
    notes = json.loads((out / "meta.json").read_text(encoding="utf-8"))["notes"]
    assert any(n.startswith("steadiness: gemm: 4 of 4 entries still disagree") for n in notes)
    assert [v.table for v in result.verdicts] == ["gemm", "attention", "elementwise",
                                                  "optimizer"]


def test_an_interrupted_profile_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    from parasim.runtime import profiler

    out = tmp_path / "kept"
    out.mkdir()
    (out / "mine.txt").write_text("keep", encoding="utf-8")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(profiler, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        profile("cpu", None, False, out, False, force=True, grids=TINY, timing=TINY_TIMING)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_quick_cpu_grid_is_small():
    grids = cpu_quick_grids()
    assert len(grids.gemm_m) * len(grids.gemm_n) * len(grids.gemm_k) <= 216
    assert max(grids.gemm_m + grids.gemm_n + grids.gemm_k) <= 2048


# The command line ------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_cuda_without_cuda(tmp_path):
    out = tmp_path / "cuda"
    assert_user_error(run_cli("profile", "--device", "cuda", "--out", out),
                      "--device", "cuda", "CUDA is not available", "valid: cpu")
    assert not out.exists()


def test_cli_out_that_is_not_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("precious", encoding="utf-8")
    assert_user_error(run_cli("profile", "--quick", "--out", tmp_path),
                      "--out", str(tmp_path), "not empty", "nothing is lost", "--force")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_cli_out_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    assert_user_error(run_cli("profile", "--quick", "--out", blocker / "profile"),
                      "--out", "cannot create", "valid")


def test_cli_unknown_dtype():
    assert_user_error(run_cli("profile", "--dtype", "fp8"), "--dtype", "fp8", "bf16")


@pytest.mark.parametrize("threads", ["0", str((os.cpu_count() or 1) + 1)])
def test_cli_threads_this_machine_has_no_cores_for(tmp_path, threads):
    assert_user_error(run_cli("profile", "--threads", threads, "--out", tmp_path / "p"),
                      f"--threads={threads}", "cores")
    assert not (tmp_path / "p").exists()  # refused before anything is written


def test_thread_count_is_set_inside_and_restored():
    from parasim.runtime.profiler import thread_count

    before = torch.get_num_threads()
    with thread_count(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_cli_without_torch(tmp_path):
    script = ("import sys; sys.modules['torch'] = None; from parasim.cli import main; "
              f"sys.exit(main(['profile', '--out', {str(tmp_path / 'p')!r}]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert_user_error(result, "--device", "the profiler needs PyTorch",
                      "pip install '.[runtime]'")


@pytest.mark.slow
def test_cli_quick_cpu_profile_end_to_end(tmp_path):
    out = tmp_path / "cpu-quick"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start_s = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "parasim", "profile", "--quick",
                             "--device", "cpu", "--out", str(out), "--force"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)  # --force:
    # a shared test host may be busy, and then the profile is refused (test_stability.py)
    elapsed_s = time.monotonic() - start_s
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed_s < 300, f"--quick took {elapsed_s:.0f} s"  # documented: about 4 minutes
    for table, columns in README_COLUMNS.items():
        header, rows = read_table(out / f"{table}.csv")
        assert header == columns and rows, table
    assert json.loads((out / "meta.json").read_text(encoding="utf-8"))["quick"] is True
    assert f"wrote {out}" in result.stdout
    db = load_profile(out)  # the simulator reads what the profiler wrote
    assert db.gemm and db.attention and db.elementwise and db.optimizer and db.collectives
    estimate = subprocess.run([sys.executable, "-m", "parasim", "estimate",
                               str(REPO / "examples/llama3-70b-dgx-h100.yaml"), "--profile",
                               str(out), "--json"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
    assert estimate.returncode == 0 and "warning" in estimate.stderr  # cpu profile, h100 job
