#!/usr/bin/env python3
"""A login storm: many clients connect through pg-iam-proxy at once to a server with fewer
connection slots than clients, against the local stand-in (real PostgreSQL 15, IAM token
checks through PAM).

Every client opens a connection (psycopg, async), runs `SELECT 1` and keeps the connection
open until every client has its answer, so the server's connection limit really binds.
Prints how many clients were served, what the others were told (SQLSTATE counts) and how long
the slowest took. Measures one proxy binary per run (`--bin`), e.g. before and after a change.

    python3 benches/login_storm.py [--clients 1500] [--server-connections 600]
                                   [--bin target/release/pg-iam-proxy] [-- extra proxy flags]
"""

import argparse
import asyncio
import collections
import os
import subprocess
import threading
import time

from common import ROOT, aws_env, free_port, proxy_argv, raise_fd_limit, start_standin, stop


def start_proxy(binary, info, port, extra):
    proc = subprocess.Popen(
        proxy_argv(binary, info, port, *extra), env=aws_env(info), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "ready" in line:
            break
    else:
        raise RuntimeError("the proxy did not start")
    # Keep reading its log: a full pipe would stop the proxy at its next log line.
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc


async def storm(port, user, database, clients):
    import psycopg

    done = asyncio.Event()
    finished = 0
    outcomes = collections.Counter()
    slowest = 0.0
    start = time.monotonic()

    async def one():
        nonlocal finished, slowest
        conn = None
        try:
            conn = await psycopg.AsyncConnection.connect(
                host="127.0.0.1", port=port, user=user, dbname=database, sslmode="disable",
                connect_timeout=120)
            await (await conn.execute("SELECT 1")).fetchone()
            outcomes["served"] += 1
        except psycopg.Error as e:
            code = getattr(getattr(e, "diag", None), "sqlstate", None)
            text = str(e).strip().splitlines()[-1][:90] if str(e).strip() else type(e).__name__
            outcomes[f"{code or 'no SQLSTATE'}: {text}"] += 1
        slowest = max(slowest, time.monotonic() - start)
        finished += 1
        if finished == clients:
            done.set()
        await done.wait()
        if conn is not None:
            await conn.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return outcomes, slowest


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=1500)
    p.add_argument("--server-connections", type=int, default=600)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "pg-iam-proxy"))
    p.add_argument("extra", nargs="*", help="extra proxy flags (after --)")
    args = p.parse_args()
    print(f"fd limit: {raise_fd_limit()}")
    standin, info = start_standin("--max-connections", str(args.server_connections))
    proxy = start_proxy(args.bin, info, free_port(), args.extra)
    try:
        port = int(proxy.args[proxy.args.index("--listen") + 1].rsplit(":", 1)[1])
        outcomes, slowest = asyncio.run(storm(port, info["iam_user"], info["database"], args.clients))
    finally:
        stop([proxy], standin)
    print(f"{args.clients} clients, server max_connections {args.server_connections}, "
          f"slowest answer after {slowest:.1f} s")
    for what, n in outcomes.most_common():
        print(f"  {n:5d}  {what}")


if __name__ == "__main__":
    main()
