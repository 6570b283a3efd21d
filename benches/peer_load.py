#!/usr/bin/env python3
"""Measures `heartbeat serve` under load, as the hub's anchor figures were taken.

For each load tool and peer count it starts the server (its own process),
lets the tool connect N ping-capable peers (at most 100 handshakes in
flight, every PING answered at once), and reports:

- RSS of the server, empty and with N handshaked peers (/proc/PID/status);
- the time to handshake all N (the tool's ALL_HANDSHAKED line);
- idle CPU of the server over --quiet seconds with N quiet peers (the sum
  of its threads' run time from /proc/PID/task/*/schedstat; sweeps run, but nobody is idle long enough to
  be pinged);
- the first sweep that PINGs all N: first to last PING received (the tool's
  RESULT line).

Usage (from the project root, after `cargo build --release --examples`):
    python3 benches/peer_load.py --n 1000 10000 [--tool ours jmload] [--quiet 60]
    [--jmload PATH]    # built from ../shared/tools/jmload

Loopback only. The open-file limit (20,000 here) applies per process, which is
why the server and the load tool are separate processes.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def cpu_ns(pid):
    """CPU time of every thread of `pid`, in nanoseconds (schedstat: finer than ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total


def lines_of(proc, sink):
    for line in proc.stdout:
        sink.append((time.monotonic(), line.rstrip("\n")))


def wait_for(sink, prefix, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, line in list(sink):
            if line.startswith(prefix):
                return line
        time.sleep(0.05)
    raise TimeoutError(f"no {prefix!r} line within {timeout}s: {sink[-5:]}")


def run(tool_cmd, tool, n, quiet, heartbeat, sweep):
    settle = 3
    # Nobody may be pinged before the quiet window ends; then a sweep pings all.
    idle = quiet + settle + 15
    server = subprocess.Popen(
        [heartbeat, "serve", "--listen", "127.0.0.1:0", "--network", "regtest",
         "--sweep", str(sweep), "--idle", str(idle), "--hard-evict", "1500",
         "--pong-wait", "30", "--max-peers", "20000"],
        stdout=subprocess.PIPE, text=True)
    out = []
    threading.Thread(target=lines_of, args=(server, out), daemon=True).start()
    try:
        line = wait_for(out, "listening on", 10)
        addr = re.search(r"listening on (\S+)", line).group(1)
        time.sleep(1)
        rss_empty = rss_kib(server.pid)
        # Past the first sweep after the idle threshold, when everyone is pinged.
        hold = (idle // sweep + 1) * sweep + 10
        cmd = tool_cmd(addr, n, hold)
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        load_out = []
        threading.Thread(target=lines_of, args=(load, load_out), daemon=True).start()
        hs_line = wait_for(load_out, "ALL_HANDSHAKED", 120)
        hs_secs = float(re.search(r"secs=([0-9.]+)", hs_line).group(1))
        time.sleep(settle)
        rss_full = rss_kib(server.pid)
        c0, n0, t0 = cpu_ticks(server.pid), cpu_ns(server.pid), time.monotonic()
        time.sleep(quiet)
        c1, n1, t1 = cpu_ticks(server.pid), cpu_ns(server.pid), time.monotonic()
        idle_cpu = (n1 - n0) / 1e9 / (t1 - t0) * 100
        result = json.loads(wait_for(load_out, "RESULT", hold + 60)[len("RESULT "):])
        load.wait(timeout=30)
        sweeps = [s for s in result.get("sweeps", []) if s["count"] >= n * 0.99]
        spread = sweeps[0]["spread_s"] if sweeps else None
        # jmload also has kernel receive timestamps: the server's side, free of the tool's own delays.
        kernel = sweeps[0].get("kernel_spread_s") if sweeps else None
        return {
            "tool": tool, "n": n,
            "rss_empty_mib": rss_empty / 1024, "rss_mib": rss_full / 1024,
            "kib_per_peer": (rss_full - rss_empty) / n,
            "handshake_all_s": hs_secs,
            "idle_cpu_pct": idle_cpu, "idle_cpu_ms": (n1 - n0) / 1e6, "idle_cpu_ticks": c1 - c0, "quiet_s": t1 - t0,
            "sweep_spread_ms": None if spread is None else spread * 1000,
            "sweep_kernel_spread_ms": None if kernel is None else kernel * 1000,
            "handshaked": result.get("handshaked_ok"), "pings": result.get("pings_total"),
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--tool", nargs="+", default=["ours", "jmload"], choices=["ours", "jmload"])
    p.add_argument("--quiet", type=float, default=60)
    p.add_argument("--sweep", type=float, default=60, help="the hub's sweep interval (its default: 60 s)")
    p.add_argument("--heartbeat", default="target/release/heartbeat")
    p.add_argument("--ours", default="target/release/examples/peer_load")
    p.add_argument("--jmload", default="/tmp/jmload-target/release/jmload")
    a = p.parse_args()
    tools = {
        "ours": lambda addr, n, hold: [a.ours, "--addr", addr, "--n", str(n), "--window", "100",
                                       "--hold", str(hold), "--network", "regtest"],
        "jmload": lambda addr, n, hold: [a.jmload, "--addr", addr, "--n", str(n), "--window", "100",
                                         "--hold", str(hold), "--network", "regtest"],
    }
    for n in a.n:
        for tool in a.tool:
            r = run(tools[tool], tool, n, a.quiet, a.heartbeat, a.sweep)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
