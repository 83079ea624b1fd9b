"""Child processes that do not outlive their parent.

A supervisor can die by SIGKILL, which no ``finally`` sees; its children (worker
processes, the embedded Valkey) would then keep ports, files and memory. On Linux
``prctl(PR_SET_PDEATHSIG)`` has the kernel send them SIGTERM when their parent
goes. It is tied to the parent *thread*: start such children from the main thread.
Elsewhere these are no-ops.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., Any] | None:
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    return None


def die_with_parent() -> None:
    """In a child: get SIGTERM when the parent dies, however it dies."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def exec_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` doing :func:`die_with_parent` in the child.

    libc is looked up here, in the parent: the forked child only makes the one call.
    """
    prctl = _prctl()
    if prctl is None:
        return None

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook
