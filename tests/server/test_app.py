"""infer-server's start-up (server/app.py) seen from outside: what it refuses, and what INFO says it set up."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import zmq

from client.transport import Backend
from tests.support import ROOT


def hello(endpoint: str) -> dict:
    ctx = zmq.Context()
    b = Backend(ctx, endpoint)
    try:
        return b.hello(30)
    finally:
        b.close()
        ctx.term()


@pytest.mark.integration
@pytest.mark.parametrize(("mode", "workers"), [("reduce-overhead", "2"), ("max-autotune", "4")])
def test_cuda_graph_modes_with_several_workers_are_refused_in_one_line(mode: str, workers: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--device", "cpu", "--compile", "--compile-mode", mode,
         "--num-workers", workers], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: compile_mode (--compile-mode): ") and mode in last and "--num-workers 1" in last


def test_cuda_graph_modes_are_accepted_on_one_thread() -> None:
    from server.config import ServerConfig

    for workers in (None, 0, 1):
        assert ServerConfig(compile_mode="reduce-overhead", num_workers=workers).num_workers == workers
    assert ServerConfig(compile=False, compile_mode="max-autotune", num_workers=8).num_workers == 8  # ignored mode


@pytest.mark.integration
def test_info_reports_the_thread_split_backend_flags_and_each_workers_warm_up(server_factory) -> None:
    s = server_factory("--device", "cpu", "--model", "noop", "--no-compile", "--num-workers", "2",
                       "--threads", "2", "--warmup-batch-sizes", "1,2", "--warmup-image-size", "32")
    info = hello(s.endpoint)
    split = info["thread_split"]
    assert (split["workers"], split["threads_each"], split["threads"]) == (2, 1, 2)
    assert info["torch_threads"] == 1
    backend = info["backend"]
    assert backend["torch_version"] == torch.__version__ and backend["cudnn_benchmark"] is False
    assert {"tf32_conv", "tf32_matmul", "float32_matmul_precision", "cudnn_version", "cuda_version",
            "cuda_sync"} <= set(backend)
    # Both prediction threads ran both warm-up shapes before the server said it was ready.
    assert [set(per_worker) for per_worker in info["warmup_first_call_s"]] == [
        {"float32[1,3,32,32]", "float32[2,3,32,32]"}] * 2
    assert info["m_compile_time"] > 0


@pytest.mark.integration
def test_cpu_default_is_one_worker_with_every_core_whose_threads_sleep(server_factory, monkeypatch) -> None:
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    s = server_factory("--device", "cpu", "--model", "noop", "--no-compile", "--cudnn-benchmark")
    info = hello(s.endpoint)
    cores = torch.get_num_threads()
    assert info["num_workers"] == info["config"]["num_workers"] == 1  # what ran, not "unset"
    assert info["thread_split"] == {"workers": 1, "threads_each": cores, "threads": 0, "cores": cores,
                                    "omp_wait_policy": "PASSIVE", "gomp_spincount": None}
    assert info["backend"]["cudnn_benchmark"] is True  # --cudnn-benchmark is applied (it acts on CUDA only)
    assert info["warmup_first_call_s"] == [{}] and info["m_compile_time"] == 0


@pytest.mark.integration
def test_a_wait_policy_the_user_chose_is_left_alone(server_factory) -> None:
    s = server_factory("--device", "cpu", "--model", "noop", "--no-compile", env={"GOMP_SPINCOUNT": "300000"})
    split = hello(s.endpoint)["thread_split"]
    assert split["gomp_spincount"] == "300000" and split["omp_wait_policy"] != "PASSIVE"
