#!/usr/bin/env python3
"""Presence on etcd, whole processes against one local etcd.

    cargo build --release --examples
    python3 benches/etcd_presence.py [--beaters 100] [--interval 10] [--sessions 10000] [--seconds 60]

Starts Debian's etcd (`etcd-server`) on 127.0.0.1 with a temporary data
directory, then, in order:
  1. BEATERS `heartbeat beat --etcd` processes (no file) at --interval, and
     one `heartbeat monitor --etcd` with SESSIONS sessions registered over
     HTTP (examples/monitor_service_load.rs) and beaten over UDP;
  2. counts the keys under `heartbeat/` and the leases etcd holds;
  3. over --seconds, while every session beats once per interval over UDP:
     the CPU time of each beater, of the monitor and of etcd, and etcd's
     revision (one per write transaction) before and after;
  4. SIGKILLs one beater and times how long `heartbeat scan --etcd --watch`
     takes to print `gone` for it (its lease is 3 intervals), then SIGTERMs
     another and times the same (a clean stop revokes at once).
Prints one JSON object.
"""

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from peer_load import cpu_ns  # CPU of every thread, from schedstat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "heartbeat")
LOAD = os.path.join(TARGET, "release", "examples", "monitor_service_load")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def b64(s):
    return base64.b64encode(s.encode()).decode()


def count_keys(url, prefix):
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    answer = gateway(url, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(end), "count_only": True})
    return int(answer.get("count", 0)), int(answer["header"]["revision"])


def start_etcd(dir):
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(
        ["etcd", "--name=bench", f"--data-dir={dir}/data", f"--listen-client-urls={url}",
         f"--advertise-client-urls={url}", f"--listen-peer-urls=http://127.0.0.1:{peer}",
         f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
         f"--initial-cluster=bench=http://127.0.0.1:{peer}", "--log-outputs=stderr"],
        stdout=subprocess.DEVNULL, stderr=open(f"{dir}/etcd.log", "w"))
    deadline = time.time() + 30
    while True:
        try:
            count_keys(url, "x/")
            return proc, url
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--beaters", type=int, default=100)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    if not shutil.which("etcd"):
        sys.exit("needs etcd: apt-get install etcd-server")
    result = {"beaters": args.beaters, "interval_s": args.interval, "sessions": args.sessions}
    env = dict(os.environ, RUST_LOG="warn")
    with tempfile.TemporaryDirectory() as dir:
        etcd, url = start_etcd(dir)
        procs = []
        try:
            beaters = [subprocess.Popen([BIN, "beat", "--interval", str(args.interval), "--etcd", url],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                       for _ in range(args.beaters)]
            procs += beaters
            monitor = subprocess.Popen(
                [BIN, "monitor", "--listen", "127.0.0.1:0", "--udp", "127.0.0.1:0", "--timeout", "3600",
                 "--etcd", url],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            procs.append(monitor)
            http = monitor.stdout.readline().strip().removeprefix("listening on http://")
            udp = monitor.stdout.readline().strip().removeprefix("udp on ")
            t0 = time.time()
            subprocess.run([LOAD, "register", http, str(args.sessions), "4"], check=True,
                           stdout=subprocess.DEVNULL)
            result["register_s"] = round(time.time() - t0, 2)
            expected = args.beaters + 1 + args.sessions
            deadline = time.time() + 120
            while count_keys(url, "heartbeat/")[0] < expected and time.time() < deadline:
                time.sleep(0.2)
            result["published_within_s"] = round(time.time() - t0, 2)
            result["keys"], _ = count_keys(url, "heartbeat/")
            result["leases"] = len(gateway(url, "/v3/lease/leases", {}).get("leases", []))

            pids = [p.pid for p in beaters] + [monitor.pid, etcd.pid]
            before = {pid: cpu_ns(pid) / 1e9 for pid in pids}
            _, rev0 = count_keys(url, "heartbeat/")
            # Every session beats once per interval, over UDP, the whole window.
            rate = max(1, args.sessions // args.interval)
            subprocess.run([LOAD, "udp", udp, str(args.sessions), str(rate), str(args.seconds), "1"],
                           check=True, stdout=subprocess.DEVNULL)
            _, rev1 = count_keys(url, "heartbeat/")
            result["session_beats_per_s"] = rate
            used = {pid: cpu_ns(pid) / 1e9 - before[pid] for pid in pids}
            per_beater = sorted(used[p.pid] for p in beaters)
            result["window_s"] = args.seconds
            result["beater_cpu_ms_median"] = round(1000 * per_beater[len(per_beater) // 2], 2)
            result["beater_cpu_ms_max"] = round(1000 * per_beater[-1], 2)
            result["monitor_cpu_ms"] = round(1000 * used[monitor.pid], 1)
            result["etcd_cpu_ms"] = round(1000 * used[etcd.pid], 1)
            result["etcd_revisions_per_s"] = round((rev1 - rev0) / args.seconds, 2)

            watch = subprocess.Popen([BIN, "scan", "--etcd", url, "--watch"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
            procs.append(watch)
            gone = {}

            def follow():
                for line in watch.stdout:
                    if line.startswith("gone"):
                        gone[line.split()[4]] = time.time()

            threading.Thread(target=follow, daemon=True).start()
            time.sleep(3)  # the watch's first picture
            for name, sig, victim in [("sigkill", signal.SIGKILL, beaters[0]), ("sigterm", signal.SIGTERM, beaters[1])]:
                t = time.time()
                victim.send_signal(sig)
                deadline = t + 6 * args.interval + 30
                while str(victim.pid) not in gone and time.time() < deadline:
                    time.sleep(0.05)
                result[f"{name}_to_gone_s"] = round(gone[str(victim.pid)] - t, 3) if str(victim.pid) in gone else None
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            etcd.terminate()
            etcd.wait(timeout=30)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
