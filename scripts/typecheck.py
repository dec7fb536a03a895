"""Run mypy --strict over the installed namespace `xacthuc` as it is laid out in the repository.

The project maps several top-level folders into one package (pyproject `package-dir`), which
an editable install resolves with an import hook mypy cannot follow. This script builds that
layout from symbolic links in a temporary folder and checks it there with the project's mypy
settings (`[tool.mypy]` in pyproject.toml). Usage: `python scripts/typecheck.py`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory() as tmp:
        for package, folder in sorted(package_dir.items()):  # parents before children
            target = Path(tmp, *package.split("."))
            if target.exists() or target.is_symlink():  # already inside its parent's folder
                continue
            if "." not in package:
                # The root package is a real folder of links, so that links for packages
                # kept in other top-level folders land here, never in the repository.
                target.mkdir(parents=True)
                for entry in (ROOT / folder).iterdir():
                    (target / entry.name).symlink_to(entry)
            else:
                target.symlink_to(ROOT / folder, target_is_directory=True)
        run = subprocess.run(  # noqa: S603  (our own interpreter, fixed arguments)
            [
                sys.executable,
                "-m",
                "mypy",
                "--config-file",
                str(ROOT / "pyproject.toml"),
                "-p",
                "xacthuc",
            ],
            cwd=tmp,
            check=False,
        )
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
