"""Bad and adversarial input to every command: exit status 2, one line, no traceback, no file
touched (issue 17).

Every case runs `parasim.cli.main` in-process (a few through the real console entry in a
subprocess) inside an empty temporary folder that is also the working folder and
$PARASIM_HOME, with the input files the case writes there. Before and after, every file under
it is listed with its size and sha256: a case passes only if the command exited with status 2,
wrote exactly one line on stderr, no "Traceback", and left the folder as it was.

The inputs cover both file kinds a user hands in (job files and plan files) and the others the
commands read (suite files, runs CSVs, fitted profiles), every numeric field with NaN,
infinities, negatives, zero, text and huge values, and every numeric flag.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from parasim import profiles
from parasim.cli import main
from parasim.simulator.yamlfile import load_data
from tests.test_cli_errors import DELETE, job_with

REPO = Path(__file__).resolve().parents[1]
NAN, INF = math.nan, math.inf

BASE_JOB: dict[str, Any] = {
    "model": {"num_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "num_kv_heads": 4,
              "ffn_hidden_size": 1536, "vocab_size": 32000},
    "cluster": {"gpu": "h100-sxm", "num_nodes": 2, "gpus_per_node": 8},
    "training": {"seq_length": 1024, "global_batch_size": 64},
    "parallel": {"tp": 2, "pp": 2},
}
MOE_MODEL = {**BASE_JOB["model"], "num_experts": 4, "experts_per_token": 2,
             "moe_ffn_hidden_size": 768}
# Every degree fixed: `plan` searches one layout (a quick valid plan file for the run cases).
FIXED_PARALLEL = {"tp": 2, "pp": 2, "cp": 1, "ep": 1, "vpp": 1, "micro_batch_size": 1,
                  "schedule": "1f1b", "zero_stage": 1, "recompute": "none"}
PROFILE_YAML = (profiles.path("analytic.yaml")).read_text(encoding="utf-8")
VTRAIN_HEADER = ("# GPUs,global batch,micro batch,hidden size,attention heads,# layers,"
                 "sequence length,tensor parallelism,data parallelism,pipeline parallelism,"
                 "iteration time (ms)")
def job(changes: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> dict:
    """A copy of `base` (this corpus's BASE_JOB) with dotted keys set (or removed with
    DELETE): `tests.test_cli_errors.job_with` on this file's base."""
    return job_with(changes, BASE_JOB if base is None else base)


def unlaid(changes: dict[str, Any] | None = None) -> dict:
    """The base job without `parallel:` (what `plan` searches), with changes."""
    return job(changes, {k: v for k, v in BASE_JOB.items() if k != "parallel"})


def suite(jobs: list, **sections) -> dict:
    return {"models": {"tiny": BASE_JOB["model"]},
            "training": {"seq_length": 512, "global_batch_size": 8, "precision": "fp32"},
            "jobs": jobs, **sections}


def fitted(change: Callable[[dict], None]) -> str:
    """analytic.yaml's layout with one change: a malformed fitted profile's profile.yaml."""
    data = load_data(PROFILE_YAML)  # parasim's reading: 2.0e9 is a number
    change(data)
    return yaml.safe_dump(data)


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    return change


@dataclass(frozen=True)
class Case:
    """argv, and the files (relative path -> text, bytes, a mapping written as YAML or JSON,
    or a callable of the valid plan document) the case writes first."""

    argv: tuple[str, ...]
    files: dict[str, Any] = field(default_factory=dict)
    expect: str = ""  # a fragment the error line must hold (the field or the reason)


def case(*argv: str, expect: str = "", **files: Any) -> Case:
    """`files` by name: `job_yaml=...` is written as job.yaml (a double underscore is a
    folder: `fit__profile_yaml` -> fit/profile.yaml)."""
    named = {}
    for key, value in files.items():
        stem, _, ext = key.rpartition("_")
        named[stem.replace("__", "/") + "." + ext] = value
    return Case(tuple(argv), named, expect)


def estimate(changes: dict[str, Any], *flags: str, base: dict | None = None,
             expect: str = "") -> Case:
    return case("estimate", "job.yaml", *flags, job_yaml=job(changes, base), expect=expect)


# The corpus ---------------------------------------------------------------------------------

JOB_FIELDS = {  # job-file field -> bad values (estimate on the base job)
    "model.num_layers": [0, -3, 2**41, "four", 4.5, NAN, True, [4]],
    "model.hidden_size": [NAN, INF, -512, 0, 10**60, {"a": 1}],
    "model.num_attention_heads": [0, 7],
    "model.vocab_size": [INF],
    "model.num_kv_heads": [3],
    "model.activation": [["swiglu"], "relu"],
    "cluster.num_nodes": [0, -1, 1.5, NAN, "two", 2**40],
    "cluster.gpus_per_node": [0, NAN, [8]],
    "cluster.intra_node": [5],
    "cluster.intra_node.latency_us": [NAN, INF, -1, "fast", 1e300],
    "cluster.intra_node.bandwidth_GBps": [NAN, 0, -450],
    "cluster.inter_node.bandwidth_Gbps": [NAN, INF, 0, -5],
    "cluster.inter_node.latency_us": [NAN, -8],
    "cluster.inter_node.nics_per_node": [0, 1.5, NAN],
    "cluster.inter_node.ports": [4],
    "cluster.price_per_gpu_hour": [NAN, INF, -1, 0],
    "cluster.reserved_price_per_gpu_hour": [NAN],
    "cluster.power_watts": [NAN, -700],
    "cluster.pue": [NAN, INF, 0.5, 100],
    "cluster.node_mtbf_hours": [NAN, INF, 0, -1],
    "cluster.gpu_mtbf_hours": [NAN, 0],
    "cluster.checkpoint_write_GBps_per_node": [INF, 0],
    "cluster.restart_minutes": [NAN, -1],
    "cluster.grid_gco2_per_kwh": [INF, -1],
    "cluster.reserved_discount": [NAN, 1.5, -0.1],
    "cluster.spare_nodes": [-1, 1.5, NAN],
    "cluster.repair_hours": [NAN, 0],
    "cluster.host_power_watts_per_gpu": [NAN],
    "cluster.network_power_watts_per_nic": [INF],
    "cluster.pricing": ["free", ["on-demand"]],
    "cluster.oversubscription": [NAN, 0.5, [1, 2, 3], "x", [NAN]],
    "cluster.straggler_slowdown": [NAN, 0.5, 1000],
    "cluster.switch_radix": [2, NAN],
    "cluster.topology": [["fat-tree"], "ring"],
    "cluster.graph": [5],
    "cluster.base": [["dgx-h100"], "dgx-h10"],
    "cluster.gpu": [["h100-sxm"], "h100-sx", 5, {"base": "h100-sxm", "nvlink_GBps": NAN},
                    {"base": "h100-sxm", "memory_GiB": INF},
                    {"base": "h100-sxm", "idle_watts": 5000}, {"base": ["h100-sxm"]},
                    {"base": "h100-sxm", "memory_GiB": 1e300}],
    "cluster.node_groups": [[], 5, [{"base": "dgx-h100", "num_nodes": NAN}],
                            [{"base": "dgx-h100", "num_nodes": 1, "colour": "red"}],
                            [{"base": ["dgx-h100"], "num_nodes": 1}]],
    "training.seq_length": [0, NAN, "long", 1.5],
    "training.global_batch_size": [2**21, 0, INF],
    "training.tokens": [NAN, INF, -1, 0, 1e30, "lots"],
    "training.precision": [["bf16"], "fp64"],
    "training.checkpoint_interval_steps": [0, NAN],
    "parallel.tp": [NAN, 0, 6, "two", [2]],
    "parallel.pp": [3, -2],
    "parallel.dp": [3, 0],
    "parallel.micro_batch_size": [NAN, 0],
    "parallel.zero_stage": [4, NAN, -1],
    "parallel.schedule": ["fast", ["1f1b"]],
    "parallel.recompute": ["some"],
    "parallel.stages": [[1, 2], "x", [NAN, 2], [0, 4]],
    "parallel.order": [5, "tp-pp"],
    "parallel.vpp": [2, NAN],
    "parallel.sequence_parallel": ["yes"],
}

CASES: dict[str, Case] = {}
for key, values in JOB_FIELDS.items():
    for i, value in enumerate(values):
        CASES[f"job {key}={value!r}"[:80] + f" #{i}"] = estimate(
            {key: value}, expect=key.rsplit(".", 1)[-1])

CASES.update({
    # the job file as a whole
    "job: empty file": case("estimate", "job.yaml", job_yaml=""),
    "job: a list": case("estimate", "job.yaml", job_yaml="[1, 2]\n"),
    "job: malformed YAML": case("estimate", "job.yaml", job_yaml="model: [llama3-8b\n"),
    "job: a 5000-digit number": case("estimate", "job.yaml",
                                     job_yaml="model: {num_layers: " + "9" * 5000 + "}\n"),
    "job: an impossible date": case("estimate", "job.yaml", job_yaml="model: 2023-13-45\n"),
    "job: nested 100000 deep": case("estimate", "job.yaml", job_yaml="[" * 100000),
    "job: not UTF-8": case("estimate", "job.yaml", job_yaml=b"model: \xff\xfe\n"),
    "job: missing file": case("estimate", "nope.yaml"),
    "job: a folder": case("estimate", "folder", folder__keep_txt="x"),
    "job: unknown section": estimate({"optimizer": {"lr": 1}}),
    "job: a key with a line break": estimate({"mo\ndel": 1}),
    "job: missing training": estimate({"training": DELETE}),
    "job: model is a list": estimate({"model": ["llama3-8b"]}),
    "job: model is a number": estimate({"model": 5}),
    "job: unknown model name": estimate({"model": "llama3-8bb"}),
    "job: model.base is a list": estimate({"model": {"base": ["llama3-8b"]}}),
    "job: cluster is a list": estimate({"cluster": ["dgx-h100"]}),
    "job: cluster without gpu": estimate({"cluster": {"num_nodes": 2}}),
    "job: gpu with no usual node, no links": estimate({"cluster.gpu": "mi300x"}),
    "job: a billion GPUs": estimate({"cluster.num_nodes": 125_000_000}, expect="1,048,576"),
    "job: MoE router_skew NaN": estimate({"model.router_skew": NAN}, base=job({"model": MOE_MODEL})),
    "job: MoE capacity_factor inf": estimate({"model.capacity_factor": INF},
                                             base=job({"model": MOE_MODEL})),
    "job: MoE 2^21 experts": estimate({"model.num_experts": 2**21},
                                      base=job({"model": MOE_MODEL})),
    "job: HF config not JSON": case("estimate", "job.yaml", hf__config_json="{",
                                    job_yaml=job({"model": "hf/config.json"})),
    "job: HF config nested too deep": case("estimate", "job.yaml", hf__config_json="[" * 100000,
                                           job_yaml=job({"model": "hf/config.json"})),
    "job: HF config with NaN heads": case(
        "estimate", "job.yaml", job_yaml=job({"model": "hf/config.json"}),
        hf__config_json='{"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, '
                        '"num_attention_heads": NaN, "intermediate_size": 128, '
                        '"vocab_size": 100}'),
    "job: a run that never finishes": estimate({"training.tokens": 1e12,
                                                "cluster.node_mtbf_hours": 0.001},
                                               expect="never finish"),
    # --set
    "--set without =": estimate({}, "--set", "parallel.tp"),
    "--set without a key": estimate({}, "--set", "=4"),
    "--set malformed YAML": estimate({}, "--set", "parallel.tp=["),
    "--set NaN": estimate({}, "--set", "model.hidden_size=.nan"),
    "--set a list as preset": estimate({}, "--set", "cluster.base=[dgx-h100]",
                                       expect="cluster.base"),
    "--set a missing list element": estimate({}, "--set", "cluster.node_groups[5].num_nodes=1"),
    "--set through a scalar": estimate({}, "--set", "training.seq_length.x=1"),
    # estimate's flags and profiles
    "estimate --monte-carlo 0": estimate({"training.tokens": 1e12}, "--monte-carlo", "0"),
    "estimate --monte-carlo -1": estimate({"training.tokens": 1e12}, "--monte-carlo", "-1"),
    "estimate --monte-carlo 2e6": estimate({"training.tokens": 1e12}, "--monte-carlo",
                                           "2000000"),
    "estimate --monte-carlo nan": estimate({}, "--monte-carlo", "nan"),
    "estimate --monte-carlo without tokens": estimate({}, "--monte-carlo", "10"),
    "estimate --trace of two jobs": case("estimate", "job.yaml", "job.yaml", "--trace",
                                         "t.json", job_yaml=BASE_JOB),
    "estimate --profile missing": estimate({}, "--profile", "nowhere"),
    "estimate --profile NaN efficiency": case(
        "estimate", "job.yaml", "--profile", "fit", job_yaml=BASE_JOB,
        expect="gemm.max_efficiency=nan",
        fit__profile_yaml=fitted(_set("gemm.max_efficiency", NAN))),
    "estimate --profile efficiency 2": case(
        "estimate", "job.yaml", "--profile", "fit", job_yaml=BASE_JOB,
        fit__profile_yaml=fitted(_set("communication.inter_node_efficiency", 2.0))),
    "estimate --profile text overhead": case(
        "estimate", "job.yaml", "--profile", "fit", job_yaml=BASE_JOB,
        fit__profile_yaml=fitted(_set("overhead.op_s", "slow"))),
    "estimate --profile missing section": case(
        "estimate", "job.yaml", "--profile", "fit", job_yaml=BASE_JOB,
        fit__profile_yaml=fitted(lambda d: d.pop("gemm"))),
    "estimate --profile inverted band": case(
        "estimate", "job.yaml", "--profile", "fit", job_yaml=BASE_JOB,
        fit__profile_yaml=fitted(_set("prediction_interval.log_low", 5.0))),
    "estimate --profile a list": case("estimate", "job.yaml", "--profile", "fit",
                                      job_yaml=BASE_JOB, fit__profile_yaml="- 1\n- 2\n"),
    "estimate --profile malformed YAML": case("estimate", "job.yaml", "--profile", "fit",
                                              job_yaml=BASE_JOB, fit__profile_yaml="gemm: [\n"),
    "estimate --profile section a number": case(
        "estimate", "job.yaml", "--profile", "fit", job_yaml=BASE_JOB,
        fit__profile_yaml=fitted(_set("gemm", 5))),
    # plan
    "plan --top 0": case("plan", "job.yaml", "--top", "0", job_yaml=unlaid()),
    "plan --top -1": case("plan", "job.yaml", "--top", "-1", job_yaml=unlaid()),
    "plan --max-gpus -1": case("plan", "job.yaml", "--max-gpus", "-1", job_yaml=unlaid()),
    "plan --max-gpus 4": case("plan", "job.yaml", "--max-gpus", "4", job_yaml=unlaid()),
    "plan --max-gpus 1e18": case("plan", "job.yaml", "--max-gpus", str(10**18),
                                 job_yaml=unlaid(), expect="131,072"),
    "plan --max-gpus nan": case("plan", "job.yaml", "--max-gpus", "nan", job_yaml=unlaid()),
    "plan --objective speed": case("plan", "job.yaml", "--objective", "speed",
                                   job_yaml=unlaid()),
    "plan: fixed tp that divides nothing": case("plan", "job.yaml", job_yaml=unlaid(
        {"parallel": {"tp": 6}}), expect="parallel.tp=6: does not divide"),
    "plan: fixed tp text": case("plan", "job.yaml", job_yaml=unlaid({"parallel": {"tp": "x"}})),
    "plan: --set a bad schedule": case("plan", "job.yaml", "--set", "parallel.schedule=fast",
                                       job_yaml=unlaid()),
    "plan: --set tp=6": case("plan", "job.yaml", "--set", "parallel.tp=6", job_yaml=unlaid(),
                             expect="parallel.tp=6: does not divide"),
    "plan: stages summing wrong": case("plan", "job.yaml", job_yaml=unlaid(
        {"parallel": {"stages": [3, 3]}}), expect="parallel.stages=[3, 3]: sums to 6"),
    "plan: stages no pipeline has": case("plan", "job.yaml", job_yaml=unlaid(
        {"parallel": {"stages": [1, 1, 1, 1], "vpp": 1, "pp": 2}})),
    "plan: unknown parallel field": case("plan", "job.yaml", job_yaml=unlaid(
        {"parallel": {"tpp": 2}})),
    "plan: parallel is a number": case("plan", "job.yaml", job_yaml=unlaid({"parallel": 5})),
    "plan: fixed pp not dividing": case("plan", "job.yaml", job_yaml=unlaid(
        {"parallel": {"pp": 3}})),
    "plan: too many GPUs to search": case("plan", "job.yaml", job_yaml=unlaid(
        {"cluster.num_nodes": 65536}), expect="too many to search"),
    "plan: a billion GPUs": case("plan", "job.yaml", job_yaml=unlaid(
        {"cluster.num_nodes": 125_000_000})),
    "plan: NaN latency": case("plan", "job.yaml", job_yaml=unlaid(
        {"cluster.inter_node": {"latency_us": NAN}})),
    "plan: a plan file as its job": case("plan", "plan.json", plan_json=lambda doc: doc),
    "plan --profile malformed": case("plan", "job.yaml", "--profile", "fit", job_yaml=unlaid(),
                                     fit__profile_yaml=fitted(_set("gemm.max_efficiency", INF))),
    # topo
    "topo: NaN bandwidth": case("topo", "job.yaml", job_yaml=job(
        {"cluster.inter_node": {"bandwidth_Gbps": NAN}})),
    "topo: bad --set": case("topo", "job.yaml", "--set", "parallel.tp=0", job_yaml=BASE_JOB),
    "topo: missing file": case("topo", "nope.yaml"),
    "topo: a billion GPUs": case("topo", "job.yaml", job_yaml=job(
        {"cluster.num_nodes": 125_000_000})),
    # run: plan files, and its flags on a valid plan
    "run: missing plan": case("run", "nope.json"),
    "run: plan not JSON": case("run", "plan.json", plan_json="{not json"),
    "run: plan a JSON list": case("run", "plan.json", plan_json="[1, 2]"),
    "run: plan empty": case("run", "plan.json", plan_json=""),
    "run: plan nested too deep": case("run", "plan.json", plan_json="[" * 100000),
    "run: plan without a job": case("run", "plan.json", plan_json=lambda d: _without(d, "job")),
    "run: plan of another schema": case("run", "plan.json",
                                        plan_json=lambda d: {**d, "schema_version": 99}),
    "run: plan without layout": case("run", "plan.json", plan_json=lambda d: _edit(
        d, "job.parallel", None)),
    "run: plan job with NaN latency": case("run", "plan.json", plan_json=lambda d: _edit(
        d, "job.cluster.inter_node", {"latency_us": NAN})),
    "run: plan job with a list preset": case("run", "plan.json", plan_json=lambda d: _edit(
        d, "job.cluster.base", ["dgx-h100"])),
    "run: plan whose job was edited": case("run", "plan.json", plan_json=lambda d: _edit(
        d, "job.training.global_batch_size", 128), expect="plan.json"),
    "run: plan whose hash was changed": case("run", "plan.json", plan_json=lambda d: _edit(
        d, "inputs.job_sha256", "0" * 64)),
    "run --timeout nan": case("run", "plan.json", "--timeout", "nan", plan_json=lambda d: d,
                              expect="--timeout=nan"),
    "run --timeout inf": case("run", "plan.json", "--timeout", "inf", plan_json=lambda d: d),
    "run --timeout -1": case("run", "plan.json", "--timeout", "-1", plan_json=lambda d: d),
    "run --timeout 0": case("run", "plan.json", "--timeout", "0", plan_json=lambda d: d),
    "run --steps 0": case("run", "plan.json", "--steps", "0", plan_json=lambda d: d),
    "run --steps -1": case("run", "plan.json", "--steps", "-1", plan_json=lambda d: d),
    "run --steps nan": case("run", "plan.json", "--steps", "nan", plan_json=lambda d: d),
    "run --warmup -1": case("run", "plan.json", "--warmup", "-1", plan_json=lambda d: d),
    "run --nproc 0": case("run", "plan.json", "--nproc", "0", plan_json=lambda d: d),
    "run --emulate-nodes alone": case("run", "plan.json", "--emulate-nodes", "2",
                                      plan_json=lambda d: d),
    "run --inter-node-Gbps nan": case("run", "plan.json", "--emulate-nodes", "2",
                                      "--inter-node-Gbps", "nan", plan_json=lambda d: d),
    "run --inter-node-latency-us -1": case("run", "plan.json", "--inter-node-latency-us", "-1",
                                           plan_json=lambda d: d),
    # validate: suite files and flags
    "validate: no such suite": case("validate", "--suite", "nope"),
    "validate: suite malformed": case("validate", "--suite", "s.yaml", s_yaml="jobs: [\n"),
    "validate: suite without jobs": case("validate", "--suite", "s.yaml", s_yaml={"jobs": []}),
    "validate: suite jobs a mapping": case("validate", "--suite", "s.yaml",
                                           s_yaml={"jobs": {"a": 1}}),
    "validate: suite job a number": case("validate", "--suite", "s.yaml", s_yaml=suite([5])),
    "validate: suite job unknown key": case("validate", "--suite", "s.yaml", s_yaml=suite(
        [{"name": "a", "model": "tiny", "parallel": {"dp": 2}, "colour": "red"}])),
    "validate: suite job without name": case("validate", "--suite", "s.yaml", s_yaml=suite(
        [{"model": "tiny", "parallel": {"dp": 2}}])),
    "validate: suite nodes 1.5": case("validate", "--suite", "s.yaml", s_yaml=suite(
        [{"name": "a", "model": "tiny", "parallel": {"dp": 2}, "nodes": 1.5}])),
    "validate: suite rate as text": case("validate", "--suite", "s.yaml", expect="fast",
                                         s_yaml=suite(
        [{"name": "a", "model": "tiny", "parallel": {"dp": 2}, "nodes": 2,
          "inter_node_Gbps": "fast"}])),
    "validate: suite rate NaN": case("validate", "--suite", "s.yaml", s_yaml=suite(
        [{"name": "a", "model": "tiny", "parallel": {"dp": 2}, "nodes": 2,
          "inter_node_Gbps": NAN}])),
    "validate: suite tp as text": case("validate", "--suite", "s.yaml", s_yaml=suite(
        [{"name": "a", "model": "tiny", "parallel": {"tp": "two"}}])),
    "validate: suite parallel a list": case("validate", "--suite", "s.yaml", s_yaml=suite(
        [{"name": "a", "model": "tiny", "parallel": [2]}])),
    "validate: suite model NaN width": case("validate", "--suite", "s.yaml", s_yaml=suite(
        [{"name": "a", "model": {**BASE_JOB["model"], "hidden_size": NAN},
          "parallel": {"dp": 2}}])),
    "validate: suite seq_length text": case("validate", "--suite", "s.yaml", s_yaml=suite(
        [{"name": "a", "model": "tiny", "parallel": {"dp": 2},
          "training": {"seq_length": "long"}}])),
    "validate: suite models a list": case("validate", "--suite", "s.yaml", s_yaml=suite(
        [{"name": "a", "model": "tiny", "parallel": {"dp": 2}}], models=[1])),
    "validate: suite names twice": case("validate", "--suite", "s.yaml", s_yaml=suite(
        [{"name": "a", "model": "tiny", "parallel": {"dp": 2}}] * 2)),
    "validate --steps 0": case("validate", "--steps", "0"),
    "validate --repeat 0": case("validate", "--repeat", "0"),
    "validate --repeat -2": case("validate", "--repeat", "-2"),
    "validate --timeout nan": case("validate", "--timeout", "nan"),
    "validate --warmup -1": case("validate", "--warmup", "-1"),
    "validate vtrain without data": case("validate", "--suite", "vtrain", "--data-dir", "nope"),
    # calibrate: runs files and flags
    "calibrate: runs missing": case("calibrate", "--runs", "nope.csv", "--out", "fit"),
    "calibrate: runs empty": case("calibrate", "--runs", "r.csv", "--out", "fit", r_csv=""),
    "calibrate: runs header only": case("calibrate", "--runs", "r.csv", "--out", "fit",
                                        r_csv="job,step_time_s\n"),
    "calibrate: runs missing column": case("calibrate", "--runs", "r.csv", "--out", "fit",
                                           r_csv="job\njob.yaml\n", job_yaml=BASE_JOB),
    "calibrate: step time NaN": case("calibrate", "--runs", "r.csv", "--out", "fit",
                                     expect="step_time_s='nan'",
                                     r_csv="job,step_time_s\njob.yaml,nan\n", job_yaml=BASE_JOB),
    "calibrate: step time inf": case("calibrate", "--runs", "r.csv", "--out", "fit",
                                     r_csv="job,step_time_s\njob.yaml,inf\n", job_yaml=BASE_JOB),
    "calibrate: step time text": case("calibrate", "--runs", "r.csv", "--out", "fit",
                                      r_csv="job,step_time_s\njob.yaml,fast\n",
                                      job_yaml=BASE_JOB),
    "calibrate: step time negative": case("calibrate", "--runs", "r.csv", "--out", "fit",
                                          r_csv="job,step_time_s\njob.yaml,-1\n",
                                          job_yaml=BASE_JOB),
    "calibrate: a row short of cells": case("calibrate", "--runs", "r.csv", "--out", "fit",
                                            r_csv="job,step_time_s\njob.yaml\n",
                                            job_yaml=BASE_JOB),
    "calibrate: override column text": case(
        "calibrate", "--runs", "r.csv", "--out", "fit", job_yaml=BASE_JOB,
        r_csv="job,step_time_s,parallel.tp\njob.yaml,1.0,two\n"),
    "calibrate: override column NaN": case(
        "calibrate", "--runs", "r.csv", "--out", "fit", job_yaml=BASE_JOB,
        r_csv="job,step_time_s,cluster.inter_node.latency_us\njob.yaml,1.0,.nan\n"),
    "calibrate: run's job missing": case("calibrate", "--runs", "r.csv", "--out", "fit",
                                         r_csv="job,step_time_s\nnope.yaml,1.0\n"),
    "calibrate: runs not UTF-8": case("calibrate", "--runs", "r.csv", "--out", "fit",
                                      r_csv=b"job,step_time_s\n\xff\xfe,1\n"),
    "calibrate: vTrain cell NaN": case(
        "calibrate", "--runs", "r.csv", "--out", "fit",
        r_csv=VTRAIN_HEADER + "\n8,16,1,1024,16,4,1024,2,4,1,nan\n"),
    "calibrate: vTrain count 1.5": case(
        "calibrate", "--runs", "r.csv", "--out", "fit",
        r_csv=VTRAIN_HEADER + "\n8,16,1,1024,16,4,1024,2,4,1.5,100\n"),
    "calibrate --max-evaluations 0": case("calibrate", "--runs", "r.csv", "--out", "fit",
                                          "--max-evaluations", "0", r_csv="job,step_time_s\n"),
    "calibrate --max-evaluations -1": case("calibrate", "--runs", "r.csv", "--out", "fit",
                                           "--max-evaluations", "-1", r_csv="job,step_time_s\n"),
    "calibrate: --profile malformed": case(
        "calibrate", "--runs", "r.csv", "--out", "fit", "--profile", "base",
        r_csv="job,step_time_s\njob.yaml,1.0\n", job_yaml=BASE_JOB,
        base__profile_yaml=fitted(_set("overlap.slowdown", NAN))),
    "calibrate: unknown parameter": case(
        "calibrate", "--runs", "r.csv", "--out", "fit", "--params", "gemm.speed",
        r_csv="job,step_time_s\njob.yaml,1.0\n", job_yaml=BASE_JOB),
    "calibrate without --out": case("calibrate", "--runs", "r.csv"),
    # profile (rejected before torch starts work)
    "profile --threads 0": case("profile", "--threads", "0", "--out", "prof"),
    "profile --threads -4": case("profile", "--threads", "-4", "--out", "prof"),
    "profile --threads nan": case("profile", "--threads", "nan", "--out", "prof"),
    "profile --dtype fp8": case("profile", "--dtype", "fp8", "--out", "prof"),
    "profile --device tpu": case("profile", "--device", "tpu"),
    # list and the command line itself
    "list foo": case("list", "foo"),
    "list without a kind": case("list"),
    "no command": case(),
    "unknown command": case("simulate", "job.yaml"),
    "estimate without a job": case("estimate"),
    "unknown flag": case("estimate", "job.yaml", "--bogus", job_yaml=BASE_JOB),
})


def _without(document: dict, key: str) -> dict:
    return {k: v for k, v in document.items() if k != key}


def _edit(document: dict, path: str, value: Any) -> dict:
    out = copy.deepcopy(document)
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node[part]
    node[last] = value
    return out


# Running a case ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan_document(tmp_path_factory) -> dict:
    """A valid plan document of the base job (every degree fixed: a one-layout search)."""
    folder = tmp_path_factory.mktemp("plan")
    (folder / "job.yaml").write_text(yaml.safe_dump(job({"parallel": FIXED_PARALLEL})),
                                     encoding="utf-8")
    assert main(["plan", str(folder / "job.yaml"), "--out", str(folder / "plan.json")]) == 0
    return json.loads((folder / "plan.json").read_text(encoding="utf-8"))


def write_files(folder: Path, files: dict[str, Any], plan_document: dict) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content = json.dumps(content(copy.deepcopy(plan_document)))
        if isinstance(content, (dict, list)):
            content = json.dumps(content) if name.endswith(".json") else \
                yaml.safe_dump(content, sort_keys=False)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under `folder`: size and sha256 (folders: -1)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = (-1, "") if path.is_dir() else (
            path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def run_main(argv: tuple[str, ...], capsys) -> tuple[int, str]:
    """`parasim ARGV` in-process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        status = main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert status == 2, (status, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("parasim"), \
        f"want one line on stderr, got {stderr!r}"


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Path:
    """An empty working folder that is also $PARASIM_HOME (and holds no data folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(profiles.HOME_VARIABLE, str(tmp_path / "home"))
    monkeypatch.setenv("PARASIM_DATA", str(tmp_path / "no-data"))
    return tmp_path


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, sandbox, capsys, plan_document):
    bad = CASES[name]
    write_files(sandbox, bad.files, plan_document)
    before = snapshot(sandbox)
    status, stderr = run_main(bad.argv, capsys)
    assert_one_line_error(status, stderr)
    assert bad.expect in stderr, f"{bad.expect!r} not in {stderr!r}"
    assert snapshot(sandbox) == before, "the command created or changed a file"


def test_the_corpus_is_large_and_covers_every_command():
    commands = {c.argv[0] for c in CASES.values() if c.argv}
    assert commands >= {"estimate", "plan", "topo", "run", "validate", "calibrate", "profile",
                        "list"}
    kinds = {Path(name).suffix for c in CASES.values() for name in c.files}
    assert {".yaml", ".json", ".csv"} <= kinds
    assert len(CASES) >= 120


# Through the console entry (a new process): the same contract -----------------------------

@pytest.mark.parametrize("argv", [
    ("estimate", "job.yaml", "--set", "cluster.intra_node.latency_us=.nan"),
    ("run", "plan.json", "--timeout", "nan"),
], ids=["estimate NaN latency", "run --timeout nan"])
def test_console_entry(argv, tmp_path, plan_document):
    write_files(tmp_path, {"job.yaml": BASE_JOB, "plan.json": lambda d: d}, plan_document)
    before = snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), profiles.HOME_VARIABLE: str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "parasim", *argv], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert_one_line_error(result.returncode, result.stderr)
    assert snapshot(tmp_path) == before
