"""Run by tests/unit/test_egress.py inside `unshare --net`, as root, in a network namespace of its own:
bring loopback up, load the rendered table, listen on every target, then connect to each target as
each uid given. The first uid also owns an echo server on port 8100 (its instance port), which root
connects to: its reply must pass. Prints one JSON object.

usage: netns_probe.py NFT RULESET UID...
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

TARGETS = [
    ("127.0.0.1", 6379),  # Redis
    ("127.0.0.1", 9100),  # node_exporter
    ("127.0.0.1", 8000),  # another server's instance port
    ("127.0.0.3", 8443),  # the egress entry 127.0.0.3:8443
    ("127.0.0.3", 8444),  # another port of that address
]
INSTANCE = ("127.0.0.1", 8100)
DEADLINE = 5.0

PROBE = """
import json, socket, sys
out = {}
for host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=5).close()
        out[f"{host}:{port}"] = "open"
    except OSError as e:
        out[f"{host}:{port}"] = type(e).__name__
print(json.dumps(out))
"""

ECHO = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
s.settimeout(30)
c, _ = s.accept()
c.settimeout(5)
c.sendall(c.recv(64).upper())
c.close()
"""


def listen(host: str, port: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(16)

    def serve() -> None:
        while True:
            conn, _ = s.accept()
            conn.close()

    threading.Thread(target=serve, daemon=True).start()


def as_uid(uid: int, code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def main() -> None:
    nft, ruleset, *uids = sys.argv[1:]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run([nft, "-f", ruleset], check=True)
    for host, port in TARGETS:
        listen(host, port)
    result: dict[str, object] = {}
    for uid in uids:
        probe = as_uid(int(uid), PROBE, json.dumps(TARGETS))
        result[uid] = json.loads(probe.communicate(timeout=60)[0])
    echo = as_uid(int(uids[0]), ECHO, INSTANCE[0], str(INSTANCE[1]))
    assert echo.stdout.readline().strip() == "ready"
    with socket.create_connection(INSTANCE, timeout=DEADLINE) as conn:
        conn.settimeout(DEADLINE)
        conn.sendall(b"ping")
        result["reply"] = conn.recv(64).decode()
    echo.wait(timeout=30)
    listed = subprocess.run(
        [nft, "list", "table", "inet", "mcpops_egress"], capture_output=True, text=True, check=True
    )
    result["table"] = listed.stdout
    print(json.dumps(result))


if __name__ == "__main__":
    main()
