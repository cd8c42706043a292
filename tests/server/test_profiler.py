"""The profiling window (server/profiling.py): a real server's trace holds the model's operators for the window only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common import codec
from common.protocol import ControlHeader, InferHeader, MsgType, ProtocolError
from server import profiling
from tests.support import ask, dealer_socket

WINDOW = 4


def infer(request_id: int, batch: int = 2, side: int = 64) -> list[bytes]:
    x = torch.zeros(batch, 3, side, side)
    return [bytes(f) for f in codec.encode(MsgType.INFER, InferHeader([], request_id).to_wire(), (x,))]


def control(action: str, request_id: int, directory: str | None = None) -> list[bytes]:
    return [bytes(f) for f in codec.encode(MsgType.CONTROL, ControlHeader(action, request_id, dir=directory).to_wire())]


def names(trace: str) -> list[str]:
    return [e["name"] for e in profiling.load_events(trace)]


@pytest.mark.integration
@pytest.mark.parametrize("workers", ["2", "0"])  # the model on worker threads, then on the I/O thread itself
def test_trace_holds_the_models_operators_for_the_window_only(server_factory, tmp_path: Path, workers: str) -> None:
    server = server_factory("--device", "cpu", "--model", "resnet18", "--no-compile", "--num-workers", workers,
                            "--warmup-image-size", "64")
    with dealer_socket(server.endpoint) as sock:
        assert ask(sock, infer(0)).msg_type == MsgType.RESULT  # before the window
        assert ask(sock, control("profile_start", 1, str(tmp_path))).msg_type == MsgType.CONTROL_REPLY
        for i in range(WINDOW):
            assert ask(sock, infer(10 + i)).msg_type == MsgType.RESULT
        stop = ask(sock, control("profile_stop", 2))
        assert ask(sock, infer(99)).msg_type == MsgType.RESULT  # after it
    trace = stop.header["trace"]
    assert Path(trace).parent == tmp_path
    recorded = names(trace)  # load_events parses the file as JSON
    assert recorded.count(profiling.JOB_RANGE) == WINDOW
    # resnet18 has 20 convolutions: 20 per forward pass in the window, none from before or after it
    assert recorded.count("aten::conv2d") == 20 * WINDOW
    top = [op.name for op in profiling.top_operators(trace, limit=5)]
    assert any("conv" in name for name in top), top


def test_self_time_subtracts_direct_children_only(tmp_path: Path) -> None:
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "outer", "pid": 1, "tid": 1, "ts": 0, "dur": 100},
        {"ph": "X", "cat": "cpu_op", "name": "mid", "pid": 1, "tid": 1, "ts": 10, "dur": 50},
        {"ph": "X", "cat": "cpu_op", "name": "leaf", "pid": 1, "tid": 1, "ts": 20, "dur": 10},
        {"ph": "X", "cat": "cpu_op", "name": "leaf", "pid": 1, "tid": 2, "ts": 20, "dur": 30},  # another thread
        {"ph": "X", "cat": "user_annotation", "name": "infer_job", "pid": 1, "tid": 1, "ts": 0, "dur": 200},
    ]
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    ops = {op.name: (op.calls, op.self_us, op.total_us) for op in profiling.top_operators(trace)}
    assert ops == {"outer": (1, 50.0, 100.0), "mid": (1, 40.0, 50.0), "leaf": (2, 40.0, 40.0)}
    table = profiling.format_table(profiling.top_operators(trace))
    assert table.splitlines()[2].startswith("| `outer` | 1 | 0.1 |")


def test_summary_cli_refuses_an_unreadable_trace_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.json").write_text("not json")
    assert profiling.main([str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read trace") and len(err.strip().splitlines()) == 1


def test_start_refuses_a_directory_it_cannot_write_and_makes_a_missing_one(tmp_path: Path) -> None:
    profiler = profiling.Profiler(torch.device("cpu"), "instance")
    (tmp_path / "t.json").write_text("{}")  # a file, not a directory
    for path in ("relative", str(tmp_path / "t.json"), str(tmp_path / "t.json" / "below")):
        with pytest.raises(ProtocolError, match="profile dir"):
            profiler.start(path)
    with pytest.raises(ProtocolError, match="no profile is running"):
        profiler.stop()
    assert profiling.writable_dir(str(tmp_path / "new" / "traces")).is_dir()
