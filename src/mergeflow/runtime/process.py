"""Which process runs a job: its own, or a child the warm job server forked (the job's log says which)."""

from __future__ import annotations

_server_pid: int | None = None


def mark_forked_by_server(server_pid: int) -> None:
    """Called in a job the job server forked, before the job runs."""
    global _server_pid
    _server_pid = server_pid


def forked_by_server() -> int | None:
    """The job server's process id in a job it forked; None in a process of its own."""
    return _server_pid
