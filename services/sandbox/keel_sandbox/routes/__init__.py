"""HTTP routes, one module per system of record plus the sandbox's own control endpoints."""
