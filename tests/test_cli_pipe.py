"""The CLI under a pipe whose reader has gone (`xacthuc ... | head`): no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_closed_stdout_pipe_ends_the_cli_without_a_traceback(tmp_path: Path) -> None:
    """`xacthuc keys show` writes to a pipe its reader already closed: exit status 1, and no
    BrokenPipeError traceback on stderr (nor 'Exception ignored' at exit)."""
    cli = [sys.executable, "-m", "xacthuc.cli.main"]
    subprocess.run(
        [*cli, "keys", "init", "--dir", str(tmp_path / "ring")], check=True, capture_output=True
    )
    show = subprocess.Popen(
        [*cli, "keys", "show", "--dir", str(tmp_path / "ring")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert show.stdout is not None
    assert show.stderr is not None
    show.stdout.close()  # the reader leaves before the first byte
    stderr = show.stderr.read()
    assert 1 == show.wait(timeout=60)
    assert b"Traceback" not in stderr
    assert b"Exception ignored" not in stderr
