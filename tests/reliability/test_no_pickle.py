"""Nothing in the shipped code unpickles, or evaluates strings, anywhere."""

from __future__ import annotations

import ast

from tests.support import ROOT

BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}
BANNED_ATTRS = {"recv_pyobj", "send_pyobj", "recv_serialized", "send_serialized"}
BANNED_CALLS = {"eval", "exec", "__import__"}


def violations(path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Attribute) and node.attr in BANNED_ATTRS:
            found.append(f"{where} .{node.attr}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in BANNED_CALLS:
                found.append(f"{where} {func.id}()")
            # torch.load unpickles unless weights_only=True is given explicitly.
            if isinstance(func, ast.Attribute) and func.attr == "load" and getattr(func.value, "id", "") == "torch":
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                if not safe:
                    found.append(f"{where} torch.load without weights_only=True")
    return found


def test_no_pickle_or_eval_in_source():
    files = [p for d in ("common", "server", "client") for p in (ROOT / d).rglob("*.py")]
    files += [p for p in (ROOT / "sweep.py",) if p.exists()]
    assert len(files) > 10  # the guard must actually look at the tree
    hits = [v for path in files for v in violations(path)]
    assert not hits, "unsafe deserialisation/evaluation:\n" + "\n".join(hits)


def test_guard_catches_pickle(tmp_path, monkeypatch):
    monkeypatch.setattr("tests.reliability.test_no_pickle.ROOT", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport torch\nsock.recv_pyobj()\neval('1')\ntorch.load('x')\n")
    assert len(violations(bad)) == 4
