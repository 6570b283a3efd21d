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

Usage (from the project root, after `cargo build --release --examples --bin heartbeat`):
    python3 benches/peer_load.py --n 1000 10000 [--tool ours jmload] [--quiet 60]
    [--jmload PATH]    # built from ../shared/tools/jmload

Further scenarios (`--scenario`, any of them, run one after the other, each
with a hub of its own; `--small` for a quick check at small sizes). Each
reports the hub's CPU (user+sys from /proc/PID/stat, and the threads'
schedstat run time) and RSS (sampled every 0.25 s) beside the tool's RESULT:

- route:     1,000 makers + 9,000 takers (--small: 50 + 450); one taker asks
             `!orderbook` a second for --hold s (default 60), then three
             single PUBMSGs fanned out to everyone.
- broadcast: 10 PUBMSGs a second (--broadcast-rate) to 10,000 peers
             (1,000 makers + 9,000 takers; --small: 100) for --hold s.
- attack:    500 makers (--small: 50) with 4 KiB receive buffers send 22
             GETPEERLISTs each and never read, held 45 s (past a 30 s write
             deadline); host TCP memory from /proc/net/sockstat. 22 requests
             trip a 3-a-minute GETPEERLIST budget at once; `--getpeerlist 3
             --attack-hold 70` stays within it, so only the write deadline
             can close the stalled sockets.
- stall:     200 ping-capable peers (--small: 20), hub run with --sweep 1
             --idle 2 --hard-evict 6 --pong-wait 1; SIGSTOP the hub 10 s, SIGCONT,
             count the peers evicted within the next 10 s.
- churn:     2,000 idle takers (--small: 200), then 300 (--small: 30) makers
             that handshake and close one at a time; hub CPU time of the churn.
- ping:      the first part of this docstring (the default).

    python3 benches/peer_load.py --scenario route broadcast attack stall churn [--small]

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

import resource

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Extra arguments for every `heartbeat serve` this script starts (--hub-args).
HUB_ARGS = []


def raise_nofile():
    """Soft open-file limit up to the hard one; the hub and the tool inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


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


def host_ticks():
    """(all, idle + iowait) CPU ticks of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


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
         "--pong-wait", "30", "--max-peers", "20000"] + HUB_ARGS,
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


class Sampler:
    """RSS and CPU of the hub every `period` s, in a thread, until stopped."""

    def __init__(self, pid, period=0.25):
        self.pid, self.period, self.samples = pid, period, []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def sample(self):
        try:
            return (time.monotonic(), rss_kib(self.pid), cpu_ticks(self.pid), cpu_ns(self.pid), host_ticks())
        except (FileNotFoundError, ProcessLookupError, RuntimeError):
            return None

    def loop(self):
        while not self.stop_flag.is_set():
            s = self.sample()
            if s:
                self.samples.append(s)
            self.stop_flag.wait(self.period)

    def stop(self):
        self.stop_flag.set()
        self.thread.join(timeout=5)

    def window(self, t0, t1):
        """Hub figures between monotonic times t0 and t1 (the samples nearest inside)."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return {"cpu_s": None, "rss_peak_mib": None}
        a, b = inside[0], inside[-1]
        return {
            "secs": round(b[0] - a[0], 3),
            "cpu_s": round((b[2] - a[2]) / CLK_TCK, 3),
            "cpu_sched_s": round((b[3] - a[3]) / 1e9, 3),
            "cpu_pct": round((b[3] - a[3]) / 1e9 / max(b[0] - a[0], 1e-9) * 100, 1),
            "host_busy_pct": round((1 - (b[4][1] - a[4][1]) / max(b[4][0] - a[4][0], 1)) * 100, 1),
            "rss_start_mib": round(a[1] / 1024, 1),
            "rss_peak_mib": round(max(s[1] for s in inside) / 1024, 1),
            "rss_end_mib": round(b[1] / 1024, 1),
        }


def start_hub(heartbeat, extra):
    cmd = [heartbeat, "serve", "--listen", "127.0.0.1:0", "--network", "regtest", "--max-peers", "20000"] + extra + HUB_ARGS
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = []
    threading.Thread(target=lines_of, args=(server, out), daemon=True).start()
    line = wait_for(out, "listening on", 10)
    return server, re.search(r"listening on (\S+)", line).group(1), out


def stop_hub(server):
    if server.poll() is None:
        server.send_signal(signal.SIGCONT)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


def start_tool(tool, addr, args):
    cmd = [tool, "--addr", addr, "--network", "regtest"] + [str(x) for x in args]
    print("# " + " ".join(cmd), file=sys.stderr, flush=True)
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = []
    threading.Thread(target=lines_of, args=(load, out), daemon=True).start()
    return load, out


def line_time(sink, prefix):
    for t, line in list(sink):
        if line.startswith(prefix):
            return t, line
    return None, None


def finish_tool(load, out, timeout):
    try:
        result = json.loads(wait_for(out, "RESULT", timeout)[len("RESULT "):])
    finally:
        try:
            load.wait(timeout=10)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait(timeout=5)
    return result


def scenario(name, a, hub_args, tool_args, budget):
    """Start a hub, run the tool against it, and measure the hub meanwhile."""
    server, addr, _ = start_hub(a.heartbeat, hub_args)
    sampler = Sampler(server.pid)
    try:
        time.sleep(1)
        t_start = time.monotonic()
        load, out = start_tool(a.ours, addr, tool_args)
        result = finish_tool(load, out, budget)
        t_end = time.monotonic()
        time.sleep(0.5)
        sampler.stop()
        hs_t, _ = line_time(out, "ALL_HANDSHAKED")
        report = {"scenario": name, "hub_args": hub_args, "tool_args": tool_args,
                  "hub_rss_empty_mib": round(sampler.samples[0][1] / 1024, 1) if sampler.samples else None,
                  "hub_whole_run": sampler.window(t_start, t_end + 0.5)}
        if hs_t:
            report["hub_after_handshakes"] = sampler.window(hs_t, t_end + 0.5)
        phases = [(t, l.split()[1]) for t, l in out if l.startswith("PHASE ")]
        for (t0, ph), (t1, _) in zip(phases, phases[1:]):
            report[f"hub_during_{ph}"] = sampler.window(t0, t1)
        report["result"] = result
        return report
    finally:
        sampler.stop()
        stop_hub(server)


def run_route(a):
    m, t = (50, 450) if a.small else (1000, 9000)
    hold = a.hold if a.hold is not None else (20 if a.small else 60)
    return scenario("route", a, [], ["--mode", "route", "--makers", m, "--takers", t, "--rate", a.rate,
                                     "--phases", "orderbook,fanout", "--fanout", 3, "--hold", hold,
                                     "--timeout", 10], hold + 200)


def run_broadcast(a):
    m, t = (10, 90) if a.small else (1000, 9000)
    hold = a.hold if a.hold is not None else (10 if a.small else 60)
    return scenario("broadcast", a, [], ["--mode", "route", "--makers", m, "--takers", t,
                                         "--broadcast-rate", a.broadcast_rate, "--phases", "broadcast",
                                         "--hold", hold, "--timeout", 15], hold + 200)


def run_attack(a):
    k = 50 if a.small else 500
    hold = a.attack_hold
    return scenario("attack", a, [], ["--mode", "attack", "--k", k, "--rcvbuf", 4096, "--getpeerlist", a.getpeerlist,
                                      "--hold", hold, "--drain", 10], hold + 120)


def run_churn(a):
    n, cycles = (200, 30) if a.small else (2000, 300)
    server, addr, _ = start_hub(a.heartbeat, [])
    sampler = Sampler(server.pid, period=0.1)
    try:
        load, out = start_tool(a.ours, addr, ["--mode", "churn", "--n", n, "--cycles", cycles, "--timeout", 10])
        wait_for(out, "CHURN_READY", 120)
        before = sampler.sample()
        wait_for(out, "CHURN_END", 120)
        after = sampler.sample()
        result = finish_tool(load, out, 60)
        sampler.stop()
        return {"scenario": "churn", "idle_peers": n, "cycles": cycles,
                "hub_cpu_s": round((after[2] - before[2]) / CLK_TCK, 3),
                "hub_cpu_sched_s": round((after[3] - before[3]) / 1e9, 3),
                "hub_cpu_per_cycle_ms": round((after[3] - before[3]) / 1e6 / max(result["cycles_done"], 1), 3),
                "window_s": round(after[0] - before[0], 3),
                "hub_rss_before_mib": round(before[1] / 1024, 1), "hub_rss_after_mib": round(after[1] / 1024, 1),
                "result": result}
    finally:
        sampler.stop()
        stop_hub(server)


def run_stall(a):
    n = 20 if a.small else 200
    settle, stopped, after = 5, 10, 10
    hub_args = ["--sweep", "1", "--idle", "2", "--hard-evict", "6", "--pong-wait", "1"]
    server, addr, _ = start_hub(a.heartbeat, hub_args)
    try:
        load, out = start_tool(a.ours, addr, ["--mode", "ping", "--n", n, "--hold", settle + stopped + after + 5])
        wait_for(out, "ALL_HANDSHAKED", 60)
        time.sleep(settle)
        t_stop = time.monotonic()
        server.send_signal(signal.SIGSTOP)
        time.sleep(stopped)
        t_cont = time.monotonic()
        server.send_signal(signal.SIGCONT)
        time.sleep(after)
        result = finish_tool(load, out, 60)
        closed = result["closed"]["closed_mono_s"]
        return {"scenario": "stall", "peers": n, "hub_args": hub_args, "stopped_s": stopped,
                "evicted_before_stop": sum(1 for t in closed if t < t_stop),
                "evicted_while_stopped": sum(1 for t in closed if t_stop <= t < t_cont),
                f"evicted_within_{after}s_of_cont": sum(1 for t in closed if t_cont <= t < t_cont + after),
                "evicted_later": sum(1 for t in closed if t >= t_cont + after),
                "first_eviction_after_cont_s": min((t - t_cont for t in closed if t >= t_cont), default=None),
                "result": result}
    finally:
        stop_hub(server)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", nargs="+", default=["ping"],
                   choices=["ping", "route", "broadcast", "attack", "stall", "churn"])
    p.add_argument("--small", action="store_true", help="small sizes, for a quick check")
    p.add_argument("--hold", type=float, default=None, help="route/broadcast: seconds of load (60; --small 10-20)")
    p.add_argument("--rate", type=float, default=1.0, help="route: !orderbook asks a second")
    p.add_argument("--broadcast-rate", type=float, default=10.0)
    p.add_argument("--attack-hold", type=float, default=45.0)
    p.add_argument("--getpeerlist", type=int, default=22,
                   help="attack: GETPEERLISTs each attacker sends (3 stays within a 3-a-minute budget, "
                        "so only a write deadline can end the stall)")
    p.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--tool", nargs="+", default=["ours", "jmload"], choices=["ours", "jmload"])
    p.add_argument("--quiet", type=float, default=60)
    p.add_argument("--sweep", type=float, default=60, help="the hub's sweep interval (its default: 60 s)")
    p.add_argument("--heartbeat", default="target/release/heartbeat")
    p.add_argument("--hub-args", default="", help="more arguments for `heartbeat serve`, e.g. '--max-pending 5000'")
    p.add_argument("--ours", default="target/release/examples/peer_load")
    p.add_argument("--jmload", default="/tmp/jmload-target/release/jmload")
    a = p.parse_args()
    HUB_ARGS.extend(a.hub_args.split())
    print("# open-file limit %s" % (raise_nofile(),), file=sys.stderr)
    runners = {"route": run_route, "broadcast": run_broadcast, "attack": run_attack,
               "stall": run_stall, "churn": run_churn}
    for name in a.scenario:
        if name != "ping":
            print(json.dumps(runners[name](a)), flush=True)
    if "ping" not in a.scenario:
        return
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
