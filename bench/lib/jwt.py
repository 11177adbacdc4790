#!/usr/bin/env python3
"""HS256 JWTs for the fake Medusa upstream (stdlib only).

Run as a script it prints the fixed bench token: deterministic (fixed claims, iat
2026-01-01, exp 2100-01-01, secret 'bench-secret'), so every run and every rendered
config agree on it without sharing state. It never expires during a benchmark.
lib/token_service.py imports make_token/verify for the short-token mode.

Usage: lib/jwt.py [SECRET]
"""
import base64
import hashlib
import hmac
import json
import sys

FIXED_IAT = 1767225600  # 2026-01-01T00:00:00Z
FIXED_EXP = 4102444800  # 2100-01-01T00:00:00Z
USER_ID = "user_01HBENCHADMIN0000000000"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _compact(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _sign(secret: str, signing_input: str) -> str:
    return b64url(hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest())


def make_token(secret: str, iat: int = FIXED_IAT, exp: int = FIXED_EXP, **extra) -> str:
    """A Medusa admin-user shaped token (v1 `user_id`, v2 `actor_id`) signed with secret."""
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {
        "actor_id": USER_ID,
        "actor_type": "user",
        "auth_identity_id": "authid_01HBENCH0000000000000",
        "app_metadata": {"user_id": USER_ID},
        "iat": iat,
        "exp": exp,
        **extra,
    }
    signing_input = b64url(_compact(header)) + "." + b64url(_compact(payload))
    return signing_input + "." + _sign(secret, signing_input)


def verify(secret: str, token: str):
    """The payload if token is a well-formed HS256 JWT signed with secret, else None.
    (Expiry is the caller's business.)"""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = json.loads(unb64url(parts[0]))
        if header.get("alg") != "HS256":
            return None
        if not hmac.compare_digest(_sign(secret, parts[0] + "." + parts[1]), parts[2]):
            return None
        payload = json.loads(unb64url(parts[1]))
    except (ValueError, TypeError, AttributeError):
        return None
    return payload if isinstance(payload, dict) else None


if __name__ == "__main__":
    print(make_token(sys.argv[1] if len(sys.argv) > 1 else "bench-secret"))
