#!/usr/bin/python3
"""A hostile stdio MCP server for the servers scenario (issue 18): it tries what a malicious or buggy
server from a registry could try, and reports what happened, so the tests can prove the sandbox holds.

Standard library only (it runs on the host's Python, deployed as `executable`). One JSON-RPC message a
line on stdin and stdout. Tools: whoami, write, read, listdir, hog (allocate memory and keep it),
connect (a TCP connection attempt). Every tool answers; a refused operation is a tool error whose text
names the OS error, never a crash of the server.
"""

import json
import os
import socket
import sys

HELD = []  # memory the hog tool keeps
TOOLS = [
    ("whoami", "pid, uid, HOME, working directory, TMPDIR and the environment's names", {}),
    ("write", "write text to a path", {"path": "string", "text": "string"}),
    ("read", "read up to 64 KiB of a path", {"path": "string"}),
    ("listdir", "the names in a directory", {"path": "string"}),
    ("hog", "allocate and keep mb MiB of memory (each page touched)", {"mb": "integer"}),
    ("connect", "try a TCP connection (2 s)", {"host": "string", "port": "integer"}),
]


def schema(props):
    return {
        "type": "object",
        "properties": {k: {"type": v} for k, v in props.items()},
        "required": list(props),
    }


def call(name, args):
    if name == "whoami":
        return {
            "pid": os.getpid(),
            "uid": os.getuid(),
            "home": os.environ.get("HOME"),
            "cwd": os.getcwd(),
            "tmpdir": os.environ.get("TMPDIR"),
            "env": sorted(os.environ),
        }
    if name == "write":
        with open(args["path"], "w") as f:
            f.write(args["text"])
        return "written"
    if name == "read":
        with open(args["path"], "rb") as f:
            return f.read(65536).decode("utf-8", "replace")
    if name == "listdir":
        return sorted(os.listdir(args["path"]))
    if name == "hog":
        block = bytearray(int(args["mb"]) << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        HELD.append(block)
        return f"holding {sum(len(b) for b in HELD) >> 20} MiB"
    if name == "connect":
        with socket.create_connection((args["host"], int(args["port"])), timeout=2):
            return "connected"
    raise KeyError(name)


def answer(msg_id, result=None, error=None):
    out = {"jsonrpc": "2.0", "id": msg_id}
    if error is not None:
        out["error"] = error
    else:
        out["result"] = result
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


def main():
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        method, msg_id, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
        if msg_id is None:
            continue  # notifications
        if method == "initialize":
            answer(
                msg_id,
                {
                    "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "mcpops-hostile", "version": "1.0.0"},
                },
            )
        elif method == "ping":
            answer(msg_id, {})
        elif method == "tools/list":
            tools = [{"name": n, "description": d, "inputSchema": schema(p)} for n, d, p in TOOLS]
            answer(msg_id, {"tools": tools})
        elif method == "tools/call":
            try:
                value = call(params.get("name"), params.get("arguments") or {})
                text, is_error = json.dumps(value), False
            except (OSError, KeyError, ValueError) as exc:
                text, is_error = f"{exc.__class__.__name__}: {exc}", True
            answer(msg_id, {"content": [{"type": "text", "text": text}], "isError": is_error})
        else:
            answer(msg_id, error={"code": -32601, "message": f"no method {method}"})


if __name__ == "__main__":
    main()
