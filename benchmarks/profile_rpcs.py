"""Where each RPC's server CPU goes: `run.py` under py-spy, one profile per timed phase.

    .venv/bin/python benchmarks/profile_rpcs.py [--out DIR] [--rate 200] [--native] -- [run.py args]
    .venv/bin/python benchmarks/profile_rpcs.py --summarize DIR        # the table again, no run

Runs `run.py` with the arguments after `--` (e.g. `--duration 6 --warmup 1 --workers 1
--memory-starts 0`) and, each time it starts a timed phase (its `timing NAME (pids)` line),
attaches `py-spy record` (pip install py-spy; needs ptrace rights over the server process)
to the server for that phase: one collapsed-stack file per RPC in DIR (`NAME.txt`, loadable
in speedscope or flamegraph.pl), then prints, per RPC, the share of the sampled samples in
each part of the stack (`BUCKETS`: each sample goes to the innermost frame that belongs to a
bucket, so `json.dumps` called by the token signer is signing, a socket read by redis-py is
the Redis client). Only Python threads are sampled (gRPC's C core threads are not: compare
the sample count with `srv_ms`), and idle time (the event loop waiting) is left out, so the
shares are of the busy Python thread, which is where the server's CPU goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMING = re.compile(r"^\s+timing (.+) \(([\d ]+)\)$")

# (bucket, patterns): a frame reads `function (path/file.py:line)`, the path from its
# package root (`server/rpc.py`, `redis/asyncio/client.py`); with --native, Cython frames
# read `function (grpc/_cython/...pyx...)`. Each sample goes to the first bucket matching its
# innermost matching frame.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("garbage collector (--native only)", ("gc_collect", "collect_main", "collect_with_callback")),
    (
        "edge (auth, request id, bounds, metrics, access line, errors)",
        (
            "(server/rpc.py", "(server/auth.py", "(server/request_ids.py",
            "(server/request_bounds.py", "(server/grpc_errors.py", "(server/logs.py",
            "(server/redaction.py", "(prometheus_client/", "(structlog/", "(opentelemetry/",
            "(logging/", "(adapters/metrics.py", "(contextvars",
        ),
    ),
    (
        "signing (claims JSON, Ed25519)",
        ("(server/signing.py", "(domain/tokens.py", "(cryptography/", "(domain/b64.py"),
    ),
    ("Redis client (redis-py, hiredis)", ("(redis/", "hiredis")),
    ("store adapter (ours: Lua arguments, records)", ("(adapters/store/",)),
    (
        "outbound HTTP (aiohttp: SMS gateway)",
        ("(aiohttp/", "(yarl/", "(multidict/", "(adapters/sms", "(adapters/http"),
    ),
    ("protobuf", ("(google/protobuf/", "protobuf", "upb")),
    (
        "handler (servicer, verifiers, domain)",
        ("(server/verification.py", "(verifiers/", "(domain/", "(adapters/", "(server/"),
    ),
    ("gRPC (grpc.aio, cygrpc, C core)", ("(grpc/", "grpc", "cygrpc")),
    ("asyncio event loop", ("(asyncio/", "(selectors.py", "_asyncio", "select")),
]  # fmt: skip
OTHER = "other (Python runtime, stdlib)"
MAIN = "<module> (servers.py"  # the event loop thread's outermost frame


def bucket_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for name, patterns in BUCKETS:
            if any(p in frame for p in patterns):
                return name
    return OTHER


def summarize(path: Path) -> tuple[int, Counter[str]]:
    """Samples of the event loop thread, by bucket (the other Python threads are gRPC's
    poller and the stdin watcher: their CPU is in the per-thread figures)."""
    shares: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if (
            not stack
            or not count.isdigit()
            or not any(f.startswith(MAIN) for f in stack.split(";", 3)[:3])
        ):
            continue
        total += int(count)
        shares[bucket_of(stack)] += int(count)
    return total, shares


def thread_ticks(pid: str) -> dict[str, int]:
    """CPU clock ticks (user + system) of each thread of `pid`, by `name/tid`."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        ticks[f"{name}/{task.name}"] = int(fields[11]) + int(fields[12])
    return ticks


async def thread_cpu(pid: str, seconds: float, into: Path) -> None:
    """Each thread's share of one core over `seconds`, written to `into` as JSON."""
    before = thread_ticks(pid)
    await asyncio.sleep(seconds)
    after = thread_ticks(pid)
    hz = os.sysconf("SC_CLK_TCK")
    used = {k: (after[k] - before.get(k, 0)) / hz / seconds for k in after}
    _save(into, {k: round(v, 3) for k, v in used.items() if v > 0})


def _save(path: Path, data: dict[str, float]) -> None:
    path.write_text(json.dumps(data))


def report(out: Path) -> str:
    lines = []
    for path in sorted(out.glob("*.txt")):
        total, shares = summarize(path)
        if not total:
            continue
        threads = out / f"{path.stem}.threads.json"
        cpu = json.loads(threads.read_text()) if threads.exists() else {}
        lines.append(
            f"{path.stem}: {total} samples of the event loop thread; threads' CPU (cores): "
            + ", ".join(f"{k.split('/')[0]} {v:.2f}" for k, v in sorted(cpu.items()))
        )
        for name, n in shares.most_common():
            lines.append(f"  {n / total:6.1%}  {name}")
    return "\n".join(lines)


async def run(args: argparse.Namespace, bench_args: list[str]) -> int:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    duration = _duration(bench_args)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "run.py"), *bench_args, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    spies: list[asyncio.subprocess.Process] = []
    watchers: list[asyncio.Task[None]] = []
    async for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip("\n")
        print(line, file=sys.stderr, flush=True)
        m = TIMING.match(line)
        if not m:
            continue
        name = re.sub(r"[^A-Za-z0-9]+", "_", m.group(1)).strip("_")
        for i, pid in enumerate(m.group(2).split()):
            suffix = f"-{i}" if i else ""
            watchers.append(
                asyncio.create_task(
                    thread_cpu(pid, duration - 0.5, args.out / f"{name}{suffix}.threads.json")
                )
            )
            spies.append(
                await asyncio.create_subprocess_exec(
                    py_spy, "record", "--pid", pid, "--rate", str(args.rate),
                    "--duration", str(max(1, int(duration - 0.5))), "--format", "raw", "--gil",
                    *(["--native"] if args.native else []),
                    "--output", str(args.out / f"{name}{suffix}.txt"),
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )
            )  # fmt: skip
    code = await proc.wait()
    for spy in spies:
        await spy.wait()
    await asyncio.gather(*watchers, return_exceptions=True)
    print(report(args.out))
    return code


def _duration(bench_args: list[str]) -> float:
    for i, a in enumerate(bench_args):
        if a == "--duration" and i + 1 < len(bench_args):
            return float(bench_args[i + 1])
        if a.startswith("--duration="):
            return float(a.split("=", 1)[1])
    return 10.0


def main() -> int:
    argv = sys.argv[1:]
    bench_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "xacthuc-profile")
    p.add_argument("--rate", type=int, default=200, help="samples per second (200)")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--summarize", type=Path, help="print the table of an earlier run's DIR")
    args = p.parse_args(own)
    if args.summarize:
        print(report(args.summarize))
        return 0
    return asyncio.run(run(args, bench_args))


if __name__ == "__main__":
    sys.exit(main())
