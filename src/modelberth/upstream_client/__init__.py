"""The hot path's HTTP/1.1 client to upstreams: keep-alive connections pooled per address,
answers parsed by httptools and handed on piece by piece, with flow control.

Limits, and why (the numbers are in limits.py):
- Connect timeout, 10 s: a local upstream that does not accept by then is not coming; the
  request was never sent (UpstreamUnreachable), so the caller may send it elsewhere or again.
- Idle timeout, 4 s (`UpstreamClient(idle_timeout=...)`): below the upstreams' own keep-alive
  (llama-server and uvicorn close idle connections at 5 s), so a pooled connection is rarely
  reused just as the upstream closes it. Idle connections are closed actively (one timer per
  address), so none lingers half-closed (CLOSE_WAIT).
- Pool size, 256 idle connections per address, reused newest first so the others age out.
- High water, 256 KB: answer bytes buffered before reading from the upstream is paused, until
  the caller takes them.
- Replay (RFC 9112 §9.3.1): a request is sent again, once, on a new connection only when that
  is safe: its method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and a reused
  pooled connection failed before any byte of the answer arrived (the stale keep-alive race).
  Anything else, a POST above all (even without a body), may have been read and acted on by
  the upstream: it fails with UpstreamError, whose `answered` and `reused` let the caller
  decide; so does a timed-out request. A connection that saw the upstream's EOF is never
  reused.
- Timeouts for the answer: `request(first_byte_timeout=)` for its head, `next_piece()` and
  `read()`'s `stall_timeout` between its bytes (none by default); past them the connection is
  aborted and UpstreamTimeout raised. One timer per connection, re-armed lazily, serves both.

Hosts and TLS: an upstream is an address or a host name (resolved by the event loop when a
connection is made, so pooled connections cost no lookup), over plain HTTP or, for remote
endpoints, TLS through the stdlib's ssl (one default context, made on first use: the
system's CAs or $SSL_CERT_FILE, the host name checked); plain and TLS connections are
pooled apart. The handshake counts towards the connect timeout.

It does only what forwarding to a model server needs, at a quarter of the CPU time of
aiohttp's ClientSession per request (decision 12 in docs/decisions.md). Health probes and
everything off the hot path keep using aiohttp.

It is fenced (the `fenced-client` contract in .importlinter): it imports nothing of
modelberth's, so it can be read, tested and measured on its own. Its modules: errors.py (what
callers catch), connection.py (one connection: the asyncio protocol and the httptools
parser's callbacks) and client.py (the pools, requests and answers built on connections)."""

from modelberth.upstream_client.client import Address, UpstreamClient, UpstreamResponse
from modelberth.upstream_client.connection import Headers
from modelberth.upstream_client.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable

__all__ = [
    "Address",
    "Headers",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]
