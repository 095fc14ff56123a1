"""The device being profiled: checks, names, dtypes and the provenance in meta.json."""

from __future__ import annotations

import datetime
import platform
import socket
from pathlib import Path
from typing import Any

import torch

from parasim.simulator.errors import SpecError

DEVICES = ("cpu", "cuda")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (substrings of the lower-cased CUDA device name, catalog name): the first match wins.
GPU_NAMES = (
    (("h100", "pcie"), "h100-pcie"),
    (("h100", "nvl"), ""),  # H100 NVL (94 GB) is not in the catalog
    (("h100",), "h100-sxm"),  # "NVIDIA H100 80GB HBM3", "H100 SXM5"
    (("h200",), "h200"),
    (("b200",), "b200"),
    (("a100", "40gb"), "a100-40gb"),
    (("a100",), "a100-80gb"),  # "A100-SXM4-80GB", "A100 80GB PCIe"
    (("v100",), "v100-32gb"),
    (("l40s",), "l40s"),
    (("mi300x",), "mi300x"),
    (("mi250x",), "mi250x"),
)


def check_device(device: str) -> None:
    """SpecError unless `device` can be profiled on this machine."""
    if device not in DEVICES:
        raise SpecError("--device", device, "unknown device", ", ".join(DEVICES))
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device", device, "CUDA is not available on this machine", "cpu")


def default_dtype(device: str) -> str:
    """bf16 on GPUs (what training runs in), fp32 on CPUs (where bf16 matmuls are emulated)."""
    return "bf16" if device == "cuda" else "fp32"


def torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise SpecError("--dtype", dtype, "unknown dtype", ", ".join(DTYPES))
    return DTYPES[dtype]


def catalog_gpu(device_name: str) -> str:
    """The catalog GPU name (profiles/gpus.yaml) of a CUDA device name, else the name
    lower-cased."""
    lowered = device_name.strip().lower()
    for parts, name in GPU_NAMES:
        if all(part in lowered for part in parts):
            return name or lowered
    return lowered


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else cpu_name()


def driver(device: str) -> str:
    """The CUDA (or ROCm) version torch was built with; "cpu" for the CPU."""
    if device == "cpu":
        return "cpu"
    return torch.version.cuda or getattr(torch.version, "hip", None) or "unknown"


def meta(device: str, dtype: str, quick: bool, warmup: int, repeats: int,
         notes: list[str]) -> dict[str, Any]:
    """meta.json (profiles/README.md): what was measured, where, how, with what."""
    name = device_name(device)
    return {
        "device": device,
        "device_name": name,
        "gpu": catalog_gpu(name) if device == "cuda" else "cpu",
        "dtype": dtype,
        "torch": torch.__version__,
        "driver": driver(device),
        "host": socket.gethostname(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "quick": quick,
        "repeats": repeats,
        "warmup": warmup,
        "notes": notes,
    }
