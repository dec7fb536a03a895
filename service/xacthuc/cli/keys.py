"""`xacthuc keys init|rotate|show`: the signing keyring (see `xacthuc.adapters.keyring`) from the shell.

Rotation with no downtime, the operator's view: run `rotate` every period (say monthly);
every running server loads the keyring again and publishes the new next key at once, while
the key that just became active signs. `--min-next-age` (default one hour; make it at least
the JWKS max-age) refuses a rotation until verifiers have had the next key that long, so a
second rotation run by mistake cannot make a just-published key sign.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from xacthuc.adapters.keyring import DEFAULT_LEEWAY, MANIFEST, Keyring, KeyringError

DEFAULT_TOKEN_TTL = 365 * 86_400  # the longest attestation lifetime a key may have signed
# Two rotations in a row would let a key sign moments after it was first published: refuse
# unless the next key has been in the JWKS for an hour (override with --min-next-age 0).
DEFAULT_MIN_NEXT_AGE = 3600


def register(keys_subparsers: Any) -> None:
    """Add `init`, `rotate`, `prune` and `show` under the existing `keys` command."""
    init = keys_subparsers.add_parser("init", help="create a signing keyring (active + next key)")
    init.add_argument("--dir", type=Path, required=True, help="XACTHUC_SIGNING_KEYS_DIR")
    init.set_defaults(func=_init)

    rotate = keys_subparsers.add_parser(
        "rotate", help="next key signs, active key retires, a new next key is published"
    )
    rotate.add_argument("--dir", type=Path, required=True, help="XACTHUC_SIGNING_KEYS_DIR")
    rotate.add_argument(
        "--token-ttl",
        type=int,
        default=DEFAULT_TOKEN_TTL,
        help="longest lifetime (s) of a token the retiring key signed (default: %(default)s)",
    )
    rotate.add_argument(
        "--leeway",
        type=int,
        default=DEFAULT_LEEWAY,
        help="extra seconds a retired key stays published (default: %(default)s)",
    )
    rotate.add_argument(
        "--min-next-age",
        type=int,
        default=DEFAULT_MIN_NEXT_AGE,
        help="refuse if the next key was published less than this many seconds ago; at least "
        "the JWKS max-age, so every verifier has it before it signs (default: %(default)s)",
    )
    rotate.set_defaults(func=_rotate)

    prune = keys_subparsers.add_parser("prune", help="drop retired keys past their window")
    prune.add_argument("--dir", type=Path, required=True, help="XACTHUC_SIGNING_KEYS_DIR")
    prune.set_defaults(func=_prune)

    show = keys_subparsers.add_parser("show", help="print the keyring manifest and the JWKS")
    show.add_argument("--dir", type=Path, required=True, help="XACTHUC_SIGNING_KEYS_DIR")
    show.set_defaults(func=_show)


def _report(ring: Keyring) -> None:
    for e in ring.entries:
        until = f" until {e.retire_after:.0f}" if e.retire_after is not None else ""
        print(f"{e.state:8} {e.kid}{until}", file=sys.stderr)


def _init(args: argparse.Namespace) -> int:
    try:
        ring = Keyring.init(args.dir, now=time.time())
    except (KeyringError, OSError) as e:
        print(f"xacthuc: {e}", file=sys.stderr)
        return 2
    print(f"created keyring in {args.dir} (generation {ring.generation})", file=sys.stderr)
    _report(ring)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    if args.token_ttl < 0 or args.leeway < 0:
        print("xacthuc: --token-ttl and --leeway must not be negative", file=sys.stderr)
        return 2
    if not (Path(args.dir) / MANIFEST).is_file():
        # Rotation means an existing keyring: a mistyped --dir must not quietly create a new
        # one that no server reads.
        print(
            f"xacthuc: no keyring at {args.dir} (create one with `xacthuc keys init --dir "
            f"{args.dir}`)",
            file=sys.stderr,
        )
        return 2
    try:
        ring = Keyring.rotate_dir(
            args.dir,
            now=time.time(),
            token_ttl=args.token_ttl,
            leeway=args.leeway,
            min_next_age=args.min_next_age,
        )
    except (KeyringError, OSError) as e:
        print(f"xacthuc: {e}", file=sys.stderr)
        return 2
    print(f"rotated keyring in {args.dir} (generation {ring.generation})", file=sys.stderr)
    _report(ring)
    return 0


def _prune(args: argparse.Namespace) -> int:
    try:
        ring = Keyring.load(args.dir).prune(now=time.time())
    except (KeyringError, OSError) as e:
        print(f"xacthuc: {e}", file=sys.stderr)
        return 2
    _report(ring)
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        ring = Keyring.load(args.dir)
    except (KeyringError, OSError) as e:
        print(f"xacthuc: {e}", file=sys.stderr)
        return 2
    _report(ring)
    print(json.dumps(ring.published_jwks(time.time()), indent=2))
    return 0
