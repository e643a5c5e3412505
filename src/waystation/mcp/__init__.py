"""The MCP endpoint for AI agents: read tools and resources, and write tools that wait for a person."""
