#!/usr/bin/env python3
"""Transaction pooling side by side (issue #14): many clients over few server connections,
pg-iam-proxy --pool-mode transaction against PgBouncer 1.18 in transaction mode, on the local
stand-in, in one run with interleaved rounds (the start order rotating every round).

    python3 benches/txn_compare.py [--rounds 3] [--seconds 10] [--clients 500] [--servers 16]
                                   [--idle 1000] [--bin target/release/pg-iam-proxy]

Figures: (a) pgbench -n -S (simple protocol) -c CLIENTS -j 2 -T SECONDS through each, both with
SERVERS server connections, the proxy twice: with its default runtime (a thread per core) and
with --worker-threads 1 (PgBouncer's one thread); prints the median tps of each and the median
of the per-round ratios to PgBouncer (target >= 1.0x). Reuses benches/pool_compare.py's helpers (stand-in,
PgBouncer, data, pgbench); PgBouncer logs in as the stand-in's password user, the proxy as the
IAM user. (b) memory of idle clients: the RSS delta of a fresh transaction-mode proxy, and of
a fresh PgBouncer in transaction mode, over IDLE idle clients (psycopg in autocommit mode, each
has run `SELECT 1`), total and per client; `--idle 10000` measures the issue's figure directly.
(c) pgbench -S -M prepared (named protocol-level statements) against -M simple, both through
the proxy in transaction mode, interleaved rounds; prints the median of the per-round ratios
prepared / simple (target >= 0.9x). PgBouncer 1.18 cannot run -M prepared in this mode.
With (a), the CPU time each pooler's process spent per transaction (utime and stime from
/proc/PID/stat around each pgbench run): the steadier figure where the machine is shared.
"""

import argparse
import os
import shutil
import statistics
import tempfile

import pool_compare as pc
from common import add_bin_argument, ensure_proxy, prepare_data, raise_fd_limit, start_standin, stop


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--servers", type=int, default=16)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--idle", type=int, default=1000, help="idle clients for (b); 0 skips it")
    ap.add_argument("--no-prepared", action="store_true", help="skip (c)")
    add_bin_argument(ap)
    args = ap.parse_args()
    raise_fd_limit(max(8 * args.clients, args.idle) + 1024)  # pgbench's and the idle clients' sockets
    binary = ensure_proxy(args.bin)
    bouncer_bin = pc.ensure_pgbouncer()
    workdir = tempfile.mkdtemp(prefix="txn-compare-")
    os.chmod(workdir, 0o755)
    standin, info = start_standin()
    procs = []
    try:
        prepare_data(info, args.scale)
        bouncer, bouncer_port = pc.start_pgbouncer(bouncer_bin, info, os.path.join(workdir, "run"),
                                                   args.servers, args.clients + 100, mode="transaction")
        procs.append(bouncer)
        flags = ["--pool-mode", "transaction", "--pool-size", str(args.servers)]
        proxy, proxy_port = pc.start_proxy(binary, info, flags)
        procs.append(proxy)
        # PgBouncer runs on one thread: the proxy on one too, beside its default (one per core).
        single, single_port = pc.start_proxy(binary, info, ["--worker-threads", "1", *flags])
        procs.append(single)
        plain_env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
        plain_env["PGSSLMODE"] = "disable"
        contenders = [
            dict(name="pgbouncer", host="127.0.0.1", port=bouncer_port, user=info["plain_user"], env=plain_env,
                 pid=bouncer.pid),
            dict(name="proxy-transaction", host="127.0.0.1", port=proxy_port, user=info["iam_user"],
                 env=plain_env, pid=proxy.pid),
            dict(name="proxy-1-thread", host="127.0.0.1", port=single_port, user=info["iam_user"],
                 env=plain_env, pid=single.pid),
        ]
        title = f"{args.clients} clients over {args.servers} server connections"
        cpu = {}
        tps, logins = pc.interleaved(args, contenders, info, title, [], args.clients, cpu=cpu)
        for name, values in tps.items():
            print(f"  {name}: median {statistics.median(values):.0f} tps ({', '.join(f'{v:.0f}' for v in values)})")
        for name in ("proxy-transaction", "proxy-1-thread"):
            ratios = [p / b for p, b in zip(tps[name], tps["pgbouncer"])]
            print(f"  {name} / PgBouncer: {statistics.median(ratios):.2f}x (median of per-round ratios "
                  f"{min(ratios):.2f}-{max(ratios):.2f}; target >= 1.0x); IAM logins in all rounds: {logins[name]}")
        print_cpu(cpu)
        if not args.no_prepared:
            prepared_vs_simple(args, contenders[1])
        stop(procs)
        procs = []
        if args.idle:
            idle_memory(args, binary, bouncer_bin, info, flags, workdir)
    finally:
        stop(procs, standin)
        shutil.rmtree(workdir, ignore_errors=True)


def print_cpu(cpu):
    """The CPU each pooler's process spent per transaction (its user and system time over a
    pgbench run, divided by the transactions run): steadier than tps on a loaded machine, where
    the ratio of rates moves with what else runs."""
    print("  CPU per transaction (median of rounds; user + system = total):")
    totals = {}
    for name, rounds in cpu.items():
        user = statistics.median(u for u, _ in rounds)
        system = statistics.median(s for _, s in rounds)
        totals[name] = statistics.median(u + s for u, s in rounds)
        print(f"    {name}: {user:.1f} + {system:.1f} = {totals[name]:.1f} us")
    for name in ("proxy-transaction", "proxy-1-thread"):
        if name in totals and totals.get("pgbouncer"):
            print(f"    {name} / PgBouncer: {totals[name] / totals['pgbouncer']:.2f}x CPU per transaction "
                  f"(lower is better)")


def idle_memory(args, binary, bouncer_bin, info, flags, workdir):
    """(b): each on a fresh process, one after the other; autocommit, else each client would
    hold its server connection."""
    print(f"\n(b) {args.idle} idle clients on a fresh process (pool size {args.servers})", flush=True)
    per = {}
    for name, start, user in [
        ("proxy-transaction", lambda: pc.start_proxy(binary, info, flags), info["iam_user"]),
        ("pgbouncer", lambda: pc.start_pgbouncer(bouncer_bin, info, os.path.join(workdir, "idle"), args.servers,
                                                 args.idle + 100, mode="transaction"), info["plain_user"]),
    ]:
        proc, port = start()
        try:
            per[name] = pc.idle_memory(name, proc.pid, port, user, args.idle, autocommit=True)
        finally:
            stop([proc])
    proxy, bouncer = per["proxy-transaction"], per["pgbouncer"]
    # A few idle clients may not move PgBouncer's RSS by a page: no ratio then.
    ratio = (f"{proxy / bouncer:.2f}x PgBouncer's per-client memory (lower is better)" if bouncer > 0
             else "no ratio to PgBouncer (its RSS did not grow)")
    print(f"  proxy: {proxy * args.idle / 1024:.1f} MiB for {args.idle} idle clients "
          f"({proxy * 10000 / 1024:.0f} MiB at 10,000 at this rate; target <= 200 MiB); "
          f"{ratio}")


def prepared_vs_simple(args, proxy):
    """(c): -M prepared against simple, through the proxy, start order rotating."""
    print(f"\n(c) pgbench -n -S -M prepared vs simple through the proxy: -c {args.clients} -j 2 "
          f"-T {args.seconds}, {args.rounds} interleaved rounds", flush=True)
    runs = {"simple": [], "prepared": []}
    modes = [("simple", []), ("prepared", ["-M", "prepared"])]
    for r in range(args.rounds):
        for name, extra in modes[r % 2:] + modes[:r % 2]:
            runs[name].append(pc.pgbench(proxy, extra, args.clients, args.seconds))
        print(f"  round {r + 1}: simple {runs['simple'][-1]:.0f} | prepared {runs['prepared'][-1]:.0f}",
              flush=True)
    ratios = [p / s for p, s in zip(runs["prepared"], runs["simple"])]
    for name, values in runs.items():
        print(f"  {name}: median {statistics.median(values):.0f} tps ({', '.join(f'{v:.0f}' for v in values)})")
    print(f"  prepared / simple: {statistics.median(ratios):.2f}x (median of per-round ratios; target >= 0.9x)")


if __name__ == "__main__":
    main()
