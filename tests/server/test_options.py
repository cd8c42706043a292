"""Server performance options checked for correctness on CPU, against real servers.

Each option must change speed, never answers: outputs are compared with the
in-process float32 model (same seeded random init as the server's) within a
stated tolerance. Sizes are tiny so the module runs in seconds.
"""

from __future__ import annotations

import threading

import pytest
import torch
import zmq

from client.transport import Backend
from common import codec
from common.protocol import IdHeader, InferHeader, MsgType, ResultHeader, StatsReplyHeader
from server.models.build import build_model
from server.models.spec import IMAGENET_MEAN, IMAGENET_STD
from tests.support import sleep_model

pytestmark = pytest.mark.integration  # every test here starts a process

IMAGE = 32
# float32 through a server vs in-process: same kernels, same threads count aside;
# summation order may differ with the thread split, so not bit-exact.
FP32_ATOL = 1e-4
# bf16 autocast keeps ~3 significant digits; logits of a random-init ResNet-18 are O(1).
BF16_ATOL = 0.15


@pytest.fixture(scope="module")
def ctx():
    context = zmq.Context()
    yield context
    context.term()


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    model, _ = build_model("resnet18", torch.device("cpu"), None)
    return model


def infer(ctx: zmq.Context, endpoint: str, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    backend = Backend(ctx, endpoint)
    try:
        msg = backend.request(MsgType.INFER, {"ts": [0, 0]}, timeout_s=60, tensors=(x,))
    finally:
        backend.close()
    assert msg.msg_type == MsgType.RESULT
    return msg.tensors[0].clone(), msg.header["server"]


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def images(batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=g)


def test_uint8_wire_matches_normalised_float(ctx, resnet_server, reference):
    raw = images(2, seed=1)
    got, _ = infer(ctx, resnet_server.endpoint, raw)
    with torch.inference_mode():
        want = reference(normalise(raw))
    assert got.shape == (2, 1000) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=FP32_ATOL, rtol=1e-4)
    # and the float32 wire of the same normalised images gives the same answer
    got_f32, _ = infer(ctx, resnet_server.endpoint, normalise(raw))
    torch.testing.assert_close(got_f32, want, atol=FP32_ATOL, rtol=1e-4)


@pytest.mark.parametrize(
    ("args", "atol"),
    [(("--precision", "bf16"), BF16_ATOL), (("--channels-last",), FP32_ATOL * 10)],
    ids=["bf16", "channels-last"],
)
def test_precision_and_layout_close_to_fp32(ctx, server_factory, reference, args, atol):
    server = server_factory("--device", "cpu", "--model", "resnet18", "--no-compile", *args)
    x = normalise(images(2, seed=2))
    got, _ = infer(ctx, server.endpoint, x)
    with torch.inference_mode():
        want = reference(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=atol, rtol=0.05)
    if "--precision" in args:  # bf16 really ran: not bit-identical to fp32
        assert not torch.equal(got, want)


def _concurrent(ctx: zmq.Context, endpoint: str, inputs: list[torch.Tensor]) -> list[tuple[torch.Tensor, dict]]:
    """Send every input at once from its own client thread (own socket), gather replies."""
    results: list = [None] * len(inputs)
    barrier = threading.Barrier(len(inputs))

    def one(i: int) -> None:
        backend = Backend(ctx, endpoint)
        try:
            backend.hello(30)
            barrier.wait(30)
            msg = backend.request(MsgType.INFER, {"ts": [0, 0]}, timeout_s=60, tensors=(inputs[i],))
            results[i] = (msg.tensors[0].clone(), msg.header["server"])
        finally:
            backend.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert all(r is not None for r in results), "a client got no reply"
    return results


@pytest.mark.parametrize("workers", ["1", "0"], ids=["pool", "inline"])
def test_dynamic_batching_returns_each_caller_its_rows(ctx, server_factory, workers):
    # A long timeout makes batching certain: the batch closes when 8 rows are in.
    server = server_factory(
        "--device", "cpu", "--model", "noop", "--no-compile", "--num-workers", workers,
        "--max-batch-size", "8", "--batch-timeout-us", "2000000",
    )
    # 4 clients x 2 rows, every row distinct: the noop model echoes x[i].flat[0] in row i.
    inputs = [torch.full((2, 3, IMAGE, IMAGE), float(10 * c)) for c in range(4)]
    for c, x in enumerate(inputs):
        x[1].fill_(10 * c + 1)
    results = _concurrent(ctx, server.endpoint, inputs)
    for c, (out, server_info) in enumerate(results):
        assert out.shape == (2, 1000)
        assert torch.all(out[0] == 10 * c) and torch.all(out[1] == 10 * c + 1), f"client {c} got others' rows"
        assert server_info["batch_rows"] == 8, "requests were not stacked into one forward pass"


def test_dynamic_batching_resnet_matches_unbatched(ctx, server_factory, resnet_server):
    batched = server_factory(
        "--device", "cpu", "--model", "resnet18", "--no-compile", "--num-workers", "1",
        "--max-batch-size", "3", "--batch-timeout-us", "2000000",
    )
    inputs = [normalise(images(1, seed=10 + c)) for c in range(3)]
    results = _concurrent(ctx, batched.endpoint, inputs)
    for x, (out, server_info) in zip(inputs, results):
        assert server_info["batch_rows"] == 3
        alone, info = infer(ctx, resnet_server.endpoint, x)
        assert info["batch_rows"] == 1
        # batch 3 vs batch 1 may pick different conv algorithms: close, not equal
        torch.testing.assert_close(out, alone, atol=FP32_ATOL * 10, rtol=1e-3)


@pytest.mark.parametrize("workers", ["3", "0"], ids=["pool", "inline"])
def test_worker_settings_give_identical_outputs(ctx, server_factory, workers):
    """A pool of workers, or none (--num-workers 0: the I/O thread runs the model), answers
    concurrent requests exactly as one worker answers them one by one."""
    single = server_factory("--device", "cpu", "--model", "resnet18", "--no-compile", "--num-workers", "1",
                            "--threads", "1")
    other = server_factory("--device", "cpu", "--model", "resnet18", "--no-compile", "--num-workers", workers,
                           "--threads", "1")
    inputs = [normalise(images(1, seed=20 + c)) for c in range(6)]
    want = [infer(ctx, single.endpoint, x)[0] for x in inputs]
    results = _concurrent(ctx, other.endpoint, inputs)
    for w, (got, info) in zip(want, results):
        assert info["batch_rows"] == 1
        assert torch.equal(got, w)
    served_by = {info["worker"] for _, info in results}
    if workers == "0":
        assert served_by == {0}
    else:
        assert len(served_by) > 1, "only one worker served the concurrent requests"
    backend = Backend(ctx, other.endpoint)
    try:
        assert backend.hello(30)["num_workers"] == int(workers)
        counters = backend.stats()["counters"]
    finally:
        backend.close()
    assert counters["answered"] == len(inputs) and counters.get("errors_sent", 0) == 0


def test_a_due_batch_keeps_growing_while_every_worker_is_busy(ctx, server_factory):
    """Requests that arrive while the only worker is busy wait for it as one batch, as in
    Triton's dynamic batcher: a 1 us timeout would otherwise send each alone. The 2 s service time
    only has to outlast sending the other seven, each with one STATS round trip."""
    server = server_factory(*sleep_model(2000.0, "--max-batch-size", "8", "--batch-timeout-us", "1"))
    client = Backend(ctx, server.endpoint)
    results: list[codec.Message] = []

    def replies_until_stats() -> StatsReplyHeader:
        # On the same socket as the requests, so the server has read them all by then.
        client.send(MsgType.STATS, IdHeader("stats").to_wire())
        while True:
            assert client.sock.poll(30_000), "no reply"
            msg = codec.decode([f.buffer for f in client.sock.recv_multipart(copy=False)])
            if msg.msg_type != MsgType.STATS_REPLY:
                results.append(msg)
                continue
            return StatsReplyHeader.from_wire(msg.header)

    try:
        client.hello(30)
        x = torch.zeros(1, 3, IMAGE, IMAGE)
        for i in range(8):
            client.send(MsgType.INFER, InferHeader([], f"r{i}", [0, 0]).to_wire(), (x,))
            # The loop has had a turn, and its due check, since this request arrived.
            assert replies_until_stats().inflight + len(results) == i + 1
        while len(results) < 8:
            assert client.sock.poll(30_000), "a request got no reply"
            results.append(codec.decode([f.buffer for f in client.sock.recv_multipart(copy=False)]))
    finally:
        client.close()
    assert all(msg.msg_type == MsgType.RESULT for msg in results), [msg.header for msg in results]
    batch_rows = [ResultHeader.from_wire(msg.header).server.batch_rows for msg in results]
    # The first request (with any that came before its due check) ran alone; the rest waited together.
    forward_passes = sum(1 / rows for rows in batch_rows)
    assert forward_passes == pytest.approx(2), f"batch rows per reply: {batch_rows}"
