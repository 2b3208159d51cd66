"""The inference hot path: the raw ASGI handler and its forwarding rules."""
