"""A small user MCP server for the deployment tests."""
