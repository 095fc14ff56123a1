"""simulator.files and the commands that write through it (issue 17, "lost data"): every output
is written atomically, never over an existing file without --force, and a write that fails
(read-only folder, full disk) is one line, exit status 2, with the old file intact and no
temporary file left behind."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from parasim.cli import main
from parasim.simulator import files
from parasim.simulator.errors import SpecError
from parasim.simulator.files import (
    atomic_open,
    check_new_file,
    staged_folder,
    write_bytes_atomic,
    write_text_atomic,
)
from tests.test_cli_errors import assert_user_error, job_with, run_cli, write_job


def no_space(path) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders this module would have left."""
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith("."))


# The helper ----------------------------------------------------------------------------------


def test_write_creates_and_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "out.txt"
    write_text_atomic(path, "one\n", force=False, field="--out")
    assert path.read_text() == "one\n"
    with pytest.raises(SpecError, match=r"--out=.*exists; refusing to overwrite it") as err:
        write_text_atomic(path, "two\n", force=False, field="--out")
    assert err.value.valid == "another path, or --force"
    assert path.read_text() == "one\n"
    write_bytes_atomic(path, b"three\n", force=True, field="--out")
    assert path.read_text() == "three\n" and leftovers(tmp_path) == []


def test_a_new_file_has_the_usual_permissions(tmp_path):
    path = write_text_atomic(tmp_path / "out.txt", "x", force=False, field="--out")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    path.write_text("valid\n")
    monkeypatch.setattr(files, "_sync", no_space)
    with pytest.raises(SpecError, match="--out=.*cannot write: No space left on device") as err:
        write_text_atomic(path, "half", force=True, field="--out")
    assert err.value.valid == "a writable file path"
    assert path.read_text() == "valid\n" and leftovers(tmp_path) == []


def test_an_error_while_writing_leaves_nothing(tmp_path):
    path = tmp_path / "table.csv"
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path, force=False, field="--out") as f:
            f.write("half a table")
            raise KeyboardInterrupt
    assert not path.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["missing folder", "a folder", "read-only folder"])
def test_unwritable_paths_are_one_spec_error(tmp_path, where, monkeypatch):
    path = {"missing folder": tmp_path / "no" / "x.json", "a folder": tmp_path,
            "read-only folder": tmp_path / "x.json"}[where]
    if where == "read-only folder":  # as root a chmod does not stop a write: fake the error
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.raises(SpecError, match="--trace=.*cannot write") as err:
        write_text_atomic(path, "x", force=True, field="--trace")
    assert err.value.field == "--trace" and err.value.valid == "a writable file path"


def test_a_read_only_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)
    with pytest.raises(SpecError, match=r"--png=.*cannot write: .* is read-only"):
        check_new_file(tmp_path / "a.png", force=False, field="--png")
    with pytest.raises(SpecError, match=r"--out=.*cannot write: .* is read-only") as err:
        files.check_new_folder(tmp_path / "new" / "profile", force=False, field="--out")
    assert err.value.valid == "a writable folder"


def test_check_new_file_names_the_flag(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    with pytest.raises(SpecError, match="--png=.*exists"):
        check_new_file(tmp_path / "a.png", force=False, field="--png")
    assert check_new_file(tmp_path / "a.png", force=True, field="--png") == tmp_path / "a.png"


def test_a_staged_folder_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "fitted"
    with staged_folder(out, force=False, field="--out", marker="profile.yaml") as staging:
        (staging / "residuals.csv").write_text("r\n")
        (staging / "profile.yaml").write_text("p\n")
    assert sorted(p.name for p in out.iterdir()) == ["profile.yaml", "residuals.csv"]
    failed = tmp_path / "failed"
    with pytest.raises(SpecError, match="cannot write: No space left"):
        with staged_folder(failed, force=False, field="--out") as staging:
            (staging / "profile.yaml").write_text("")
            no_space(staging)
    assert not failed.exists()  # created by the call, removed with it


def test_a_forced_staged_folder_keeps_other_files(tmp_path):
    out = tmp_path / "dir"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    (out / "meta.json").write_text("old")
    with pytest.raises(SpecError, match="not empty"):
        with staged_folder(out, force=False, field="--out"):
            pass
    with staged_folder(out, force=True, field="--out", marker="meta.json") as staging:
        (staging / "meta.json").write_text("new")
    assert (out / "mine.txt").read_text() == "keep" and (out / "meta.json").read_text() == "new"
    assert leftovers(out) == []


# The commands --------------------------------------------------------------------------------


def test_estimate_trace_refuses_an_existing_file_without_force(tmp_path):
    job = write_job(tmp_path, job_with())
    trace = tmp_path / "step.json"
    trace.write_text("mine")
    assert_user_error(run_cli("estimate", job, "--trace", trace), "--trace", "exists",
                      "--force")
    assert trace.read_text() == "mine"
    result = run_cli("estimate", job, "--trace", trace, "--force")
    assert result.returncode == 0, result.stderr
    assert json.loads(trace.read_text())["traceEvents"]


def test_topo_png_refuses_an_existing_file_without_force(tmp_path):
    job = write_job(tmp_path, job_with())
    png = tmp_path / "fabric.png"
    png.write_bytes(b"mine")
    assert_user_error(run_cli("topo", job, "--png", png), "--png", "exists", "--force")
    assert png.read_bytes() == b"mine"
    assert run_cli("topo", job, "--png", png, "--force").returncode == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_plan_out_on_a_full_disk_keeps_the_old_plan(tmp_path, monkeypatch, capsys):
    """The issue's case: a full disk replaced a valid plan with a half-written one."""
    job = write_job(tmp_path, job_with())
    plan = tmp_path / "PLAN.json"
    plan.write_text('{"valid": true}\n')
    monkeypatch.setattr(files, "_sync", no_space)
    status = main(["plan", str(job), "--out", str(plan), "--force"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "--out=" in err and "No space left on device" in err
    assert plan.read_text() == '{"valid": true}\n' and leftovers(tmp_path) == []
