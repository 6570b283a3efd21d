#!/usr/bin/env python3
"""`heartbeat monitor` under load, from other processes.

    cargo build --release --examples
    python3 benches/monitor_service.py [--sessions 1000000] [--udp-rate 200000] [--seconds 10]

Starts the release binary on loopback and measures, in order:
  1. memory: the monitor's resident set before and after registering
     SESSIONS sessions over HTTP (examples/monitor_service_load.rs, 8
     keep-alive connections), beside the library's own figure
     (examples/monitor_load.rs, the same number of sessions in-process);
     then the time of GET /metrics and of a 1,000-session page (5 each);
  2. idle: CPU time the monitor uses over 5 s with nothing arriving;
  3. UDP: one datagram per beat at --udp-rate for --seconds, ids of the
     registered sessions in turn; sent (by the load tool), dropped by the
     kernel (/proc/net/snmp Udp RcvbufErrors, host-wide), and counted by the
     monitor (/metrics): every datagram the kernel delivered must be counted;
  4. HTTP: `wrk -t2 -c64` POSTing /sessions/ID/beat over keep-alive for
     --seconds (wrk is Debian's `wrk` package).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "heartbeat")
LOAD = os.path.join(TARGET, "release", "examples", "monitor_service_load")
LIBRARY = os.path.join(TARGET, "release", "examples", "monitor_load")

WRK_SCRIPT = """
wrk.method = "POST"
local n = %d
request = function()
  return wrk.format("POST", string.format("/sessions/s%%07d/beat", math.random(0, n - 1)))
end
"""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def udp_snmp():
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


def metrics(http):
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = int(value)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--udp-rate", type=int, default=200_000)
    ap.add_argument("--udp-threads", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--skip-library", action="store_true")
    args = ap.parse_args()
    for path in (BIN, LOAD, LIBRARY):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run `cargo build --release --examples` first")

    result = {"sessions": args.sessions}
    if not args.skip_library:
        lib = subprocess.run([LIBRARY, str(args.sessions)], capture_output=True, text=True, check=True).stdout
        m = re.search(r"([\d.]+) bytes per session", lib)
        result["library_bytes_per_session"] = float(m.group(1)) if m else lib.splitlines()[:3]

    monitor = subprocess.Popen(
        [BIN, "monitor", "--listen", "127.0.0.1:0", "--udp", "127.0.0.1:0", "--timeout", "3600",
         "--max-sessions", str(args.sessions)],
        stdout=subprocess.PIPE, text=True)
    try:
        http = monitor.stdout.readline().strip().removeprefix("listening on http://")
        udp = monitor.stdout.readline().strip().removeprefix("udp on ")
        time.sleep(0.5)
        base = rss_kib(monitor.pid)
        print("registering...", file=sys.stderr)
        reg = json.loads(subprocess.run([LOAD, "register", http, str(args.sessions), "8"],
                                        capture_output=True, text=True, check=True).stdout)
        after = rss_kib(monitor.pid)
        result["register"] = reg
        result["rss_base_kib"] = base
        result["rss_after_kib"] = after
        result["service_bytes_per_session"] = round((after - base) * 1024 / args.sessions, 1)

        # What a scrape and a page cost at this size (they walk every session).
        for name, path in (("metrics", "/metrics"), ("page", "/sessions?limit=1000"),
                           ("page_after", "/sessions?after=s0500000&limit=1000")):
            times = []
            for _ in range(5):
                t = time.perf_counter()
                with urllib.request.urlopen(f"http://{http}{path}", timeout=60) as r:
                    r.read()
                times.append(time.perf_counter() - t)
            result[f"{name}_ms"] = sorted(round(x * 1000, 1) for x in times)

        ticks = cpu_ticks(monitor.pid)
        time.sleep(5)
        result["idle_cpu_ticks_in_5s"] = cpu_ticks(monitor.pid) - ticks

        print("udp...", file=sys.stderr)
        before_snmp, before = udp_snmp(), metrics(http)
        load = json.loads(subprocess.run(
            [LOAD, "udp", udp, str(args.sessions), str(args.udp_rate), str(args.seconds), str(args.udp_threads)],
            capture_output=True, text=True, check=True).stdout)
        # Wait until the monitor has taken in what the kernel holds.
        last = None
        while True:
            now = metrics(http)
            if now["heartbeat_monitor_udp_datagrams_total"] == last:
                break
            last = now["heartbeat_monitor_udp_datagrams_total"]
            time.sleep(0.5)
        after_snmp = udp_snmp()
        counted = now["heartbeat_monitor_udp_datagrams_total"] - before["heartbeat_monitor_udp_datagrams_total"]
        beats = (now['heartbeat_monitor_beats_received_total{transport="udp"}']
                 - before['heartbeat_monitor_beats_received_total{transport="udp"}'])
        kernel_dropped = after_snmp["RcvbufErrors"] - before_snmp["RcvbufErrors"]
        result["udp"] = {
            "sent": load["sent"],
            "send_errors": load["send_errors"],
            "seconds": load["seconds"],
            "sent_per_second": load["per_second"],
            "kernel_dropped": kernel_dropped,
            "counted_by_monitor": counted,
            "beats_taken": beats,
            "beats_taken_per_second": round(beats / load["seconds"]),
            "lost_after_delivery": load["sent"] - kernel_dropped - counted,
        }

        print("http...", file=sys.stderr)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(WRK_SCRIPT % args.sessions)
            script = f.name
        wrk = subprocess.run(["wrk", "-t2", "-c64", f"-d{args.seconds}s", "-s", script, f"http://{http}"],
                             capture_output=True, text=True, check=True).stdout
        os.unlink(script)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", wrk)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)
        latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", wrk)
        result["http"] = {
            "requests_per_second": float(rps.group(1)) if rps else None,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "latency_avg": latency.group(1) if latency else None,
            "latency_max": latency.group(3) if latency else None,
        }
        result["rss_end_kib"] = rss_kib(monitor.pid)
    finally:
        monitor.terminate()
        monitor.wait(timeout=60)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
