"""Logs, metrics, tracing and the span-exporting child process."""
