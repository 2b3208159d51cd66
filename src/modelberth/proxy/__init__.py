"""The inference hot path: handler.py (admit, relay, stream), request.py (body and model),
reply.py (the answer over ASGI with the connection hooks), errors.py (OpenAI-shaped errors
and SSE error events), forwarding.py (headers to the upstream)."""
