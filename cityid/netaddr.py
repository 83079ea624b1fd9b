"""``HOST:PORT`` as every service and config file writes a listen address."""

from __future__ import annotations


def host_port(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` as ``(host, port)``; an empty host is ``default_host``.

    Raises ValueError; callers name the flag or key it came from in their own error.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or default_host, int(port)
