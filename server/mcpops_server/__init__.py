"""mcpops-server: a production runtime for MCP servers."""

__version__ = "0.1.0"
