"""FastAPI routers for everything off the hot path: model list, management, health."""
