#!/usr/bin/env bash
# Run xacthuc with embedded defaults (dev mode, in-memory store, console SMS): no Redis needed.
# Prints a demo API key for the `demo` platform at start, and each SMS (its code included) to
# stdout: the console sender is chosen here explicitly (`xacthuc serve` alone prints no code).
# Usage: scripts/serve.sh [--listen HOST:PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[server]'
export XACTHUC_SMS_BACKEND=${XACTHUC_SMS_BACKEND:-console}
exec .venv/bin/xacthuc serve "$@"
