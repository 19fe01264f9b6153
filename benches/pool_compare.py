#!/usr/bin/env python3
"""Session pooling side by side (issue #11): pg-iam-proxy in each pool mode its binary has,
PgBouncer in session mode, a copy-only relay and direct TLS, against the local stand-in.

Contenders (one invocation, interleaved rounds, the start order rotating every round):
  direct      client -> PostgreSQL over TLS (verify-full), IAM token login (iam_dbuser)
  floor       client -> examples/floor_relay -> PostgreSQL, TLS end to end: a relay that only
              copies bytes, the least any proxy can cost
  floor-tls   client -> examples/floor_tls -> PostgreSQL: declines the client's TLS, opens
              verified TLS to the server, copies bytes (tokio, rustls; no parsing, no pooling;
              the client answers the password request itself): the least a relay that
              terminates the server's TLS can cost, as the proxy and PgBouncer do
  pgbouncer   client -> PgBouncer 1.18 (Debian package), pool_mode=session, server TLS
              verify-full with the stand-in's CA; PgBouncer cannot do IAM, so it logs in as the
              stand-in's password user (plain_user, SCRAM); clients are trusted
  proxy-MODE  client -> pg-iam-proxy --pool-mode MODE -> PostgreSQL over TLS, IAM login; MODE is
              `none` (one login per client) and `session` when `run --help` offers --pool-mode
              (an older binary is measured as `none`, without the flag)

Figures (medians; ratios against PgBouncer, the two floor relays and direct TLS):
  (a) connect per transaction: pgbench -n -C -S -c 4 -j 2 -T SECONDS, plus the IAM logins the
      stand-in checked while each proxy ran (its decisions log has one line per token check);
      target: >= 1.0x PgBouncer with IAM logins <= the pool size
  (b) steady state: pgbench -n -S -c 8 -j 2 -T SECONDS; target >= 1.0x PgBouncer and the floor
  (c) connect to first result: a raw protocol client (TCP connect, TLS and password where the
      contender needs them, startup, `SELECT 1`) N times, interleaved, with the pools warm;
      p50 and p95; target for session mode <= 1 ms at p50
  (d) memory per idle client: RSS delta of a fresh proxy / PgBouncer over K idle clients (each
      has run `SELECT 1`); target <= 16 KiB

    python3 benches/pool_compare.py [--rounds 3] [--seconds 5] [--quick]
                                    [--bin target/release/pg-iam-proxy] [--connects 200] [--idle 200]

floor-tls is built with `cargo build --release --example floor_tls` (in $CARGO_TARGET_DIR if set).

PgBouncer is installed with apt-get if missing (root). The proxy is built (`cargo build
--release`) only when --bin is not given and the binary is missing or older than the sources.
"""

import argparse
import os
import re
import shutil
import socket
import ssl
import statistics
import struct
import subprocess
import tempfile
import time

from common import (ROOT, add_bin_argument, aws_env, cpu_seconds, ensure_floor, ensure_proxy, free_port,
                    pgbench_bin, prepare_data, proxy_argv, rss_kib, start_floor, start_standin, stop, wait_port)

POOL_SIZE = 50  # --pool-size of the session-mode proxy (its default) and PgBouncer's default_pool_size


# --- building and installing -------------------------------------------------------------------

def ensure_floor_tls():
    """The TLS-terminating floor uses the crate's own tokio and rustls: a cargo example."""
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet", "--example", "floor_tls"],
                   cwd=ROOT, check=True)
    return os.path.join(target, "release", "examples", "floor_tls")


def ensure_pgbouncer():
    """PgBouncer from Debian (1.18 on bookworm); installed here so the test deps need not have it."""
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if found:
        return found
    print("installing pgbouncer (apt-get) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "pgbouncer"],
                   env=env, check=True, capture_output=True)
    return "/usr/sbin/pgbouncer"


def pool_modes(binary):
    """The modes to measure: [(label, extra flags)]; only what this binary offers."""
    help_text = subprocess.run([binary, "run", "--help"], capture_output=True, text=True).stdout
    if "--pool-mode" not in help_text:
        return [("proxy-none", [])], False
    size = ["--pool-size", str(POOL_SIZE)] if "--pool-size" in help_text else []
    return [("proxy-none", ["--pool-mode", "none"]), ("proxy-session", ["--pool-mode", "session", *size])], \
        bool(size)


# --- processes ---------------------------------------------------------------------------------

def start_proxy(binary, info, flags):
    port = free_port()
    proc = subprocess.Popen(proxy_argv(binary, info, port, *flags), env=aws_env(info), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "pg-iam-proxy")
    return proc, port


def start_floor_tls(binary, info):
    proc = subprocess.Popen([binary, "127.0.0.1:0", f"127.0.0.1:{info['port']}", "localhost", info["ca_file"]],
                            stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline().rsplit(":", 1)[1])


def start_pgbouncer(binary, info, workdir, pool_size, max_clients, mode="session"):
    """PgBouncer in `mode`, logging in to the stand-in as plain_user over verified TLS."""
    port = free_port()
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)
    ini = os.path.join(workdir, "pgbouncer.ini")
    with open(ini, "w") as f:
        f.write(f"""[databases]
{info['database']} = host=localhost port={info['port']} dbname={info['database']} user={info['plain_user']} password={info['plain_password']}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = {mode}
default_pool_size = {pool_size}
max_client_conn = {max_clients}
server_tls_sslmode = verify-full
server_tls_ca_file = {info['ca_file']}
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits
""")
    os.chmod(ini, 0o644)
    # PgBouncer refuses to run as root; `user=` keeps the pid ours (no runuser in between).
    drop = {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}
    with open(os.path.join(workdir, "pgbouncer.log"), "w") as log:
        proc = subprocess.Popen([binary, ini], stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=workdir,
                                **drop)
    wait_port(port, proc, "pgbouncer")
    return proc, port


def decisions(info):
    with open(info["decisions_log"]) as f:
        return sum(1 for _ in f)


# --- the figures -------------------------------------------------------------------------------

class Token:
    """An IAM token for the direct contenders, signed anew every 5 minutes (it is valid for 15)."""

    def __init__(self, binary, info):
        self.argv = [binary, "token", "--host", "localhost", "--port", str(info["port"]), "--user", info["iam_user"]]
        self.env = aws_env(info)
        self.value, self.signed = None, 0.0

    def get(self):
        if self.value is None or time.monotonic() - self.signed > 300:
            self.value = subprocess.run(self.argv, env=self.env, capture_output=True, text=True,
                                        check=True).stdout.strip()
            self.signed = time.monotonic()
        return self.value


def env_of(c):
    return dict(c["env"], PGPASSWORD=c["token"].get()) if "token" in c else c["env"]


def pgbench(c, extra, clients, seconds):
    return pgbench_run(c, extra, clients, seconds)[0]


def pgbench_run(c, extra, clients, seconds):
    """One pgbench -S run through `c`: (tps, transactions processed)."""
    out = subprocess.run(
        [pgbench_bin(), "-n", "-S", *extra, "-c", str(clients), "-j", "2", "-T", str(seconds),
         "-h", c["host"], "-p", str(c["port"]), "-U", c["user"], "labdb"],
        env=env_of(c), capture_output=True, text=True)
    found = re.search(r"tps = ([0-9.]+)", out.stdout)
    count = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    if out.returncode != 0 or not found or not count:
        raise SystemExit(f"pgbench via {c['name']} failed:\n{out.stdout}\n{out.stderr}")
    return float(found.group(1)), int(count.group(1))


def interleaved(args, contenders, info, title, extra, clients, cpu=None):
    """Rounds with the start order rotating; returns {name: [tps per round]}, {name: IAM logins}.
    With `cpu` (a dict), a contender that names its process ("pid") also has its CPU time per
    transaction recorded there: {name: [(user us, system us) per round]}."""
    print(f"\n{title}: pgbench -n -S {''.join(e + ' ' for e in extra)}-c {clients} -j 2 -T {args.seconds}, "
          f"{args.rounds} interleaved rounds", flush=True)
    tps = {c["name"]: [] for c in contenders}
    logins = {c["name"]: 0 for c in contenders}
    for r in range(args.rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for c in order:
            before = decisions(info)
            used = cpu_seconds(c["pid"]) if cpu is not None and "pid" in c else None
            rate, count = pgbench_run(c, extra, clients, args.seconds)
            tps[c["name"]].append(rate)
            if used is not None:
                now = cpu_seconds(c["pid"])
                cpu.setdefault(c["name"], []).append(
                    tuple((b - a) * 1e6 / max(count, 1) for a, b in zip(used, now)))
            logins[c["name"]] += decisions(info) - before
        print(f"  round {r + 1}: " + " | ".join(f"{c['name']} {tps[c['name']][-1]:.0f}" for c in contenders),
              flush=True)
    return tps, logins


def ratio_table(values, unit, higher_better=True, fmt="{:.0f}", extra_cols=None):
    """One line per contender: its median and the medians of its per-round ratios to the baselines.
    Returns {(name, baseline): median ratio}."""
    names = list(values)
    medians = {}
    bases = [b for b in ("pgbouncer", "floor", "floor-tls", "direct") if b in values]
    rows = len(next(iter(values.values())))
    header = f"  {'':15s} {unit:>12s} " + " ".join(f"{'x ' + b:>12s}" for b in bases)
    if extra_cols:
        header += "  " + extra_cols[0]
    print(header)
    for n in names:
        cells = []
        for b in bases:
            rs = [values[n][i] / values[b][i] if higher_better else values[b][i] / values[n][i]
                  for i in range(rows) if values[b][i] and values[n][i]]
            if rs:
                medians[(n, b)] = statistics.median(rs)
            cells.append(f"{medians[(n, b)]:12.3f}" if rs else f"{'-':>12s}")
        line = f"  {n:15s} {fmt.format(statistics.median(values[n])):>12s} " + " ".join(cells)
        if extra_cols:
            line += "  " + extra_cols[1].get(n, "")
        print(line)
    return medians


class Raw:
    """A raw protocol client: enough of the wire protocol to time connect -> first result."""

    def __init__(self, c):
        self.c = c

    def once(self):
        c = self.c
        t0 = time.perf_counter()
        s = socket.create_connection((c["host"], c["port"]), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if c.get("tls"):
            s.sendall(struct.pack("!ii", 8, 80877103))
            if s.recv(1) != b"S":
                raise RuntimeError("server refused TLS")
            s = c["tls"].wrap_socket(s, server_hostname="localhost")
        params = f"user\0{c['user']}\0database\0labdb\0application_name\0pool_compare\0\0".encode()
        s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        f = s.makefile("rb")
        self.until(f, s, b"Z")
        ready = time.perf_counter()
        s.sendall(b"Q" + struct.pack("!i", 4 + 9) + b"SELECT 1\0")
        self.until(f, s, b"C")
        done = time.perf_counter()
        self.until(f, s, b"Z")
        s.sendall(b"X\0\0\0\4")
        f.close()
        s.close()
        return done - t0, ready - t0

    def until(self, f, s, wanted):
        while True:
            head = f.read(5)
            if len(head) < 5:
                raise RuntimeError(f"{self.c['name']}: connection closed")
            kind, length = head[:1], struct.unpack("!i", head[1:])[0]
            body = f.read(length - 4)
            if kind == b"E":
                raise RuntimeError(f"{self.c['name']}: {body!r}")
            if kind == b"R" and struct.unpack("!i", body[:4])[0] == 3:  # cleartext password (IAM)
                pw = self.c["token"].get().encode() + b"\0"
                s.sendall(b"p" + struct.pack("!i", 4 + len(pw)) + pw)
            if kind == wanted:
                return


def p95(values):
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def first_result(args, contenders, info):
    print(f"\n(c) connect to first result (SELECT 1), {args.connects} connects each, interleaved, "
          f"pools warm, {args.gap_ms} ms apart", flush=True)
    clients = [Raw(c) for c in contenders]
    for r in clients:  # warm: a pooled connection exists from here on
        r.once()
    times = {c["name"]: [] for c in contenders}
    startup = {c["name"]: [] for c in contenders}
    logins = {c["name"]: 0 for c in contenders}
    for _ in range(args.connects):
        for r in clients:
            before = decisions(info)
            total, ready = r.once()
            logins[r.c["name"]] += decisions(info) - before
            times[r.c["name"]].append(total * 1e6)
            startup[r.c["name"]].append(ready * 1e6)
            time.sleep(args.gap_ms / 1000)  # let a pool take the connection back (reset) first
    p50s = {n: statistics.median(v) for n, v in times.items()}
    bases = [b for b in ("pgbouncer", "floor", "floor-tls", "direct") if b in p50s]
    print(f"  {'':15s} {'p50 us':>8s} {'p95 us':>8s} {'ready p50':>10s}  "
          + " ".join(f"{'x ' + b:>11s}" for b in bases) + "  IAM logins")
    for n, v in times.items():
        print(f"  {n:15s} {p50s[n]:8.0f} {p95(v):8.0f} {statistics.median(startup[n]):10.0f}  "
              + " ".join(f"{p50s[b] / p50s[n]:11.3f}" for b in bases) + f"  {logins[n]}")
    print("  (x: the baseline's p50 / this p50, higher is faster; ready: connect to ReadyForQuery)")
    return p50s


def idle_memory(name, pid, port, user, count, autocommit=False):
    import psycopg

    def connect():
        return psycopg.connect(host="127.0.0.1", port=port, user=user, dbname="labdb", sslmode="disable",
                               connect_timeout=60, autocommit=autocommit)

    with connect() as warm:  # first-use allocations are not per client
        warm.execute("select 1").fetchone()
    before = rss_kib(pid)
    conns = [connect() for _ in range(count)]
    for c in conns:  # every session really works
        c.execute("select 1").fetchone()
    after = rss_kib(pid)
    for c in conns:
        c.close()
    per = (after - before) / count
    print(f"  {name:15s} RSS {before} KiB -> {after} KiB: {per:.1f} KiB per idle client", flush=True)
    return per


def memory(args, binary, info, modes, has_pool_size, bouncer_bin, workdir):
    print(f"\n(d) memory per idle client: RSS delta of a fresh process over {args.idle} idle clients", flush=True)
    results = {}
    for name, flags in modes:
        if name == "proxy-session":
            if not has_pool_size:
                print(f"  {name:15s} skipped: no --pool-size to hold {args.idle} clients")
                continue
            flags = ["--pool-mode", "session", "--pool-size", str(args.idle + 8)]
        proc, port = start_proxy(binary, info, flags)
        try:
            results[name] = idle_memory(name, proc.pid, port, info["iam_user"], args.idle)
        finally:
            proc.terminate()
            proc.wait()
    proc, port = start_pgbouncer(bouncer_bin, info, os.path.join(workdir, "memory"), args.idle + 8, args.idle + 50)
    try:
        results["pgbouncer"] = idle_memory("pgbouncer", proc.pid, port, info["plain_user"], args.idle)
    finally:
        proc.terminate()
        proc.wait()
    for n, v in results.items():
        if n != "pgbouncer" and results["pgbouncer"] > 0:
            print(f"  {n}: {v / results['pgbouncer']:.2f}x PgBouncer's per-client memory (lower is better)")
    return results


def summary(proxies, connect, logins, steady, p50s, per_client):
    verdict = lambda ok: "met" if ok else "NOT met"
    shown = [n for n in proxies if n != "proxy-none"] or proxies
    print(f"\ntargets (issue #11, for session pooling), pool size {POOL_SIZE}:"
          + ("" if "proxy-session" in shown else " (no session mode in this binary: none shown for reference)"))
    for n in shown:
        a, b, f = connect.get((n, "pgbouncer"), 0), steady.get((n, "pgbouncer"), 0), steady.get((n, "floor"), 0)
        mem = per_client.get(n)
        print(f"  {n}:")
        print(f"    (a) connect per transaction {a:.3f}x PgBouncer [{verdict(a >= 1.0)}]; "
              f"{logins[n]} IAM logins [{verdict(logins[n] <= POOL_SIZE)}]")
        ft = steady.get((n, "floor-tls"), 0)
        print(f"    (b) steady state {b:.3f}x PgBouncer [{verdict(b >= 1.0)}], {f:.3f}x floor [{verdict(f >= 1.0)}]"
              f" ({ft:.3f}x floor-tls, the floor for a relay that terminates TLS)")
        print(f"    (c) connect to first result p50 {p50s[n] / 1000:.2f} ms [{verdict(p50s[n] <= 1000)}]")
        print("    (d) " + (f"{mem:.1f} KiB per idle client [{verdict(mem <= 16)}]" if mem is not None
                            else "not measured"))


# --- main --------------------------------------------------------------------------------------

def contenders_for(info, token, floor_port, floor_tls_port, bouncer_port, proxies):
    direct_env = dict(os.environ, PGSSLMODE="verify-full", PGSSLROOTCERT=info["ca_file"])
    plain_env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    plain_env["PGSSLMODE"] = "disable"
    tls = ssl.create_default_context(cafile=info["ca_file"])
    out = [
        dict(name="direct", host="localhost", port=info["port"], user=info["iam_user"], env=direct_env,
             tls=tls, token=token),
        dict(name="floor", host="localhost", port=floor_port, user=info["iam_user"], env=direct_env,
             tls=tls, token=token),
        dict(name="floor-tls", host="127.0.0.1", port=floor_tls_port, user=info["iam_user"], env=plain_env,
             token=token),
        dict(name="pgbouncer", host="127.0.0.1", port=bouncer_port, user=info["plain_user"], env=plain_env),
    ]
    out += [dict(name=name, host="127.0.0.1", port=port, user=info["iam_user"], env=plain_env)
            for name, port in proxies]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connects", type=int, default=200, help="connects per contender for (c)")
    ap.add_argument("--gap-ms", type=float, default=5, help="pause after each connect in (c)")
    ap.add_argument("--idle", type=int, default=200, help="idle clients for (d)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s, 30 connects, 50 idle clients")
    add_bin_argument(ap)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.connects, args.idle, args.scale = 1, 2, 30, 50, 1
    binary = ensure_proxy(args.bin)
    ensure_floor()
    floor_tls_bin = ensure_floor_tls()
    bouncer_bin = ensure_pgbouncer()
    modes, has_pool_size = pool_modes(binary)
    print(f"proxy {binary}: modes {', '.join(n for n, _ in modes)}"
          + ("" if len(modes) > 1 else " (no --pool-mode in this binary)"))
    workdir = tempfile.mkdtemp(prefix="pool-compare-")
    os.chmod(workdir, 0o755)  # PgBouncer (user postgres) reads its config there
    standin, info = start_standin()
    procs = []
    try:
        prepare_data(info, args.scale)
        token = Token(binary, info)
        floor, floor_port = start_floor(info)
        floor_tls, floor_tls_port = start_floor_tls(floor_tls_bin, info)
        procs.append(floor_tls)
        bouncer, bouncer_port = start_pgbouncer(bouncer_bin, info, os.path.join(workdir, "run"), POOL_SIZE, 200)
        procs += [floor, bouncer]
        proxies = []
        for name, flags in modes:
            proc, port = start_proxy(binary, info, flags)
            procs.append(proc)
            proxies.append((name, port))
        contenders = contenders_for(info, token, floor_port, floor_tls_port, bouncer_port, proxies)
        pool_note = f"pool size {POOL_SIZE}"

        tps, logins = interleaved(args, contenders, info, "(a) connect per transaction", ["-C"], 4)
        print("  median connects/s, and medians of the per-round ratios (higher is better):")
        connect = ratio_table(tps, "connects/s", extra_cols=(f"IAM logins in all rounds ({pool_note})",
                                                   {n: str(v) for n, v in logins.items()}))
        connect_logins = logins
        tps, logins = interleaved(args, contenders, info, "(b) steady state", [], 8)
        print("  median tps, and medians of the per-round ratios (higher is better):")
        steady = ratio_table(tps, "tps", extra_cols=("IAM logins", {n: str(v) for n, v in logins.items()}))
        p50s = first_result(args, contenders, info)
        stop(procs)
        procs = []
        per_client = memory(args, binary, info, modes, has_pool_size, bouncer_bin, workdir)
        summary([n for n, _ in modes], connect, connect_logins, steady, p50s, per_client)
    finally:
        stop(procs, standin)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
