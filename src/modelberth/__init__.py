"""modelberth: one OpenAI-compatible endpoint in front of many local model servers."""

__version__ = "0.1.0"
