"""The user's MCPServer: mcp_server_app: "example_app.server:mcp"."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

mcp: MCPServer = MCPServer(name="example-app", instructions="An example user server with one tool.")


@mcp.tool(description="Reverse a string (proves the user's own package is what answers).")
def reverse_text(text: str) -> str:
    return text[::-1]
