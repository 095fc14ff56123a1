"""How much of the vTrain multi-node error rests on the assumed inter-node network.

Issue 8 calibrates on single-node runs only, so no fitted parameter describes the network
between nodes: the multi-node predictions take the DGX A100 preset's 8 x 200 Gb/s per node
(profiles/clusters.yaml), while vTrain's own simulator was set to 800 Gb/s per node and the
data's README calls the interconnect unknown. This prints the multi-node test error of the
frozen fitted profile (reports/vtrain/profile) under several per-node rates. It is a
sensitivity, not a fit: the report's numbers keep the preset, and no rate here is chosen by
its error.

    python3 benchmarks/vtrain_network_sensitivity.py [--data-dir DIR] [--profile DIR]
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from parasim.simulator.calibration.fitted import load_fitted
from parasim.simulator.datasets import vtrain
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict

NIC_GBPS = 200  # HDR InfiniBand: the preset's rate per NIC
NIC_LATENCY_US = 8  # the preset's
NICS_PER_NODE = (8, 4, 2)  # 1600 Gb/s (preset), 800 Gb/s (vTrain's setting), 400 Gb/s


def errors(rows: list[dict[str, str]], profile, nics: int) -> tuple[float, float, float]:
    """(mean APE, worst APE, mean signed error) over the rows with `nics` NICs per node."""
    signed = []
    for index, row in enumerate(rows):
        raw = vtrain.vtrain_job(row)
        raw["cluster"]["inter_node"] = {"bandwidth_Gbps": NIC_GBPS, "nics_per_node": nics,
                                        "latency_us": NIC_LATENCY_US}
        job = job_from_mapping(raw, base_dir=Path("."), source=f"multi row {index + 2}")
        predicted = predict(job, profile=profile).step_time_s
        signed.append(predicted / vtrain.measured_step_s(row) - 1)
    absolute = [abs(e) for e in signed]
    return statistics.fmean(absolute), max(absolute), statistics.fmean(signed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/work/shared/data")
    parser.add_argument("--profile", default="reports/vtrain/profile")
    args = parser.parse_args()
    with (Path(args.data_dir) / "vtrain" / "ground_truth_multi.csv").open() as f:
        rows = list(csv.DictReader(f))
    profile = load_fitted(Path(args.profile))
    print(f"{len(rows)} multi-node vTrain runs, fitted profile {args.profile}")
    print("inter-node per node | mean APE | worst APE | bias")
    for nics in NICS_PER_NODE:
        mean, worst, bias = errors(rows, profile, nics)
        print(f"{nics} x {NIC_GBPS} = {nics * NIC_GBPS:4d} Gb/s | {mean:7.2%} | {worst:7.2%} "
              f"| {bias:+7.2%}")


if __name__ == "__main__":
    main()
