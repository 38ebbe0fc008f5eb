"""contracts package of Keel."""
