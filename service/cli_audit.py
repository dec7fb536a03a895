"""`xacthuc audit ...`: offline tools for compliance teams (verify an export, reports)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the `audit` command group to the top-level subparsers."""
    audit = sub.add_parser("audit", help="verify and report on exported audit logs")
    audit.add_subparsers(dest="audit_command", required=True)
    audit.set_defaults(func=lambda args: _not_yet(args))


def _not_yet(args: argparse.Namespace) -> int:
    return 2
