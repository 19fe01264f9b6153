"""psycopg 3 through pg-iam-proxy in transaction mode, run by tests/txn_drivers.rs with PGHOST,
PGPORT, PGUSER and PGDATABASE pointing at the proxy (CLIENTS, ROUNDS: how many clients, how
many rounds each). Clients run at once, each on its own connection with prepare_threshold=0
(every statement server-prepared as _pg3_<n>: the same names on every connection, with
texts that differ per client) and prepare=True, interleaving explicit transactions and
autocommit statements, every client starting each round at once (a barrier), so they
contend for the pool's server connections and their statements move between them. With ROLLBACKS=1 some transactions end in a rollback, after which psycopg
sends DEALLOCATE ALL and prepares its statements again.

Prints one JSON line: per client, the backend pids it saw and whether every result was its
own; exits non-zero (reason on stderr) when a step fails or takes over STEP seconds."""

import asyncio
import json
import os
import sys

import psycopg

STEP = 20.0


async def client(i: int, rounds: int, rollbacks: bool, start: asyncio.Barrier) -> dict:
    conn = await asyncio.wait_for(
        psycopg.AsyncConnection.connect("", prepare_threshold=0, connect_timeout=20), STEP
    )
    pids, wrong, rolled_back = set(), [], 0
    try:
        for r in range(rounds):
            await asyncio.wait_for(start.wait(), STEP)
            # An explicit transaction: two statements on one backend, then COMMIT/ROLLBACK.
            async with conn.cursor() as cur:
                await cur.execute(f"SELECT %s::int + {i}, pg_backend_pid()", (r,))
                got, pid = await cur.fetchone()
                pids.add(pid)
                if got != r + i:
                    wrong.append(["sum", r, got])
                await asyncio.sleep(0)  # let the others start theirs meanwhile
                await cur.execute(f"SELECT 'c{i}-' || %s::text", (r,), prepare=True)
                (text,) = await cur.fetchone()
                if text != f"c{i}-{r}":
                    wrong.append(["text", r, text])
            if rollbacks and r % 3 == 1:
                await asyncio.wait_for(conn.rollback(), STEP)
                rolled_back += 1
            else:
                await asyncio.wait_for(conn.commit(), STEP)
            # Autocommit: each statement is a transaction of its own.
            await conn.set_autocommit(True)
            cur = await conn.execute(f"SELECT %s::int * {i + 2}, pg_backend_pid()", (r,))
            got, pid = await cur.fetchone()
            pids.add(pid)
            if got != r * (i + 2):
                wrong.append(["product", r, got])
            await conn.set_autocommit(False)
            await asyncio.sleep(0)
    finally:
        await conn.close()
    return {"client": i, "pids": sorted(pids), "wrong": wrong, "rolled_back": rolled_back}


async def main() -> None:
    clients = int(os.environ.get("CLIENTS", "4"))
    rounds = int(os.environ.get("ROUNDS", "15"))
    rollbacks = os.environ.get("ROLLBACKS") == "1"
    start = asyncio.Barrier(clients)
    jobs = [client(i, rounds, rollbacks, start) for i in range(clients)]
    results = await asyncio.wait_for(asyncio.gather(*jobs), STEP * rounds)
    print(json.dumps({"clients": results}))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # the reason for the Rust side's assertion message
        print(f"psycopg through the proxy: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
