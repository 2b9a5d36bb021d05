"""The framing rules a request is held to, beyond what the HTTP parser checks (RFC 9112 sections 6 and 11.2).

A proxy and the server behind it must agree on where each request ends. Where they could disagree, a client can
hide a second request inside the first (request smuggling), one that the proxy never authenticated or
attributed. So a request is framed in exactly one way, or it is refused before anything is forwarded:

- its header section (request line and headers) is at most ``MAX_HEAD_BYTES``, else 431;
- ``Transfer-Encoding``, when sent, is exactly ``chunked`` (in any letter case), in one header, in an HTTP/1.1
  request without a ``Content-Length``, else 400. The proxy forwards chunked bodies decoded and re-framed, and
  drops Transfer-Encoding as hop-by-hop: a body sent as ``gzip, chunked`` would reach BPOC as bytes of another
  meaning, and HTTP/1.0 has no chunked coding (section 6.1 calls such framing faulty).

uvicorn's parser (llhttp) refuses the rest: two Content-Lengths, both Content-Length and Transfer-Encoding, obs-fold,
bare LF, whitespace before a colon, control characters. ``protocol.py`` applies these rules while a request is
parsed, before the app sees it; the pipeline applies the Transfer-Encoding rule again, for an app served by
another server.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import BadRequest, HeadersTooLarge

MAX_HEAD_BYTES = 64 * 1024


def head_too_large() -> HeadersTooLarge:
    return HeadersTooLarge(
        f"The request line and headers are over {MAX_HEAD_BYTES // 1024} KiB, the most this proxy reads."
    )


def malformed(reason: str) -> BadRequest:
    """A request the HTTP parser refused; ``reason`` is the parser's, such as "Duplicate Content-Length"."""
    if "PRI" in reason:  # llhttp stops at the HTTP/2 connection preface ("PRI * HTTP/2.0")
        return BadRequest("The proxy speaks HTTP/1.1; an HTTP/2 connection preface is not accepted.")
    return BadRequest(
        f"The request is not valid HTTP: {reason}" if reason else "The request is not valid HTTP."
    )


def transfer_coding_error(headers: Sequence[tuple[bytes, bytes]], http_version: str) -> BadRequest | None:
    """Why a request's Transfer-Encoding cannot be forwarded, or None when it can or there is none.

    ``headers`` have lowercase names, as ASGI gives them."""
    codings = [value for name, value in headers if name == b"transfer-encoding"]
    if not codings:
        return None
    if http_version == "1.0":
        return BadRequest("An HTTP/1.0 request cannot use Transfer-Encoding; send a Content-Length.")
    if len(codings) > 1 or codings[0].strip(b" \t").lower() != b"chunked":
        return BadRequest(
            "Transfer-Encoding must be exactly chunked; send one Transfer-Encoding: chunked or a Content-Length."
        )
    if any(name == b"content-length" for name, _ in headers):
        return BadRequest(
            "A request cannot carry both Content-Length and Transfer-Encoding; send one of them."
        )
    return None
