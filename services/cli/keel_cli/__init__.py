"""cli package of Keel."""
