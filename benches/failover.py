#!/usr/bin/env python3
"""Aurora failover through pg-iam-proxy (issue #12), on the stand-in cluster.

Starts `tests/support/standin.py --cluster` (a writer and a streaming replica, real
PostgreSQL 15) and the proxy on the cluster endpoint, every name reached through
`--connect-to`, the cluster name mapped to the first writer for good (stale DNS). A writer
thread opens a new client connection through the proxy and inserts one row, again and
again (one at a time, every 20 ms at most). Each round runs one failover (stop the writer,
PAUSE seconds without one, promote the replica, old writer back read-only) and measures:

  write     seconds from the start of the failover to the first row written on the new writer
  switch    the proxy's own figure: first fault to switch (pg_iam_proxy_aurora_failover_switch_seconds)
  failed    client attempts that failed in between (connect or write errors)

and prints each round, then the median and max of `write` and `switch`.

    python3 benches/failover.py [--failovers 5] [--pause 0.5] [--bin target/debug/pg-iam-proxy]

Without --bin the debug binary is built (`cargo build`, quick with a warm target/): the
figure is set by detection and probing intervals, not by CPU.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import threading
import time
import urllib.request

import psycopg

from common import aws_env, ensure_proxy, free_port, start_standin, wait_port


def start_proxy(binary, info, http_port):
    c = info["cluster"]
    port = free_port()
    env = aws_env(info, PG_IAM_PROXY_CONNECT_TO=",".join(c["connect_to"]))
    proc = subprocess.Popen(
        [binary, "run", "--listen", f"127.0.0.1:{port}", "--host", c["cluster_host"], "--port",
         str(c["virtual_port"]), "--ca-file", info["ca_file"], "--http-addr", f"127.0.0.1:{http_port}",
         "--connect-timeout", "10s"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(os.environ["FAILOVER_PROXY_LOG"], "w") if "FAILOVER_PROXY_LOG" in os.environ else subprocess.DEVNULL)
    wait_port(port, proc, "pg-iam-proxy")
    return proc, port


def control(info, command):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(info["control_socket"])
        s.sendall((json.dumps(command) + "\n").encode())
        with s.makefile() as reply:
            return json.loads(reply.readline())


def switch_seconds(http_port):
    """(sum, count) of the proxy's failover switch histogram."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    total = count = 0.0
    for line in body.splitlines():
        if line.startswith("pg_iam_proxy_aurora_failover_switch_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("pg_iam_proxy_aurora_failover_switch_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
    return total, count


class Writer(threading.Thread):
    """New connection + one insert, over and over; (monotonic time, instance or None)."""

    def __init__(self, port, info):
        super().__init__(daemon=True)
        self.port, self.info = port, info
        self.results = []
        self.errors = []
        self.stop = threading.Event()
        self.next_id = 10_000

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            self.next_id += 1
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user=self.info["iam_user"],
                                     dbname=self.info["database"], sslmode="disable", connect_timeout=10,
                                     autocommit=True) as conn:
                    row = conn.execute("insert into t values (%s, 'bench') returning aurora_db_instance_identifier()",
                                       (self.next_id,)).fetchone()
                self.results.append((time.monotonic(), row[0]))
            except psycopg.Error as exc:
                self.results.append((time.monotonic(), None))
                self.errors.append((started, time.monotonic(), str(exc).strip().splitlines()[0]))
            time.sleep(max(0.0, 0.02 - (time.monotonic() - started)))


def one_failover(info, writer, http_port, pause):
    before = switch_seconds(http_port)
    mark = len(writer.results)
    t0 = time.monotonic()
    reply = control(info, {"failover": {"pause_s": pause}})
    if not reply.get("ok"):
        raise SystemExit(f"failover refused: {reply}")
    new = reply["failover"]["new_writer"]
    deadline = time.monotonic() + 30
    while True:
        done = [r for r in writer.results[mark:] if r[1] == new and r[0] >= t0]
        if done:
            break
        if time.monotonic() > deadline:
            raise SystemExit("no write reached the new writer within 30 s")
        time.sleep(0.01)
    first = done[0][0] - t0
    for start, end, text in writer.errors:
        if start >= t0 - 1 and end <= done[0][0]:
            print(f"      error after {start - t0:+.3f}..{end - t0:+.3f} s: {text}", flush=True)
    failed = sum(1 for t, inst in writer.results[mark:] if inst is None and t <= done[0][0])
    time.sleep(1.0)  # the metric is recorded at the switch; settle before reading it
    after = switch_seconds(http_port)
    switch = (after[0] - before[0]) if after[1] > before[1] else float("nan")
    return reply["failover"], first, switch, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds the cluster has no writer")
    parser.add_argument("--bin")
    args = parser.parse_args()
    binary = ensure_proxy(args.bin, profile="debug")
    cluster, info = start_standin("--cluster")
    http_port = free_port()
    proxy, port = start_proxy(binary, info, http_port)
    writer = Writer(port, info)
    try:
        writer.start()
        deadline = time.monotonic() + 30
        while not any(inst for _, inst in writer.results):
            if time.monotonic() > deadline:
                raise SystemExit("no write through the proxy within 30 s")
            time.sleep(0.05)
        time.sleep(2.5)  # one topology poll: the writer is known
        print(f"{'round':>5} {'from':>7} {'to':>7} {'write s':>8} {'switch s':>9} {'failed':>7}")
        writes, switches = [], []
        for n in range(args.failovers):
            fo, first, switch, failed = one_failover(info, writer, http_port, args.pause)
            writes.append(first)
            switches.append(switch)
            print(f"{n + 1:>5} {fo['old_writer']:>7} {fo['new_writer']:>7} {first:>8.3f} {switch:>9.3f} {failed:>7}",
                  flush=True)
            time.sleep(2.5)
        print(f"write:  median {statistics.median(writes):.3f} s, max {max(writes):.3f} s "
              f"(failover start -> first row on the new writer; {args.pause} s without a writer)")
        print(f"switch: median {statistics.median(switches):.3f} s, max {max(switches):.3f} s "
              "(proxy: first fault -> switch)")
    finally:
        writer.stop.set()
        proxy.terminate()
        proxy.wait(timeout=30)
        cluster.stdin.close()
        cluster.wait(timeout=60)


if __name__ == "__main__":
    main()
