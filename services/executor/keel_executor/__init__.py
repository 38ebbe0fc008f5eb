"""executor package of Keel."""
