#!/usr/bin/env python3
"""pgbench select-only through pg-iam-proxy vs. directly over TLS, against the local stand-in.

Same user (iam_dbuser, IAM token auth), same data, interleaved rounds. Each round runs:
  direct  pgbench -> PostgreSQL over TLS (verify-full)
  floor   pgbench -> examples/floor_relay -> PostgreSQL, TLS end to end: a relay that does
          nothing but copy bytes, i.e. the cost of one more socket hop and its wake-ups,
          which any proxy pays and no proxy can go below
  proxy   pgbench -> pg-iam-proxy (TCP, and Unix socket) -> PostgreSQL over TLS
and prints the median ratios proxy/direct, floor/direct and proxy/floor.

Two topologies:
  shared  every process on every CPU (server, proxy and pgbench compete for the same cores)
  split   the server pinned to the last CPU, pgbench, relay and proxy to the others: how it
          is deployed, with the proxy beside the app and Aurora on another machine
Then the latency one client sees, and the proxy's resident memory per idle connection.

    python3 benches/pgbench_compare.py [--rounds 5] [--seconds 10] [--clients 8] [--idle 500]
                                       [--topology both|shared|split] [--bin target/release/pg-iam-proxy]
"""

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import threading

from common import (add_bin_argument, aws_env, ensure_floor, ensure_proxy, free_port, pgbench_bin, pinned,
                    prepare_data, proxy_argv, rss_kib, start_floor, start_standin, stop)


def start_proxy(binary, info, port, socket_dir, cpus=None):
    unix = ["--unix-socket", socket_dir] if socket_dir else []
    proc = subprocess.Popen(
        proxy_argv(binary, info, port, *unix), env=aws_env(info), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, preexec_fn=pinned(cpus))
    for line in proc.stderr:
        if "listening" in line:
            # Keep reading its log: a full pipe would stop the proxy at its next log line.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc
    raise SystemExit("proxy did not start")


def run_pgbench(args, host, port, env, cpus=None):
    out = subprocess.run(
        [pgbench_bin(), "-n", "-S", "-c", str(args.clients), "-j", "2", "-T", str(args.seconds),
         "-h", host, "-p", str(port), "-U", "iam_dbuser", "labdb"],
        env=env, capture_output=True, text=True, check=True, preexec_fn=pinned(cpus)).stdout
    return float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out).group(1))


def latency_us(host, port, env, seconds):
    """Average latency of one client running select-only queries back to back."""
    out = subprocess.run(
        [pgbench_bin(), "-n", "-S", "-c", "1", "-T", str(seconds), "-h", host, "-p", str(port),
         "-U", "iam_dbuser", "labdb"], env=env, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"latency average = ([0-9.]+) ms", out).group(1)) * 1000


def idle_memory(proxy_port, pid, count):
    import psycopg
    before = rss_kib(pid)
    conns = [psycopg.connect(host="127.0.0.1", port=proxy_port, user="iam_dbuser", dbname="labdb",
                             sslmode="disable") for _ in range(count)]
    for c in conns:  # every session really works
        c.execute("select 1").fetchone()
    after = rss_kib(pid)
    for c in conns:
        c.close()
    return before, after


def rounds(args, label, contenders):
    """Interleaved rounds of `contenders` [(name, host, port, env, cpus)]; the first is the baseline."""
    names = [c[0] for c in contenders]
    ratios = {n: [] for n in names[1:]}
    print(f"{label}: pgbench -S -c {args.clients} -j 2 -T {args.seconds}, {args.rounds} interleaved rounds")
    for r in range(args.rounds):
        tps = {name: run_pgbench(args, host, port, env, cpus) for name, host, port, env, cpus in contenders}
        base = tps[names[0]]
        for n in names[1:]:
            ratios[n].append(tps[n] / base)
        print(f"  round {r + 1}: " + " | ".join(
            f"{n} {tps[n]:6.0f} tps" + ("" if n == names[0] else f" ({tps[n] / base:.3f})") for n in names))
    med = {n: statistics.median(v) for n, v in ratios.items()}
    print(f"  median ratio to {names[0]}: " + ", ".join(f"{n} {v:.3f}" for n, v in med.items()))
    if "floor relay" in med:
        print(f"  proxy / floor relay: {med['proxy via TCP'] / med['floor relay']:.3f}")
    return med


def postmaster_pid(info):
    with open(os.path.join(info["dir"], "data", "postmaster.pid")) as f:
        return int(f.readline())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--idle", type=int, default=500, help="idle connections for the memory check")
    ap.add_argument("--topology", choices=["both", "shared", "split"], default="both")
    add_bin_argument(ap)
    args = ap.parse_args()
    binary = ensure_proxy(args.bin)
    ensure_floor()
    standin, info = start_standin()
    procs = []
    try:
        prepare_data(info, args.scale)
        token = subprocess.run([binary, "token", "--host", "localhost", "--port", str(info["port"]),
                                "--user", "iam_dbuser"], env=aws_env(info), capture_output=True,
                               text=True, check=True).stdout.strip()
        direct_env = dict(os.environ, PGPASSWORD=token, PGSSLMODE="verify-full",
                          PGSSLROOTCERT=info["ca_file"])
        proxy_env = dict(os.environ, PGSSLMODE="disable")
        proxy_env.pop("PGPASSWORD", None)
        direct = ("direct TLS", "localhost", info["port"], direct_env)

        port, socket_dir = free_port(), tempfile.mkdtemp()
        proxy = start_proxy(binary, info, port, socket_dir)
        floor, floor_port = start_floor(info)
        procs += [proxy, floor]
        if args.topology in ("both", "shared"):
            rounds(args, "shared CPUs", [
                (*direct, None), ("floor relay", "localhost", floor_port, direct_env, None),
                ("proxy via TCP", "127.0.0.1", port, proxy_env, None),
                ("proxy via Unix socket", socket_dir, port, proxy_env, None)])
        direct_us = latency_us("localhost", info["port"], direct_env, args.seconds)
        floor_us = latency_us("localhost", floor_port, direct_env, args.seconds)
        proxy_us = latency_us("127.0.0.1", port, proxy_env, args.seconds)
        print(f"one client (-c 1): latency direct {direct_us:.0f} us, through floor relay {floor_us:.0f} us "
              f"(+{floor_us - direct_us:.0f}), through proxy {proxy_us:.0f} us (+{proxy_us - direct_us:.0f}); "
              f"ratio proxy/direct {direct_us / proxy_us:.3f}")
        before, after = idle_memory(port, proxy.pid, args.idle)
        per = (after - before) * 1024 / args.idle
        print(f"idle connections: {args.idle}; proxy RSS {before} KiB -> {after} KiB; "
              f"{per / 1024:.1f} KiB per idle proxied connection")

        cpus = sorted(os.sched_getaffinity(0))
        if args.topology in ("both", "split") and len(cpus) >= 2:
            server, client = {cpus[-1]}, set(cpus[:-1])
            os.sched_setaffinity(postmaster_pid(info), server)  # new backends inherit it
            split_port = free_port()
            procs.append(start_proxy(binary, info, split_port, None, client))
            split_floor, split_floor_port = start_floor(info, client)
            procs.append(split_floor)
            rounds(args, f"split CPUs (server on {sorted(server)}, clients and proxy on {sorted(client)})", [
                (*direct, client), ("floor relay", "localhost", split_floor_port, direct_env, client),
                ("proxy via TCP", "127.0.0.1", split_port, proxy_env, client)])
    finally:
        stop(procs, standin)


if __name__ == "__main__":
    main()
