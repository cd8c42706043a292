"""Facts about the machine a run happens on, for the server's INFO, sweeps and benchmarks.

Importing this module is cheap: torch, zmq and psutil are imported by the
functions that need them.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def hostname() -> str:
    return platform.node()


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC 9B14'), or the best the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: Any) -> str:
    """The GPU's name for a CUDA device, else the CPU model."""
    if getattr(device, "type", None) == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return cpu_model()


def gpu_uuid(device: Any) -> str | None:
    """'GPU-<uuid>' of a CUDA device (as NVML names it), None for a CPU or when torch cannot tell."""
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    try:
        return f"GPU-{torch.cuda.get_device_properties(device).uuid}"
    except Exception:  # an old torch without .uuid, or a driver that will not say
        return None


def versions() -> dict[str, Any]:
    """Python, torch, CUDA (as torch was built), pyzmq and libzmq versions."""
    import torch
    import zmq

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
    }


def git_commit(root: Path) -> str | None:
    """HEAD of the checkout at `root`, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def gpu_facts() -> dict[str, Any]:
    """The first CUDA device's name and the NVIDIA driver version (both None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu_name": None, "gpu_driver": None}
    facts: dict[str, Any] = {"gpu_name": torch.cuda.get_device_name(0), "gpu_driver": None}
    try:
        import pynvml

        pynvml.nvmlInit()
        facts["gpu_driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # NVML missing: the name is still worth recording
        pass
    return facts


def environment() -> dict[str, Any]:
    """Everything above in one JSON-able map (sweep.py's `environment` section)."""
    import psutil

    return {
        "host": hostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        **versions(),
        **gpu_facts(),
    }


def summary_line() -> str:
    """One line for a report: CPU, cores and versions."""
    v = versions()
    return (
        f"{cpu_model()}, {os.cpu_count()} cores; Python {v['python']}, torch {v['torch']}, "
        f"pyzmq {v['pyzmq']} (libzmq {v['libzmq']})"
    )
