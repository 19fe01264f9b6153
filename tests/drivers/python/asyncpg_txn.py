"""asyncpg through pg-iam-proxy in transaction mode, run by tests/txn_drivers.rs with PGHOST,
PGPORT, PGUSER and PGDATABASE pointing at the proxy. MODE=connections: CLIENTS plain
connections at once; MODE=pool: one asyncpg.create_pool of CLIENTS connections shared by
2 * CLIENTS tasks, so every release runs asyncpg's reset query (pg_advisory_unlock_all,
CLOSE ALL, UNLISTEN *, RESET ALL). Either way every statement is server-prepared under
asyncpg's names (__asyncpg_stmt_<n>__, the same on every connection, with texts that
differ per client), in explicit transactions, alone, and through Connection.prepare,
ROUNDS times, every client starting each round at once (a barrier), so they contend for the
pool's server connections and their statements move between them.

Prints one JSON line: per client, the backend pids it saw and the results that were not
its own; exits non-zero (reason on stderr) when a step fails or takes over STEP seconds."""

import asyncio
import json
import os
import sys

import asyncpg

STEP = 20.0


async def rounds_on(conn, i: int, r: int, pids: set, wrong: list) -> None:
    """One round of client i: a transaction, a lone statement, a prepared statement."""
    async with conn.transaction():
        got = await conn.fetchval(f"SELECT $1::int + {i}", r)
        await asyncio.sleep(0)  # let the others start theirs meanwhile
        if got != r + i:
            wrong.append(["sum", r, got])
        row = await conn.fetchrow(f"SELECT 'a{i}-' || $1::text AS t, pg_backend_pid() AS pid", str(r))
        pids.add(row["pid"])
        if row["t"] != f"a{i}-{r}":
            wrong.append(["text", r, row["t"]])
    got = await conn.fetchval(f"SELECT $1::int * {i + 2}", r)
    if got != r * (i + 2):
        wrong.append(["product", r, got])
    stmt = await conn.prepare(f"SELECT $1::int - {i}, pg_backend_pid()")
    got, pid = await stmt.fetchrow(r)
    pids.add(pid)
    if got != r - i:
        wrong.append(["difference", r, got])


async def plain(i: int, rounds: int, start: asyncio.Barrier) -> dict:
    conn = await asyncpg.connect(ssl=False, timeout=STEP, command_timeout=STEP)
    pids, wrong = set(), []
    try:
        for r in range(rounds):
            await asyncio.wait_for(start.wait(), STEP)
            await rounds_on(conn, i, r, pids, wrong)
    finally:
        await conn.close(timeout=STEP)
    return {"client": i, "pids": sorted(pids), "wrong": wrong}


async def pooled(pool, i: int, rounds: int, start: asyncio.Barrier) -> dict:
    pids, wrong = set(), []
    for r in range(rounds):
        await asyncio.wait_for(start.wait(), STEP)
        async with pool.acquire(timeout=STEP) as conn:
            await rounds_on(conn, i, r, pids, wrong)
    return {"client": i, "pids": sorted(pids), "wrong": wrong}


async def main() -> None:
    clients = int(os.environ.get("CLIENTS", "4"))
    rounds = int(os.environ.get("ROUNDS", "10"))
    if os.environ.get("MODE") == "pool":
        pool = await asyncpg.create_pool(
            ssl=False, min_size=clients, max_size=clients, timeout=STEP, command_timeout=STEP
        )
        try:
            start = asyncio.Barrier(2 * clients)
            jobs = [pooled(pool, i, rounds, start) for i in range(2 * clients)]
            results = await asyncio.wait_for(asyncio.gather(*jobs), STEP * rounds)
        finally:
            await asyncio.wait_for(pool.close(), STEP)
    else:
        start = asyncio.Barrier(clients)
        jobs = [plain(i, rounds, start) for i in range(clients)]
        results = await asyncio.wait_for(asyncio.gather(*jobs), STEP * rounds)
    print(json.dumps({"clients": results}))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # the reason for the Rust side's assertion message
        print(f"asyncpg through the proxy: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
