"""Runtimes start, stop and watch upstream servers: local processes (and, later, containers)."""
