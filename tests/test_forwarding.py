"""Pass-through forwarding against the sandbox over real sockets: methods, queries, headers, errors."""

from __future__ import annotations

import datetime
import gzip
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from proxy.sandbox.bpoc import create_bpoc_app
from proxy.sandbox.seed import BpocState, RecordedRequest
from proxy.sandbox.server import serve_in_thread

from .conftest import API_KEY, ROOT, auth, base_env, token_for

ECHO = "/_sandbox/echo/thing"


def echoed_headers(response: httpx.Response) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_method_is_forwarded(proxy_url: str, client: httpx.Client, method: str) -> None:
    """Each method reaches BPOC as itself, with the same path."""
    response = client.request(
        method, proxy_url + ECHO, headers=auth(), content=b"x" if method != "GET" else None
    )
    assert response.status_code == 200
    assert response.json()["method"] == method
    assert response.json()["path"] == ECHO


def test_head_is_forwarded_without_body(proxy_url: str, client: httpx.Client, bpoc_state: BpocState) -> None:
    """HEAD reaches BPOC as HEAD and the client gets headers only."""
    response = client.head(proxy_url + ECHO, headers=auth())
    assert response.status_code == 200
    assert response.content == b""
    assert bpoc_state.requests[-1].method == "HEAD"


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
def test_trace_and_connect_are_refused(proxy_url: str, bpoc_state: BpocState, method: str) -> None:
    """TRACE would have BPOC echo the request it received, agency key included, back to the client; CONNECT asks
    a reverse proxy for a tunnel (the engine read BPOC's answer as one and cut its body): 405, never forwarded."""
    host, port = proxy_url.removeprefix("http://").rsplit(":", 1)
    request = f"{method} {ECHO} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token_for()}\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request.encode())
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        body = json.loads(response.read())
    assert response.status == 405 and body["code"] == "method_not_allowed"
    assert response.getheader("allow") == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert body["requestId"] == response.getheader("x-request-id")
    assert bpoc_state.requests_to("/_sandbox") == []


def test_query_string_passes_byte_for_byte(proxy_url: str, client: httpx.Client) -> None:
    """Repeated and percent-encoded query keys reach BPOC exactly as sent."""
    query = "a=1&a=2&b=%20x%2By&c%5B%5D=%E2%9C%93&empty=&flag"
    response = client.get(f"{proxy_url}{ECHO}?{query}", headers=auth())
    assert response.json()["query_string"] == query


def test_agency_key_replaces_the_client_key(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """A client-sent X-API-Key is dropped; BPOC gets the agency key exactly once."""
    response = client.get(proxy_url + ECHO, headers={**auth(), "X-API-Key": "client-forged-key"})
    assert response.status_code == 200
    assert bpoc_state.requests[-1].header_values("x-api-key") == [API_KEY]
    assert API_KEY not in response.text
    assert "client-forged-key" not in json.dumps(response.json()["headers"])


def test_session_header_and_cookie_are_not_forwarded(
    start_proxy, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """The portal session (header or cookie) stays with the proxy; other cookies pass."""
    url = start_proxy(base_env(bpoc_url, PORTAL_SESSION_COOKIE="portal_session"))
    token = token_for()
    response = client.get(url + ECHO, headers={"Cookie": f"theme=dark; portal_session={token}; lang=en"})
    assert response.status_code == 200
    received = bpoc_state.requests[-1]
    assert received.header("cookie") == "theme=dark; lang=en"
    response = client.get(url + ECHO, headers=auth())
    assert bpoc_state.requests[-1].header("authorization") is None


def test_hop_by_hop_request_headers_are_stripped(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """Connection, Keep-Alive, TE, Upgrade, Proxy-* and headers named in Connection never reach BPOC."""
    headers = {
        **auth(),
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "secret-hop",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Upgrade": "websocket",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-End-To-End": "kept",
    }
    client.get(proxy_url + ECHO, headers=headers)
    received = bpoc_state.requests[-1]
    for name in ("x-hop", "keep-alive", "te", "upgrade", "proxy-authorization"):
        assert received.header(name) is None, name
    assert received.header("x-end-to-end") == "kept"
    assert received.header("host") == bpoc_state_host(received)


def bpoc_state_host(received: RecordedRequest) -> str:
    value = received.header("host")
    assert value is not None and value.startswith("127.0.0.1:")
    return value


def test_hop_by_hop_response_headers_are_stripped(proxy_url: str, client: httpx.Client) -> None:
    """Hop-by-hop headers that BPOC sends do not reach the client; end-to-end ones do."""
    response = client.get(proxy_url + "/_sandbox/hop", headers=auth())
    assert response.status_code == 200
    assert "keep-alive" not in response.headers
    assert "proxy-authenticate" not in response.headers
    assert "x-private" not in response.headers


def test_forwarded_for_is_set_and_untrusted_values_replaced(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """An untrusted client cannot forge X-Forwarded-For or Forwarded."""
    client.get(
        proxy_url + ECHO,
        headers={
            **auth(),
            "X-Forwarded-For": "6.6.6.6",
            "Forwarded": "for=6.6.6.6",
            "X-Forwarded-Host": "evil",
        },
    )
    received = bpoc_state.requests[-1]
    assert received.header_values("x-forwarded-for") == ["127.0.0.1"]
    assert received.header("forwarded") is None
    assert received.header("x-forwarded-proto") == "http"
    assert received.header("x-forwarded-host") == proxy_host(proxy_url)


def proxy_host(url: str) -> str:
    return url.removeprefix("http://")


def test_forwarded_for_is_appended_for_trusted_proxies(
    start_proxy, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """From an address in PROXY_TRUSTED_PROXIES, the chain is kept and the peer appended."""
    url = start_proxy(base_env(bpoc_url, PROXY_TRUSTED_PROXIES="127.0.0.0/8"))
    client.get(url + ECHO, headers={**auth(), "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    received = bpoc_state.requests[-1]
    assert received.header("x-forwarded-for") == "203.0.113.7, 127.0.0.1"
    assert received.header("x-forwarded-proto") == "https"


def test_429_and_retry_after_pass_through_without_retry(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """BPOC's 429 reaches the client unchanged, and the proxy does not retry it."""
    bpoc_state.reset_requests()
    response = client.get(proxy_url + "/_sandbox/status/429?retry_after=17", headers=auth())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "17"
    assert len(bpoc_state.requests_to("/_sandbox/status")) == 1


def test_redirects_are_passed_back_not_followed(proxy_url: str, client: httpx.Client) -> None:
    """A 302 from BPOC goes back to the client with its Location."""
    response = client.get(proxy_url + "/_sandbox/redirect", headers=auth())
    assert response.status_code == 302
    assert response.headers["location"].endswith("/_sandbox/echo/redirected")


def test_encoded_response_passes_as_raw_bytes(proxy_url: str, client: httpx.Client) -> None:
    """A gzip body reaches the client still gzip-encoded, with its Content-Encoding."""
    with client.stream(
        "GET", proxy_url + "/_sandbox/download?gzip=1", headers={**auth(), "Accept-Encoding": "gzip"}
    ) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) == len(raw)
    json.loads(gzip.decompress(raw))


def test_request_id_is_returned_and_forwarded(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """A sane client X-Request-Id is kept end to end; otherwise the proxy makes one."""
    response = client.get(proxy_url + ECHO, headers={**auth(), "X-Request-Id": "req-123"})
    assert response.headers["x-request-id"] == "req-123"
    assert bpoc_state.requests[-1].header("x-request-id") == "req-123"
    response = client.get(proxy_url + ECHO, headers={**auth(), "X-Request-Id": "bad id\twith tab"})
    assert response.headers["x-request-id"] != "bad id\twith tab"
    assert len(response.headers["x-request-id"]) == 32


def test_upstream_down_gives_502(start_proxy, bpoc_url: str, client: httpx.Client) -> None:
    """BPOC unreachable: 502, JSON, one sentence, the request id, nothing secret."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    url = start_proxy(base_env(f"http://127.0.0.1:{closed_port}"))
    response = client.get(url + ECHO, headers=auth())
    assert response.status_code == 502
    body = response.json()
    assert body["status"] == 502
    assert body["requestId"] == response.headers["x-request-id"]
    assert body["error"].startswith("BPOC could not be reached")
    assert API_KEY not in response.text


def test_upstream_stall_gives_504(start_proxy, bpoc_url: str, client: httpx.Client) -> None:
    """BPOC slower than PROXY_UPSTREAM_TIMEOUT: 504 (the sandbox would wait five minutes; the client's own
    timeout of 30 s would fail the test first if the proxy did not give up)."""
    url = start_proxy(base_env(bpoc_url, PROXY_UPSTREAM_TIMEOUT="0.5"))
    response = client.get(url + "/_sandbox/slow?seconds=300", headers=auth())
    assert response.status_code == 504
    assert "PROXY_UPSTREAM_TIMEOUT" in response.json()["error"]


def test_oversized_body_on_a_rule_route_gives_413(
    start_proxy, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """A body over PROXY_MAX_BODY_BYTES on a buffered route is refused and never forwarded."""
    url = start_proxy(base_env(bpoc_url, PROXY_MAX_BODY_BYTES="1000"))
    bpoc_state.reset_requests()
    body = json.dumps({"title": "x" * 2000})
    response = client.post(
        url + "/api/v1/jobs/create", headers={**auth(), "Content-Type": "application/json"}, content=body
    )
    assert response.status_code == 413
    assert "PROXY_MAX_BODY_BYTES" in response.json()["error"]
    assert bpoc_state.requests_to("/api/v1/jobs") == []


def test_large_pass_through_body_is_not_limited(start_proxy, bpoc_url: str, client: httpx.Client) -> None:
    """PROXY_MAX_BODY_BYTES applies to buffered routes only; streamed uploads pass."""
    url = start_proxy(base_env(bpoc_url, PROXY_MAX_BODY_BYTES="1000"))
    response = client.post(url + "/_sandbox/upload", headers=auth(), content=b"z" * 100_000)
    assert response.status_code == 200
    assert response.json()["size"] == 100_000


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({"BPOC_API_KEY": ""}, "BPOC_API_KEY is missing", id="missing-key"),
        pytest.param(
            {"BPOC_API_KEY_FILE": "/nonexistent/key"}, "BPOC_API_KEY and BPOC_API_KEY_FILE", id="both-keys"
        ),
        pytest.param(
            {"BPOC_BASE_URL": "https://bpoc.io/api/v1"}, "BPOC_BASE_URL must be an origin", id="url-path"
        ),
        pytest.param({"BPOC_BASE_URL": "bpoc.io"}, "BPOC_BASE_URL must be an http", id="url-scheme"),
        pytest.param({"PROXY_PORT": "eighty"}, "PROXY_PORT must be a whole number", id="port"),
        pytest.param({"PROXY_UPSTREAM_TIMEOUT": "-1"}, "PROXY_UPSTREAM_TIMEOUT must be", id="timeout"),
        pytest.param({"PROXY_MAX_BODY_BYTES": "lots"}, "PROXY_MAX_BODY_BYTES must be", id="max-body"),
        pytest.param({"PROXY_TRUSTED_PROXIES": "10.0.0.0/33"}, "PROXY_TRUSTED_PROXIES", id="trusted"),
        pytest.param(
            {"PROXY_RULES": "/nonexistent/rules.yaml"}, "/nonexistent/rules.yaml", id="rules-missing"
        ),
        pytest.param(
            {"PORTAL_JWKS_URL": "http://127.0.0.1:9/jwks"}, "set exactly one of", id="two-auth-modes"
        ),
    ],
)
def test_bad_settings_stop_start_up_with_one_line(env: dict[str, str], expected: str) -> None:
    """`bpoc-proxy serve` with a bad setting exits non-zero with one line naming it, no traceback."""
    full = {"PATH": "/usr/bin:/bin", **base_env("http://127.0.0.1:9"), **env}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert API_KEY not in result.stderr


def test_api_key_file_is_reread_when_rotated(
    start_proxy, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState, tmp_path
) -> None:
    """BPOC_API_KEY_FILE: a key rotated in place (as Kubernetes does) is used without a restart."""
    key_file = tmp_path / "api-key"
    key_file.write_text("first-key\n")
    env = base_env(bpoc_url, BPOC_API_KEY_FILE=str(key_file))
    del env["BPOC_API_KEY"]
    url = start_proxy(env)
    client.get(url + ECHO, headers=auth())
    assert bpoc_state.requests[-1].header("x-api-key") == "first-key"
    rotated = tmp_path / "api-key.new"
    rotated.write_text("second-key\n")
    rotated.replace(key_file)
    deadline = time.monotonic() + 5
    while bpoc_state.requests[-1].header("x-api-key") != "second-key" and time.monotonic() < deadline:
        time.sleep(0.2)
        client.get(url + ECHO, headers=auth())
    assert bpoc_state.requests[-1].header("x-api-key") == "second-key"


def test_http_proxy_setting_is_honoured(
    start_proxy, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """HTTP_PROXY (HTTPS_PROXY for https) carries the connection to BPOC; here the sandbox plays the proxy."""
    env = base_env("http://bpoc.example", HTTP_PROXY=bpoc_url, RECRUITER_SYNC_INTERVAL="0")
    url = start_proxy(env)
    response = client.get(url + ECHO, headers=auth())
    assert response.status_code == 200
    assert bpoc_state.requests[-1].header("host") == "bpoc.example"


def self_signed_certificate(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


def test_ssl_cert_file_is_honoured(
    start_proxy, bpoc_state: BpocState, client: httpx.Client, tmp_path
) -> None:
    """SSL_CERT_FILE names the CA that BPOC's certificate must chain to; without it the proxy refuses (502)."""
    cert, key = self_signed_certificate(tmp_path)
    with serve_in_thread(create_bpoc_app(bpoc_state), ssl_certfile=cert, ssl_keyfile=key) as https_url:
        bpoc = https_url.replace("http://127.0.0.1", "https://localhost")
        trusting = start_proxy(base_env(bpoc, SSL_CERT_FILE=cert))
        assert client.get(trusting + ECHO, headers=auth()).status_code == 200
        untrusting = start_proxy(base_env(bpoc))
        response = client.get(untrusting + ECHO, headers=auth())
        assert response.status_code == 502


def test_streamed_upload_keeps_its_content_length(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """A pass-through upload with a Content-Length reaches BPOC with that length, not re-chunked."""
    response = client.put(proxy_url + "/_sandbox/upload", headers=auth(), content=b"q" * 300_000)
    assert response.json()["size"] == 300_000
    received = bpoc_state.requests_to("/_sandbox/upload")[-1]
    assert received.header("content-length") == "300000"
    assert received.header("transfer-encoding") is None


def test_chunked_upload_passes_chunked(proxy_url: str, client: httpx.Client, bpoc_state: BpocState) -> None:
    """A pass-through upload of unknown length is streamed on chunked."""

    def body() -> Iterator[bytes]:
        yield b"a" * 1000
        yield b"b" * 1000

    response = client.post(proxy_url + "/_sandbox/upload", headers=auth(), content=body())
    assert response.json()["size"] == 2000
    assert bpoc_state.requests_to("/_sandbox/upload")[-1].header("transfer-encoding") == "chunked"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_own_endpoints_answer_json_and_refuse_other_methods(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState, path: str
) -> None:
    """/healthz and /readyz answer GET without a session, refuse other methods in JSON, and are never forwarded."""
    bpoc_state.reset_requests()
    assert client.get(proxy_url + path).status_code == 200
    refused = client.post(proxy_url + path)
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"
    assert refused.json()["requestId"] == refused.headers["x-request-id"]
    assert [r for r in bpoc_state.requests if r.path == path] == []
