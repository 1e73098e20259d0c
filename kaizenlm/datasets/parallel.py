"""A second core for curation: run one function in a forked child while this process goes on.

`beside(workers, fn, *args)` starts ``fn(*args)`` and returns a handle whose ``result()``
gives its return value (or raises its exception). With ``workers`` >= 2, on a platform that
can fork, the call runs in a child process forked for it; otherwise it runs in this process
when ``result()`` is called, so both paths run the same code and give the same output.

Why fork, and why it is safe here:

- the child inherits its inputs (frames, lists, arrays) instead of receiving them pickled:
  at 100k turns, pickling the prepared frame alone costs about 0.25 CPU s, about what the
  child would save; only the (small) result comes back through a pipe;
- the child runs plain Python, NumPy and pandas code on that data. It never touches DuckDB:
  the connection the parent holds is inherited but unused, DuckDB's file locks are not
  inherited by a child process, and the child leaves with ``os._exit`` (multiprocessing's
  way), so no destructor, atexit hook or buffered stream of the parent runs in it;
- its garbage collector is off: it lives for one call, and a collection would touch (and so
  copy) every page of the parent's heap.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["beside", "can_fork"]

log = logging.getLogger(__name__)
# A phase takes about a second per 100k turns; a child silent this long is stuck, not busy.
CHILD_TIMEOUT_S = 600


def can_fork() -> bool:
    """Whether a worker can be forked here: the platform has fork (Linux, macOS; not Windows)
    and this is not a daemonic multiprocessing process (those may not have children)."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


class _Inline:
    """The one-process path: the call runs when its result is asked for."""

    def __init__(self, fn: Callable, args: tuple) -> None:
        self._fn, self._args = fn, args

    def result(self) -> Any:
        return self._fn(*self._args)


def _child(conn, fn: Callable, args: tuple) -> None:
    gc.disable()
    try:
        out = (True, fn(*args))
    except BaseException as e:  # sent to the parent, which raises it
        out = (False, e)
    with contextlib.suppress(BrokenPipeError):  # the parent stopped waiting (it failed itself)
        conn.send(out)
    conn.close()


class _Forked:
    """The call in a forked child; ``result()`` waits for it."""

    def __init__(self, fn: Callable, args: tuple) -> None:
        self._fn, self._args = fn, args
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork in a process with threads (DuckDB's, Arrow's, a
            # server's). The child only runs fn on inherited data and touches no state those
            # threads own (see the module docstring).
            warnings.simplefilter("ignore", DeprecationWarning)
            self._proc = ctx.Process(target=_child, args=(send, fn, args), daemon=True)
            self._proc.start()
        send.close()

    def result(self) -> Any:
        if not self._recv.poll(CHILD_TIMEOUT_S):
            # A lock another thread of the parent held at fork time stays held in the child
            # for ever; rather than hang the build, drop the child and do the work here.
            self._proc.kill()
            self._proc.join()
            self._recv.close()
            log.warning("curation worker gave no answer in %d s; running its part in this process", CHILD_TIMEOUT_S)
            return self._fn(*self._args)
        try:
            ok, value = self._recv.recv()
        except EOFError:
            self._proc.join()
            raise RuntimeError(f"curation worker process died (exit code {self._proc.exitcode})") from None
        finally:
            self._recv.close()
        self._proc.join()
        if not ok:
            raise value
        return value


def beside(workers: int, fn: Callable, *args: Any) -> _Inline | _Forked:
    """Run ``fn(*args)`` in a forked child when ``workers`` >= 2 (and fork exists), else in
    this process at ``result()``. ``fn``'s result must pickle when it runs in a child."""
    if workers >= 2 and can_fork():
        return _Forked(fn, args)
    return _Inline(fn, args)
