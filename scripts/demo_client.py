#!/usr/bin/env python3
"""Call a deployed mcpops-server the way an AI client does: the MCP SDK's streamable HTTP client,
over HTTPS verified against the deployment's private CA, with a token from the lab issuer.

    demo_client.py URL --ca CA.crt --token-dir .lab/issuer --aud RESOURCE_URL [--iss ISSUER]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import subprocess
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def mint(args: argparse.Namespace) -> str:
    cmd = [sys.executable, "-m", "mcpops_server.devissuer", "token", args.token_dir, "--aud", args.aud]
    cmd += ["--scope", args.scope, "--sub", "demo-user", "--iss", args.iss]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


async def main(args: argparse.Namespace) -> int:
    ctx = ssl.create_default_context(cafile=args.ca)
    headers = {"Authorization": f"Bearer {mint(args)}"}
    if args.host_header:
        headers["Host"] = args.host_header
    http = httpx2.AsyncClient(verify=ctx, headers=headers, timeout=30)
    async with http, Client(streamable_http_client(args.url, http_client=http)) as client:
        tools = await client.list_tools()
        added = await client.call_tool("notes_add", {"title": "demo", "body": "hello from make demo"})
    print(f"tools/list through {args.url}: {len(tools.tools)} tools")
    for tool in tools.tools:
        print(f"  - {tool.name}: {(tool.description or '').splitlines()[0]}")
    text = "".join(getattr(c, "text", "") for c in added.content)
    try:
        note = json.loads(text)
        print(f"tools/call notes_add: stored note {note['id']} ({note['title']!r}) in Redis")
    except (ValueError, KeyError, TypeError):
        print(f"tools/call notes_add: {text[:300]}")
    return 1 if added.is_error else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--token-dir", required=True)
    parser.add_argument("--aud", required=True)
    parser.add_argument("--iss", default="https://issuer.mcpops.test")
    parser.add_argument("--scope", default="mcp:tools")
    parser.add_argument("--host-header")
    sys.exit(asyncio.run(main(parser.parse_args())))
