"""Client and server on separate network hosts: two network namespaces joined by a veth pair.

Needs root and iproute2 (`ip netns`); skipped with the reason otherwise. The
namespaces are the test's own (named after its pid) and always removed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from server.launch import wait_for_line
from tests.support import NOOP, ROOT, START_TIMEOUT_S, run_cli

pytestmark = [pytest.mark.netns, pytest.mark.integration]

RUN_ARGS = ("--batch-size", "4", "--image-size", "32", "--num-iters", "300", "--concurrency", "4",
            "--output-file", "", "--json", "-q", "--timeout", "10")


@dataclass
class Hosts:
    server_ns: str
    client_ns: str
    server_addr: str


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    pid = os.getpid()
    server_ns, client_ns = f"infer-srv-{pid}", f"infer-cli-{pid}"
    subnet = pid % 250  # 10.231.<subnet>.0/30: our own address range for test hosts
    server_addr, client_addr = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    made = _ip("netns", "add", server_ns)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        veth_s, veth_c = f"vs{pid}"[:15], f"vc{pid}"[:15]
        steps = [
            ("netns", "add", client_ns),
            ("link", "add", veth_s, "type", "veth", "peer", "name", veth_c),
            ("link", "set", veth_s, "netns", server_ns),
            ("link", "set", veth_c, "netns", client_ns),
            ("-n", server_ns, "addr", "add", f"{server_addr}/30", "dev", veth_s),
            ("-n", client_ns, "addr", "add", f"{client_addr}/30", "dev", veth_c),
            ("-n", server_ns, "link", "set", "lo", "up"),
            ("-n", client_ns, "link", "set", "lo", "up"),
            ("-n", server_ns, "link", "set", veth_s, "up"),
            ("-n", client_ns, "link", "set", veth_c, "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot set up the namespaces (`ip {' '.join(step)}`): {done.stderr.strip()}")
        yield Hosts(server_ns, client_ns, server_addr)
    finally:
        # Deleting a namespace deletes the veth end in it, and the pair with it;
        # a pair still in the root namespace (setup failed half-way) goes explicitly.
        _ip("link", "delete", f"vs{pid}"[:15])
        for ns in (server_ns, client_ns):
            _ip("netns", "delete", ns)


def _start_in(ns: str, bind: str, tmp_path) -> subprocess.Popen:
    err = open(tmp_path / f"server-{ns}.err", "wb")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "server", "--bind", bind, *NOOP],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
    )
    err.close()
    return proc


def _run_client(endpoint: str, ns: str | None = None) -> dict:
    prefix = ("ip", "netns", "exec", ns) if ns else ()
    proc = subprocess.run([*prefix, sys.executable, "-m", "client", "--server", endpoint, *RUN_ARGS],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_client_and_server_on_separate_hosts(hosts: Hosts, server_factory, tmp_path) -> None:
    server = _start_in(hosts.server_ns, f"tcp://{hosts.server_addr}:5555", tmp_path)
    try:
        wait_for_line(server, "ready ", START_TIMEOUT_S)
        # Not reachable from the root namespace: the client's namespace is the only route.
        assert run_cli("client", "--server", f"tcp://{hosts.server_addr}:5555", "--num-iters", "1", "--timeout",
                       "2", "--output-file", "", timeout=60).returncode != 0
        remote = _run_client(f"tcp://{hosts.server_addr}:5555", hosts.client_ns)
    finally:
        server.kill()
        server.wait(30)
    local_server = server_factory(*NOOP)
    local = _run_client(local_server.endpoint)
    for name, m in (("netns (veth)", remote), ("loopback", local)):
        assert m["requests_ok"] == 300 and m["requests_failed"] == 0 and m["requests_lost"] == 0
        print(f"{name}: throughput {m['throughput']:.1f} samples/s, p50 {m['p50_latency'] * 1e3:.3f} ms,"
              f" p99 {m['p99_latency'] * 1e3:.3f} ms, mean {m['average_latency'] * 1e3:.3f} ms")
    assert remote["endpoint"] == f"tcp://{hosts.server_addr}:5555"
