#!/usr/bin/env python3
"""pgbench select-only through pg-iam-proxy vs. directly over TLS, against the local stand-in.

Same user (iam_dbuser, IAM token auth), same data, interleaved rounds; prints each round's
TPS and the median ratio proxy/direct, then the latency one client sees both ways. Then
opens N idle client connections through the proxy and reports the proxy's resident memory
per idle connection.

    python3 benches/pgbench_compare.py [--rounds 5] [--seconds 10] [--clients 8] [--idle 500]
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "pg-iam-proxy")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pgbench_bin():
    found = shutil.which("pgbench")
    if found:
        return found
    bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
    return os.path.join(bindir, "pgbench")


def start_standin():
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests/support/standin.py")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    info = json.loads(proc.stdout.readline())
    return proc, info


def aws_env(info):
    env = dict(os.environ)
    env.update(AWS_ACCESS_KEY_ID=info["access_key_id"], AWS_SECRET_ACCESS_KEY=info["secret_access_key"],
               AWS_REGION=info["region"], AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true")
    return env


def start_proxy(info, port, socket_dir):
    proc = subprocess.Popen(
        [BIN, "run", "--listen", f"127.0.0.1:{port}", "--unix-socket", socket_dir, "--host", "localhost",
         "--port", str(info["port"]), "--ca-file", info["ca_file"]],
        env=aws_env(info), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    for line in proc.stderr:
        if "listening" in line:
            return proc
    raise SystemExit("proxy did not start")


def prepare_data(info, scale):
    env = dict(os.environ, PGPASSWORD=info["master_password"], PGSSLMODE="require")
    conn = ["-h", "localhost", "-p", str(info["port"]), "-U", info["master_user"], info["database"]]
    subprocess.run([pgbench_bin(), "-i", "-q", "-s", str(scale), *conn], env=env, check=True,
                   capture_output=True)
    subprocess.run(["psql", "-X", "-q", *conn, "-c",
                    f"grant select on all tables in schema public to {info['iam_user']}"],
                   env=env, check=True)


def run_pgbench(args, host, port, env):
    out = subprocess.run(
        [pgbench_bin(), "-n", "-S", "-c", str(args.clients), "-j", "2", "-T", str(args.seconds),
         "-h", host, "-p", str(port), "-U", "iam_dbuser", "labdb"],
        env=env, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out).group(1))


def latency_us(host, port, env, seconds):
    """Average latency of one client running select-only queries back to back."""
    out = subprocess.run(
        [pgbench_bin(), "-n", "-S", "-c", "1", "-T", str(seconds), "-h", host, "-p", str(port),
         "-U", "iam_dbuser", "labdb"], env=env, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"latency average = ([0-9.]+) ms", out).group(1)) * 1000


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--idle", type=int, default=500, help="idle connections for the memory check")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    standin, info = start_standin()
    proxy = None
    try:
        prepare_data(info, args.scale)
        port = free_port()
        socket_dir = tempfile.mkdtemp()
        proxy = start_proxy(info, port, socket_dir)
        token = subprocess.run([BIN, "token", "--host", "localhost", "--port", str(info["port"]),
                                "--user", "iam_dbuser"], env=aws_env(info), capture_output=True,
                               text=True, check=True).stdout.strip()
        direct_env = dict(os.environ, PGPASSWORD=token, PGSSLMODE="verify-full",
                          PGSSLROOTCERT=info["ca_file"])
        proxy_env = dict(os.environ, PGSSLMODE="disable")
        proxy_env.pop("PGPASSWORD", None)
        ratios, unix_ratios = [], []
        print(f"pgbench -S -c {args.clients} -j 2 -T {args.seconds}, {args.rounds} interleaved rounds")
        for r in range(args.rounds):
            direct = run_pgbench(args, "localhost", info["port"], direct_env)
            proxied = run_pgbench(args, "127.0.0.1", port, proxy_env)
            via_unix = run_pgbench(args, socket_dir, port, proxy_env)
            ratios.append(proxied / direct)
            unix_ratios.append(via_unix / direct)
            print(f"round {r + 1}: direct TLS {direct:8.0f} tps | proxy via TCP {proxied:8.0f} tps "
                  f"({proxied / direct:.3f}) | proxy via Unix socket {via_unix:8.0f} tps ({via_unix / direct:.3f})")
        print(f"median ratio proxy/direct: TCP {statistics.median(ratios):.3f}, "
              f"Unix socket {statistics.median(unix_ratios):.3f}")
        direct_us = latency_us("localhost", info["port"], direct_env, args.seconds)
        proxy_us = latency_us("127.0.0.1", port, proxy_env, args.seconds)
        print(f"one client (-c 1): latency direct {direct_us:.0f} us, through proxy {proxy_us:.0f} us, "
              f"added {proxy_us - direct_us:.0f} us per query (ratio {direct_us / proxy_us:.3f})")
        before, after = idle_memory(port, proxy.pid, args.idle)
        per = (after - before) * 1024 / args.idle
        print(f"idle connections: {args.idle}; proxy RSS {before} KiB -> {after} KiB; "
              f"{per / 1024:.1f} KiB per idle proxied connection")
    finally:
        if proxy:
            proxy.terminate()
            proxy.wait()
        standin.stdin.close()
        standin.wait()


if __name__ == "__main__":
    main()
