"""What the benchmark scripts share: paths, free ports, the stand-in, the proxy's command line
and environment, building what is measured, pgbench, test data, memory and descriptor limits.

Each script in benches/ imports it as `common` (they run as `python3 benches/NAME.py`, so
this folder is on sys.path).
"""

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(ROOT, "tests", "support", "standin.py")
FLOOR_SRC = os.path.join(ROOT, "examples", "floor_relay.rs")
FLOOR = os.path.join(ROOT, "target", "bench", "floor_relay")


# --- ports and processes -----------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, deadline_s=30):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within {deadline_s} s")


def start_standin(*flags):
    """tests/support/standin.py with `flags` (e.g. "--cluster"): (process, its info)."""
    proc = subprocess.Popen([sys.executable, STANDIN, *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    return proc, json.loads(proc.stdout.readline())


def stop(procs, standin=None):
    """Terminates `procs` and waits for each, then stops the stand-in (closing its stdin)."""
    for p in procs:
        p.terminate()
        p.wait()
    if standin is not None:
        standin.stdin.close()
        standin.wait()


def pinned(cpus):
    """A preexec_fn that pins the child (and every thread it starts) to `cpus`, if given."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def raise_fd_limit(want=None):
    """Raises the soft descriptor limit to `want` (at most the hard limit; all of it when None)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = hard if want is None else max(soft, min(hard, want))
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


def cpu_seconds(pid):
    """(user, system) CPU seconds `pid` has used so far, all its threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


# --- the proxy ---------------------------------------------------------------------------------

def aws_env(info, **extra):
    """This environment with the stand-in's static AWS keys only (and `extra`)."""
    env = dict(os.environ)
    env.update(AWS_ACCESS_KEY_ID=info["access_key_id"], AWS_SECRET_ACCESS_KEY=info["secret_access_key"],
               AWS_REGION=info["region"], AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true", **extra)
    return env


def proxy_argv(binary, info, port, *flags):
    """`run` on 127.0.0.1:`port` in front of the stand-in, verify-full with its CA."""
    return [binary, "run", "--listen", f"127.0.0.1:{port}", "--host", "localhost", "--port", str(info["port"]),
            "--ca-file", info["ca_file"], *flags]


def add_bin_argument(parser, profile="release"):
    parser.add_argument("--bin", help=f"the proxy binary (default: target/{profile}/pg-iam-proxy, built if stale)")


def newest_source_mtime():
    paths = [os.path.join(ROOT, p) for p in ("Cargo.toml", "Cargo.lock", "build.rs")]
    for base, _, files in os.walk(os.path.join(ROOT, "src")):
        paths += [os.path.join(base, f) for f in files]
    return max(os.path.getmtime(p) for p in paths if os.path.exists(p))


def ensure_proxy(binary, profile="release"):
    """`binary` if given, else target/PROFILE/pg-iam-proxy, built when missing or older than the
    sources (a debug build always asks cargo: quick with a warm target/)."""
    if binary:
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"--bin {binary}: not an executable")
        return binary
    path = os.path.join(ROOT, "target", profile, "pg-iam-proxy")
    if profile == "debug":
        subprocess.run(["cargo", "build", "--quiet", "--bin", "pg-iam-proxy"], cwd=ROOT, check=True)
    elif not os.path.exists(path) or os.path.getmtime(path) < newest_source_mtime():
        print("building the proxy (cargo build --release; ~10 min on 2 cores) ...", flush=True)
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "pg-iam-proxy"],
                       cwd=ROOT, check=True)
    return path


# --- the copy-only relay -----------------------------------------------------------------------

def ensure_floor():
    """The copy-only relay uses std alone: rustc builds it in seconds, no cargo profile needed."""
    if not os.path.exists(FLOOR) or os.path.getmtime(FLOOR) < os.path.getmtime(FLOOR_SRC):
        os.makedirs(os.path.dirname(FLOOR), exist_ok=True)
        subprocess.run(["rustc", "--edition", "2021", "-C", "opt-level=3", "-o", FLOOR, FLOOR_SRC], check=True)
    return FLOOR


def start_floor(info, cpus=None):
    """The copy-only relay in front of the stand-in: (process, its port)."""
    proc = subprocess.Popen([FLOOR, "127.0.0.1:0", f"127.0.0.1:{info['port']}"], stdout=subprocess.PIPE,
                            text=True, preexec_fn=pinned(cpus))
    return proc, int(proc.stdout.readline().rsplit(":", 1)[1])


# --- pgbench and its data ----------------------------------------------------------------------

def pgbench_bin():
    return shutil.which("pgbench") or os.path.join(
        subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip(), "pgbench")


def prepare_data(info, scale):
    """pgbench's tables at `scale`, readable by the IAM user and the password user."""
    env = dict(os.environ, PGPASSWORD=info["master_password"], PGSSLMODE="require")
    conn = ["-h", "localhost", "-p", str(info["port"]), "-U", info["master_user"], info["database"]]
    subprocess.run([pgbench_bin(), "-i", "-q", "-s", str(scale), *conn], env=env, check=True, capture_output=True)
    subprocess.run(["psql", "-X", "-q", *conn, "-c",
                    f"grant select on all tables in schema public to {info['iam_user']}, {info['plain_user']}"],
                   env=env, check=True)
