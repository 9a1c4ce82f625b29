"""The MCP server both benchmark sides serve: (a) bare under uvicorn, (b) through mcpops-server (`app:`)."""

from __future__ import annotations

import sys
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

mcp = MCPServer("bench-app")


@mcp.tool(description="Add two integers.")
def add(a: Annotated[int, Field(description="first")], b: Annotated[int, Field(description="second")]) -> int:
    return a + b


def run_bare(port: int) -> None:
    """(a): the SDK's own streamable HTTP app under uvicorn, nothing added."""
    import uvicorn

    uvicorn.run(mcp.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    run_bare(int(sys.argv[1]))
