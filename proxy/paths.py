"""The request path the proxy matches is the path BPOC will serve.

A rule must not be escaped by spelling its path differently. :func:`normalise_path` turns the path the client
sent (ASGI ``scope["raw_path"]``, without the query) into one canonical form, which the proxy both matches
against the rules and forwards, so the two can never disagree:

* percent-escapes of unreserved characters (``ALPHA DIGIT - . _ ~``, RFC 3986 section 2.3) are decoded, so
  ``/api/v1/jobs/%63reate`` is ``/api/v1/jobs/create``; the hex digits of every other escape are uppercased
  (section 6.2.2.1);
* repeated slashes are collapsed and a trailing slash is removed (except for ``/`` itself);
* dot segments are resolved (section 5.2.4), after decoding, so ``%2e%2e`` is ``..``.

What cannot be normalised safely is refused with :class:`~proxy.errors.BadRequest`: invalid escapes, an
encoded slash, backslash or control character (servers disagree on whether ``%2F`` splits a segment), a raw
backslash (some servers read it as a slash), a ``;`` (path parameters, which some servers strip), a ``..``
above the root, a path that does not start with ``/``, and non-ASCII bytes. :func:`check_method` refuses the two
methods that have no meaning for BPOC behind a reverse proxy, CONNECT and TRACE.

Letter case is left alone here: the rules compare literal segments case-insensitively instead (see
``rules.py``), and the forwarded path keeps the client's case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import BadRequest, MethodNotAllowed

#: Headers some frameworks read to replace the request method; a client could use one to reach a route under a
#: method no rule names. The pipeline refuses any request that carries one.
METHOD_OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
#: Methods that mean nothing to an origin behind a reverse proxy, never forwarded (RFC 9110 sections 9.3.6, 9.3.8):
#: TRACE would have BPOC echo the request it received, the agency's X-API-Key included, back to the client;
#: CONNECT asks for a tunnel, and the forwarding engine would read BPOC's answer as one (no body).
UNFORWARDED_METHODS = frozenset({"CONNECT", "TRACE"})
_ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

# Anything that sends a path down the slow path; everything else is already canonical.
_NEEDS_WORK = re.compile(r"[%;\\\x00-\x1f\x7f]|//|/\.")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPE = re.compile(r"%(..?)?")
_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalise_path(raw_path: bytes) -> str:
    """Return the canonical form of ``raw_path``, to match and to forward, or raise BadRequest."""
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("The request path contains non-ASCII bytes; percent-encode them.") from None
    if not path.startswith("/"):
        raise BadRequest("The request path must start with '/'.")
    if _NEEDS_WORK.search(path) is None and (len(path) == 1 or not path.endswith("/")):
        return path
    _refuse_unsafe_characters(path)
    return _remove_dot_segments(_decode_unreserved(path))


def check_method_override(header_names: Iterable[str]) -> None:
    """Refuse a request that carries a method override header (names compared case-insensitively)."""
    for name in header_names:
        if name.lower() in METHOD_OVERRIDE_HEADERS:
            raise BadRequest(
                f"The {name} header is not accepted; send the request with its real HTTP method."
            )


def check_method(method: str) -> None:
    """Refuse CONNECT and TRACE (405), which the proxy never forwards; every other method goes on as it is."""
    if method.upper() in UNFORWARDED_METHODS:
        raise MethodNotAllowed(f"{method} requests are not forwarded to BPOC.", headers={"Allow": _ALLOW})


def _refuse_unsafe_characters(path: str) -> None:
    if "\\" in path:
        raise BadRequest("The request path contains a backslash, which servers disagree about.")
    if ";" in path:
        raise BadRequest("The request path contains ';' (a path parameter), which is not accepted.")
    if _CONTROL.search(path):
        raise BadRequest("The request path contains a control character.")


def _decode_unreserved(path: str) -> str:
    if "%" not in path:
        return path
    return _ESCAPE.sub(_decode_escape, path)


def _decode_escape(match: re.Match[str]) -> str:
    digits = match.group(1) or ""
    if len(digits) != 2 or not _HEX.issuperset(digits):
        raise BadRequest(f"The request path contains an invalid percent-escape {match.group(0)!r}.")
    char = chr(int(digits, 16))
    if char in _UNRESERVED:
        return char
    if char in "/\\" or _CONTROL.match(char):
        raise BadRequest(
            f"The request path contains an encoded {_describe(char)} (%{digits}), "
            "which servers disagree about."
        )
    return "%" + digits.upper()


def _describe(char: str) -> str:
    return {"/": "slash", "\\": "backslash", "\x00": "NUL"}.get(char, "control character")


def _remove_dot_segments(path: str) -> str:
    """Collapse empty segments, resolve ``.`` and ``..`` (RFC 3986 section 5.2.4); never climb above root."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not kept:
                raise BadRequest("The request path climbs above the root with '..'.")
            kept.pop()
        else:
            kept.append(segment)
    return "/" + "/".join(kept)
