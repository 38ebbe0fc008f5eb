"""router package of Keel."""
