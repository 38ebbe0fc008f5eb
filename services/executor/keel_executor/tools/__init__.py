"""Tool adapters: the registry and the built-in tools."""
