"""A raw Postgres client for tests that run as another OS user: sends a StartupMessage (over
TCP or a Unix socket) and prints the first answer as JSON: an ErrorResponse's fields, or the
authentication request code. Usage: pg_hello.py HOST|SOCKET_PATH PORT USER DATABASE."""
import json
import socket
import struct
import sys

target, port, user, database = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if target.startswith("/"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(target)
    except OSError as e:
        print(json.dumps({"connect_error": e.errno}))
        sys.exit(0)
else:
    s = socket.create_connection((target, port), timeout=20)
s.settimeout(20)
body = struct.pack("!I", 196608)
for k, v in (("user", user), ("database", database)):
    body += k.encode() + b"\0" + v.encode() + b"\0"
body += b"\0"
s.sendall(struct.pack("!I", len(body) + 4) + body)


def read(n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise SystemExit(json.dumps({"closed": True}))
        data += chunk
    return data


tag = read(1)
length = struct.unpack("!I", read(4))[0]
payload = read(length - 4)
if tag == b"E":
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    print(json.dumps({"error": fields}))
elif tag == b"R":
    print(json.dumps({"auth": struct.unpack("!I", payload[:4])[0]}))
else:
    print(json.dumps({"tag": tag.decode()}))
