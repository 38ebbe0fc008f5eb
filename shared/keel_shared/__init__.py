"""shared package of Keel."""
