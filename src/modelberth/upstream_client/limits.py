"""The client's limits, in one place; why each is what it is: the package's docstring."""

CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 4.0  # a pooled connection unused this long is closed
MAX_IDLE = 256  # pooled connections kept per address
HIGH_WATER = 256 * 1024  # answer bytes buffered before the upstream is paused
WHOLE_REQUEST = 64 * 1024  # bodies up to this size go out in one write with the head
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})  # RFC 9110 §9.2.2
EARLY = 0.001  # a timer firing this close to its deadline counts as on time (uvloop: ms)
