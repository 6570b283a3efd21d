#!/usr/bin/env python3
"""Times `heartbeat scan` as a whole process against the syscall floor and the seed.

In a new temporary directory, writes --files heartbeat files (default 10,000,
~400 bytes, as the crate writes them, naming this process so they are FRESH;
every 10th names a dead pid, so ORPHAN). Times --runs rounds (default 7, after
one warm-up each), interleaved, of these whole processes (stdout to a file):
floor (benches/scan_floor.c, gcc -O2: readdir, openat + read to EOF + close;
also with an fstat per file, with an fstat and a kill(pid, 0), and without
O_NOFOLLOW, to price each),
`heartbeat scan DIR --format json` and `heartbeat scan DIR` (table); then the
seed's Python scan loop (re-typed below from the seed's heartbeat_scanner.py)
in this process. Prints one JSON line: ms median/min/max, ratios, the machine.

Usage (from the project root; needs gcc):
    cargo build --release --bin heartbeat
    python3 benches/scan_process.py [--files 10000] [--runs 7]
        [--heartbeat target/release/heartbeat] [--tmp PARENT_DIR]
"""
import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

# The seed's scan loop, re-typed (docstrings and comments cut) --------------

class HeartbeatStatus(Enum):
    FRESH = "fresh"
    STALE = "stale"
    ORPHAN = "orphan"


@dataclass
class HeartbeatEntry:
    path: Path
    pid: int
    uuid: str
    last_refresh: datetime
    status: HeartbeatStatus


def _is_pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_heartbeat_file(path: Path) -> tuple[int, str, datetime] | None:
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError:
        return _fallback_parse_from_filename(path)
    pid = payload.get("pid")
    uuid_str = payload.get("uuid", "")
    last_refresh_raw = payload.get("last_refresh")
    if not isinstance(pid, int) or not isinstance(uuid_str, str) or not isinstance(last_refresh_raw, str):
        return _fallback_parse_from_filename(path)
    try:
        last_refresh = datetime.fromisoformat(last_refresh_raw.replace("Z", "+00:00"))
    except ValueError:
        return _fallback_parse_from_filename(path)
    if last_refresh.tzinfo is None:
        return pid, uuid_str, last_refresh.replace(tzinfo=timezone.utc)
    return pid, uuid_str, last_refresh.astimezone(timezone.utc)


def _fallback_parse_from_filename(path: Path) -> tuple[int, str, datetime] | None:
    parts = path.stem.split("-", 2)
    if len(parts) != 3 or parts[0] != "heartbeat":
        return None
    try:
        pid = int(parts[1])
        mtime = path.stat().st_mtime
    except (ValueError, FileNotFoundError):
        return None
    return pid, parts[2], datetime.fromtimestamp(mtime, tz=timezone.utc)


def seed_scan(wrappers_dir: Path, stale_threshold_sec: int = 90) -> list[HeartbeatEntry]:
    entries: list[HeartbeatEntry] = []
    if not wrappers_dir.exists():
        return entries
    try:
        candidates = list(wrappers_dir.glob("heartbeat-*.json"))
    except OSError:
        return entries
    now = datetime.now(timezone.utc)
    for path in candidates:
        parsed = _parse_heartbeat_file(path)
        if parsed is None:
            continue
        pid, uuid_str, last_refresh = parsed
        age_sec = (now - last_refresh).total_seconds()
        is_alive = _is_pid_alive(pid)
        if age_sec > stale_threshold_sec:
            status = HeartbeatStatus.STALE
        elif not is_alive:
            status = HeartbeatStatus.ORPHAN
        else:
            status = HeartbeatStatus.FRESH
        entries.append(HeartbeatEntry(path, pid, uuid_str, last_refresh, status))
    return entries


# The files ------------------------------------------------------------------

def iso(t: float) -> str:
    """RFC 3339, UTC, microseconds, +00:00: what the crate's format_timestamp writes."""
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="microseconds")


def make_files(d: Path, n: int) -> int:
    """Writes n heartbeat files into d as the crate does (pretty JSON, 2-space indent,
    trailing newline, 0644); every 10th names a dead pid. Returns the total bytes."""
    me = os.getpid()
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    dead = subprocess.Popen(["true"])  # run and reaped: kill(pid, 0) says ESRCH
    dead.wait()
    host, now, total = socket.gethostname(), time.time(), 0
    for i in range(n):
        pid = dead.pid if i % 10 == 9 else me
        uid, beat = str(uuidlib.uuid4()), iso(now)
        state = {"schema_version": 1, "pid": pid, "uuid": uid, "hostname": host,
                 "started_at": iso(now - 60), "timestamp": beat, "last_refresh": beat,
                 "interval_sec": 5.0, "metadata": {}, "process_start_ticks": ticks, "boot_id": boot_id}
        data = (json.dumps(state, indent=2) + "\n").encode()
        path = d / f"heartbeat-{pid}-{uid}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.write(fd, data)
        os.close(fd)
        total += len(data)
    return total


# Timing ---------------------------------------------------------------------

def timed(cmd: list[str], out: Path) -> float:
    """Milliseconds for one whole process, its stdout to out; exit 0 or 1 are fine for scan."""
    with out.open("wb") as f:
        t0 = time.perf_counter()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE)
        dt = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        raise SystemExit(f"{cmd} exited {r.returncode}: {r.stderr.decode(errors='replace')}")
    return dt * 1000


def machine(d: Path) -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mounts = [l.split()[1:3] for l in Path("/proc/mounts").read_text().splitlines()]
    fs = max((m for m in mounts if str(d).startswith(m[0].rstrip("/") + "/")), key=lambda m: len(m[0]))[1]
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "fs": fs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--heartbeat", default="target/release/heartbeat")
    ap.add_argument("--tmp", help="parent of the temporary directory (default: $TMPDIR or /tmp)")
    args = ap.parse_args()
    hb = str(Path(args.heartbeat).resolve())
    if not os.access(hb, os.X_OK):
        raise SystemExit(f"{hb} not found: run `cargo build --release --bin heartbeat` first")
    tmp = Path(tempfile.mkdtemp(prefix="scan_process.", dir=args.tmp))
    try:
        d, floor = tmp / "wrappers", tmp / "scan_floor"
        d.mkdir()
        total = make_files(d, args.files)
        src = Path(__file__).resolve().parent / "scan_floor.c"
        subprocess.run(["gcc", "-O2", "-o", str(floor), str(src)], check=True)
        # The floor, then the floor with each thing the scanner adds, to price
        # them: the fstat safety check, the kill(pid, 0) liveness probe, and
        # (priced by leaving it out) O_NOFOLLOW.
        cmds = {"floor": [str(floor), str(d)],
                "floor+fstat": [str(floor), str(d), "f"],
                "floor+fstat+kill": [str(floor), str(d), "fk"],
                "floor-nofollow": [str(floor), str(d), "F"],
                "json": [hb, "scan", str(d), "--format", "json"],
                "table": [hb, "scan", str(d)]}
        outs = {k: tmp / f"{k}.out" for k in cmds}
        ms: dict[str, list[float]] = {k: [] for k in [*cmds, "seed"]}
        started = time.time()
        for k, cmd in cmds.items():  # warm-up: page cache, binaries
            timed(cmd, outs[k])
        for _ in range(args.runs):
            for k, cmd in cmds.items():
                ms[k].append(timed(cmd, outs[k]))
        seed_scan(d)  # warm-up
        for _ in range(args.runs):
            t0 = time.perf_counter()
            entries = seed_scan(d)
            ms["seed"].append((time.perf_counter() - t0) * 1000)
        if time.time() - started > 80:  # the files were written just before `started`
            print("warning: timing took over 80 s; beats older than 90 s turn STALE", file=sys.stderr)
        # Sanity: all saw every file, with the statuses the files were made for.
        for k in ("floor", "floor+fstat", "floor+fstat+kill", "floor-nofollow"):
            if outs[k].read_text().split() != [str(args.files), str(total)]:
                raise SystemExit(f"{k} printed {outs[k].read_text()!r}, expected {args.files} {total}")
        statuses = {"json": Counter(json.loads(l)["status"] for l in outs["json"].read_text().splitlines()),
                    "seed": Counter(e.status.value for e in entries)}
        rows = len(outs["table"].read_text().splitlines()) - 1  # minus the header
        if rows != args.files or any(c.total() != args.files for c in statuses.values()):
            raise SystemExit(f"counts differ: table {rows} rows, statuses {statuses}")

        med = {k: statistics.median(v) for k, v in ms.items()}
        print(json.dumps({
            "files": args.files, "bytes_per_file": round(total / args.files, 1), "runs": args.runs,
            "ms": {k: {"median": round(med[k], 2), "min": round(min(v), 2), "max": round(max(v), 2)}
                   for k, v in ms.items()},
            "ratio": {"json/floor": round(med["json"] / med["floor"], 2),
                      "json/floor+fstat+kill": round(med["json"] / med["floor+fstat+kill"], 2),
                      "table/json": round(med["table"] / med["json"], 2),
                      "seed/json": round(med["seed"] / med["json"], 2)},
            "statuses": statuses,
            "machine": machine(d),
        }))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
