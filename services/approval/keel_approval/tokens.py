"""Approver tokens, inbox sessions and CSRF tokens.

Tokens are 256 random bits, so a fast hash is enough to store them: slow password hashes (argon2,
bcrypt) protect guessable secrets, and these cannot be guessed. A SHA-256 digest can also be looked up
by index, which a salted hash cannot. The plain token is shown once, when it is made, and never stored,
logged or put in an event.
"""

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "kat_"  # noqa: S105 - a prefix, not a secret: makes a leaked token recognisable
SESSION_PREFIX = "kas_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_session_token() -> str:
    return SESSION_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Constant-time check of a presented token against a stored digest."""
    return hmac.compare_digest(hash_token(token).encode(), stored_hash.encode())


def csrf_token(session_token: str) -> str:
    """The CSRF token of one inbox session. It is derived from the session secret, which lives in an
    HttpOnly cookie another site can neither read nor guess, so a forged form cannot carry it."""
    return hmac.new(session_token.encode(), b"keel-approval-csrf", hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
