"""The committed generated code is what the pinned generator makes from the committed protos."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "protos" / "xacthuc" / "v1"


def _load_generate() -> Callable[[Path], list[Path]]:
    """scripts/gen_protos.py's `generate` (a script, not a module of the package)."""
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generate: Callable[[Path], list[Path]] = module.generate
    return generate


def test_generated_code_is_not_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regenerating from protos/ reproduces every committed *_pb2* file byte for byte."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}")
    written = _load_generate()(tmp_path)
    fresh = {p.name: p.read_bytes() for p in written}
    committed = {p.name: p.read_bytes() for p in GENERATED.glob("*_pb2*.py*")}
    assert sorted(committed) == sorted(fresh), (
        "generated file set differs: run scripts/gen_protos.py"
    )
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert [] == stale, f"stale generated code: run `python scripts/gen_protos.py` ({stale})"


def test_every_error_reason_is_in_the_proto_enum_and_back() -> None:
    """errors.py and errors.proto list the same reasons, so other languages see every one."""
    from xacthuc.domain.errors import REASONS
    from xacthuc.v1 import errors_pb2

    names = errors_pb2.ErrorReason.keys()
    in_proto = {n.removeprefix("ERROR_REASON_") for n in names} - {"UNSPECIFIED"}
    assert sorted(in_proto) == sorted(REASONS)


def test_each_reason_comment_states_the_status_the_server_sends() -> None:
    """The gRPC status written in each enum comment is the one the exception carries."""
    from xacthuc.domain.errors import REASONS

    text = (GENERATED / "errors.proto").read_text()
    stated = dict(
        (reason, status)
        for status, reason in re.findall(
            r"//\s*([A-Z_]+):[^\n]*\n(?:\s*//[^\n]*\n)*\s*ERROR_REASON_([A-Z0-9_]+) =", text
        )
    )
    assert sorted(REASONS) == sorted(stated), "every reason's comment must start with its status"
    assert {r: c.code.name for r, c in REASONS.items()} == stated
