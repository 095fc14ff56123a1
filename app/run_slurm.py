"""`parasim run PLAN.json --export slurm`: an sbatch script that runs the plan on N nodes.

The script asks Slurm for N nodes with one task each (the task is this node's `parasim run`,
which starts the node's M ranks itself, as torchrun does; runtime/multinode.py), takes the
job's first host as the rendezvous host (the first line of `scontrol show hostnames
$SLURM_JOB_NODELIST`, the recipe of Slurm's and PyTorch's multi-node examples) and starts every node with `srun`; each
task reads its own node rank from $SLURM_NODEID, which is why the command runs in `bash -c`
(the batch script itself runs on the first node only). Node 0 writes the measurement.

Set at submission (`sbatch --export=ALL,NAME=value run.sbatch`) or in the environment:
PARASIM (the command, default `parasim` on the PATH), PARASIM_PORT (the rendezvous port,
default torchrun's 29500) and PARASIM_OUT (the measurement, default MEASUREMENT.json). Paths
are as given to `--export`, relative to the folder `sbatch` is run from (Slurm's default
working directory).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from parasim.runtime.nodes import DEFAULT_PORT

START_MARGIN_S = 300  # added to --timeout for --time: srun start-up and torch's import per node
JOB_NAME = "parasim-run"


@dataclass(frozen=True, kw_only=True)
class SlurmRun:
    """What the script runs."""

    plan_path: str  # as the user gave it (relative to the submission folder)
    nnodes: int
    nproc_per_node: int
    steps: int
    warmup_steps: int
    timeout_s: float  # of the run; the job's time limit adds START_MARGIN_S
    shrink: bool


def time_limit(timeout_s: float) -> str:
    """Slurm's --time (H:MM:SS, whole minutes): the run's timeout plus START_MARGIN_S."""
    minutes = math.ceil((timeout_s + START_MARGIN_S) / 60)
    return f"{minutes // 60}:{minutes % 60:02d}:00"


def node_command(run: SlurmRun) -> str:
    """The command each task runs (its variables expand on its own node)."""
    words = ['exec "$PARASIM" run', shlex.quote(run.plan_path),
             '--nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID"',
             '--rdzv-endpoint "$PARASIM_ENDPOINT"', f"--nproc-per-node {run.nproc_per_node}",
             f"--steps {run.steps} --warmup {run.warmup_steps} --timeout {run.timeout_s:g}",
             '--out "$PARASIM_OUT"']
    if run.shrink:
        words.append("--shrink")
    return " ".join(words)


def sbatch_script(run: SlurmRun) -> str:
    """The whole script (bash; #SBATCH lines before the first command, as sbatch requires)."""
    return "\n".join([
        "#!/bin/bash",
        f"# parasim run {run.plan_path} on {run.nnodes} nodes x {run.nproc_per_node} ranks, "
        "written by `parasim run --export slurm`.",
        "# Submit from the folder of the plan: sbatch THIS_FILE. Node 0 writes $PARASIM_OUT.",
        f"#SBATCH --job-name={JOB_NAME}",
        f"#SBATCH --nodes={run.nnodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={run.nproc_per_node}",
        f"#SBATCH --time={time_limit(run.timeout_s)}",
        "set -euo pipefail",
        # sed reads every line: `head -n1` would close the pipe on scontrol, whose SIGPIPE
        # fails the line under pipefail
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
        f'export PARASIM_ENDPOINT="$head_node:${{PARASIM_PORT:-{DEFAULT_PORT}}}"',
        'export PARASIM="${PARASIM:-parasim}"',
        'export PARASIM_OUT="${PARASIM_OUT:-MEASUREMENT.json}"',
        f"srun --nodes={run.nnodes} --ntasks-per-node=1 --kill-on-bad-exit=1 "
        f"bash -c {shlex.quote(node_command(run))}",
        ""])
