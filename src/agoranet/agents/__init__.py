"""Agents as buyers: the MCP server (``agoranet mcp`` over stdio, ``/mcp`` on the gateway)
whose tools are thin calls onto the gateway's HTTP API, acting as one gateway key."""
