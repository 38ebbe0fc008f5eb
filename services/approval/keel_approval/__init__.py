"""approval package of Keel."""
