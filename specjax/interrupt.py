"""Ctrl-C that works: SIGINT asks the decode loop to stop at its next return to the host.

    with stop_on_sigint() as flag:      # a first SIGINT sets flag; a second one raises KeyboardInterrupt
        engine.generate_spec(..., should_stop=flag.is_set)   # raises Interrupted between loop calls
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(Exception):
    """Generation was stopped on request (SIGINT) between two calls of the decode loop."""


@contextlib.contextmanager
def stop_on_sigint():
    """Yields a threading.Event set by the first SIGINT; a second SIGINT raises KeyboardInterrupt at
    once. Outside the main thread (where signals cannot be caught) the event is never set."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
