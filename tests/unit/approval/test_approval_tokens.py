"""Tokens: random, stored as digests, compared in constant time; CSRF tokens tied to the session."""

from __future__ import annotations

from keel_approval import tokens


def test_tokens_are_random_and_recognisable() -> None:
    a, b = tokens.new_token(), tokens.new_token()
    assert a != b and a.startswith("kat_") and len(a) > 40


def test_only_the_digest_is_stored_and_it_matches_only_its_token() -> None:
    token = tokens.new_token()
    digest = tokens.hash_token(token)
    assert token not in digest and len(digest) == 64
    assert tokens.token_matches(token, digest)
    assert not tokens.token_matches(token + "x", digest)
    assert not tokens.token_matches(tokens.new_token(), digest)


def test_the_csrf_token_depends_on_the_session() -> None:
    s1, s2 = tokens.new_session_token(), tokens.new_session_token()
    assert tokens.csrf_token(s1) == tokens.csrf_token(s1)
    assert tokens.csrf_token(s1) != tokens.csrf_token(s2)
    assert s1 not in tokens.csrf_token(s1)
