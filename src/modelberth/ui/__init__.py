"""The web dashboard (issue #17): static HTML, CSS and ES modules served at /ui."""

from modelberth.ui.router import router

__all__ = ["router"]
