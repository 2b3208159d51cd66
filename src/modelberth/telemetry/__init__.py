"""Logs, metrics and traces: set-up, the per-request observation on the event loop, the
hand-over of traced requests and the span export process."""
