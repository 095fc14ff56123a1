"""`parasim calibrate`, `estimate --profile FITTED`, the interval in `estimate --json`, plan's
ties, and `parasim validate --suite vtrain` (slow)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from parasim.cli import main
from parasim.planner.search import break_ties, headroom, search
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict
from parasim.simulator.uncertainty import ResidualBand

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
JOB = {"model": {"name": "tiny", "num_layers": 4, "hidden_size": 512, "num_attention_heads": 8,
                 "ffn_hidden_size": 2048, "vocab_size": 8192},
       "cluster": {"base": "dgx-a100", "num_nodes": 1, "gpus_per_node": 4},
       "training": {"seq_length": 512, "global_batch_size": 16, "precision": "fp16"},
       "parallel": {"tp": 1, "pp": 1, "micro_batch_size": 1}}
LAYOUTS = [(tp, pp, mb) for tp in (1, 2, 4) for pp in (1, 2) for mb in (1, 2, 4) if tp * pp <= 4]


def _runs_file(tmp_path: Path, rows: list[str] | None = None) -> Path:
    """A parasim runs file over job.yaml, 'measured' by the model with a per-op floor and a
    per-step overhead, plus 1% seeded noise."""
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(JOB))
    if rows is None:
        truth = replace(analytic_profile(), op_overhead_s=4e-5, step_overhead_s=0.01)
        rng, rows = random.Random(3), []
        for tp, pp, mb in LAYOUTS:
            raw = {**JOB, "parallel": {"tp": tp, "pp": pp, "micro_batch_size": mb}}
            job = job_from_mapping(raw, base_dir=tmp_path, source="t")
            seconds = predict(job, profile=truth).step_time_s * math.exp(rng.gauss(0, 0.01))
            rows.append(f"job.yaml,{seconds:.6g},{tp},{pp},{mb}")
    path = tmp_path / "runs.csv"
    path.write_text("\n".join(["job,step_time_s,parallel.tp,parallel.pp,"
                               "parallel.micro_batch_size", *rows]) + "\n")
    return path


def _calibrate(capsys, runs: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["calibrate", "--runs", str(runs), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("text, why", [
    ("job,time_s\njob.yaml,1.0\n", "missing column 'step_time_s'"),
    ("job,step_time_s\njob.yaml,fast\n", "must be a positive number"),
    ("job,step_time_s\njob.yaml,-0.5\n", "must be a positive number"),
    ("job,step_time_s\njob.yaml,0\n", "must be a positive number"),
    ("# GPUs,global batch\n8,16\n", "missing column"),
])
def test_bad_runs_file_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, text, why):
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(JOB))
    runs = tmp_path / "runs.csv"
    runs.write_text(text)
    code, out, err = _calibrate(capsys, runs, tmp_path / "fitted")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and why in err, err
    assert not (tmp_path / "fitted").exists()


def test_too_few_runs_is_one_line_exit_2(tmp_path, capsys):
    runs = _runs_file(tmp_path, ["job.yaml,0.1,1,1,1", "job.yaml,0.2,2,1,1", "job.yaml,0.3,1,2,1"])
    code, _, err = _calibrate(capsys, runs, tmp_path / "fitted")
    assert code == 2 and err.count("\n") == 1 and "too few" in err
    assert not (tmp_path / "fitted").exists()


def test_no_convergence_says_so_and_writes_nothing(tmp_path, capsys):
    code, _, err = _calibrate(capsys, _runs_file(tmp_path), tmp_path / "fitted",
                              "--params", "overhead.op_s,overhead.step_s",
                              "--max-evaluations", "1")
    assert code == 2 and err.count("\n") == 1 and "did not converge" in err
    assert not (tmp_path / "fitted").exists()


def test_calibrate_writes_a_profile_that_estimate_uses(tmp_path, capsys):
    out = tmp_path / "fitted"
    code, text, err = _calibrate(capsys, _runs_file(tmp_path), out,
                                 "--params", "overhead.op_s,overhead.step_s")
    assert code == 0, err
    assert "overhead.op_s" in text and "fit on the runs used" in text
    fit = yaml.safe_load((out / "profile.yaml").read_text())["fit"]
    op = next(p for p in fit["parameters"] if p["name"] == "overhead.op_s")
    assert op["ci_low"] <= 4e-5 <= op["ci_high"]
    assert len(fit["runs_sha256"]) == 64 and fit["runs_used"] == len(LAYOUTS)
    job = tmp_path / "job.yaml"
    assert main(["estimate", str(job), "--json", "--profile", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["step_time_s_low"] < data["step_time_s"] < data["step_time_s_high"]
    assert data["breakdown"]["overhead"] == pytest.approx(0.01, rel=0.2)
    assert main(["calibrate", "--runs", str(tmp_path / "runs.csv"), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err  # no overwrite without --force


def test_estimate_json_carries_the_interval(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(JOB))
    assert main(["estimate", str(job), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["step_time_s_low"] <= data["step_time_s"] <= data["step_time_s_high"]
    assert main(["estimate", str(job)]) == 0
    assert "interval" in capsys.readouterr().out


def test_plan_breaks_ties_only_on_a_calibrated_interval():
    """A wide calibrated band ties layouts; the one with the most memory headroom wins.
    The uncalibrated default never reorders the plan."""
    job = job_from_mapping({k: v for k, v in JOB.items() if k != "parallel"},
                           base_dir=Path("."), source="t")
    plain = search(job, {"micro_batch_size": 1})
    assert plain.chosen is plain.ranked[0] and "not calibrated" in plain.ties_note
    wide = replace(analytic_profile(), band=ResidualBand(log_low=-1.0, log_high=1.0, runs=9,
                                                         source="t", calibrated=True))
    result = search(job, {"micro_batch_size": 1}, profile=wide)
    assert result.tied and "headroom" in result.ties_note
    assert result.chosen is max((result.ranked[0], *result.tied), key=headroom)
    chosen, tied, _ = break_ties(result.ranked[:1], "time", wide)
    assert chosen is result.ranked[0] and not tied


@pytest.mark.slow
def test_vtrain_suite_end_to_end(tmp_path, capsys):
    """About 70 s: calibrate on the calibration half, report the test errors."""
    if not (DATA / "vtrain").is_dir():
        pytest.skip("vTrain data not found")
    out = tmp_path / "vtrain"
    assert main(["validate", "--suite", "vtrain", "--data-dir", str(DATA), "--out",
                 str(out)]) == 0
    text = capsys.readouterr().out
    for label in ("calibration error", "test error single-node", "test error multi-node"):
        assert label in text
    for name in ("README.md", "results.csv", "errors.png", "scatter.png", "facts.json",
                 "profile/profile.yaml"):
        assert (out / name).is_file(), name
    band = yaml.safe_load((REPO / "profiles" / "analytic.yaml").read_text())
    default = band["prediction_interval"]
    assert f"log_low {default['log_low']:.4f}, log_high {default['log_high']:.4f}" in text
    assert main(["validate", "--suite", "vtrain", "--render", str(out)]) == 0


def _calibration():
    from parasim.simulator.calibration.fit import Calibration, FittedParameter
    from parasim.simulator.calibration.stats import ErrorSummary

    parameter = FittedParameter(name="overhead.step_s", value=0.01, base=0.0, ci_low=0.009,
                                ci_high=0.011, status="fitted", meaning="per step")
    return Calibration(profile=analytic_profile(), parameters=(parameter,),
                       predicted_s=(1.0, 2.0), measured_s=(1.1, 1.9),
                       error=ErrorSummary.of([1.0, 2.0], [1.1, 1.9]), evaluations=3)


def test_a_fitted_profile_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """Issue 17: a full or read-only folder left an empty profile.yaml. Now the folder is
    staged and moved into place with profile.yaml last: a failed write leaves nothing, and
    an existing folder's other files stay."""
    import errno

    from parasim.simulator.calibration.fitted import load_fitted, write_fitted
    from parasim.simulator.errors import SpecError

    facts = {"command": "test", "lines": [2, 3]}
    out = tmp_path / "fitted"
    write_fitted(out, _calibration(), facts)
    assert sorted(p.name for p in out.iterdir()) == ["profile.yaml", "residuals.csv"]
    assert load_fitted(out).step_overhead_s == analytic_profile().step_overhead_s

    class FullDisk:  # the residuals' writer on a full disk
        def __init__(self, f):
            pass

        def writerow(self, row):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("parasim.simulator.calibration.fitted.csv.writer", FullDisk)
    full = tmp_path / "full"
    with pytest.raises(SpecError, match=r"--out=.*cannot write: No space left on device") as err:
        write_fitted(full, _calibration(), facts)
    assert err.value.value == str(full)  # the folder the user named, not the staging one
    assert not full.exists()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="not empty"):
        write_fitted(out, _calibration(), facts)
    with pytest.raises(SpecError, match="No space left"):
        write_fitted(out, _calibration(), facts, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "profile.yaml",
                                                     "residuals.csv"]
    assert load_fitted(out)  # the old profile.yaml is intact


def test_calibrate_into_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    from parasim.simulator import files

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkdtemp", read_only)
    monkeypatch.setattr("parasim.calibrate_cli.calibrate", lambda *a, **k: _calibration())
    code, _, err = _calibrate(capsys, _runs_file(tmp_path), tmp_path / "fitted")
    assert code == 2 and err.count("\n") == 1
    assert "--out=" in err and "Read-only file system" in err
    assert not (tmp_path / "fitted").exists()
