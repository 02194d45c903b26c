"""``Client.loop_start()``: the blocking client on background threads (CPython).

Two threads, so that user code never starves the connection: one does all
the I/O (reading, keepalive, reconnecting) and never runs user code; the
other runs the callbacks in order. Other threads queue their bytes in the
session under the client's lock and wake the I/O thread through a socket
pair instead of writing themselves, so one thread alone touches the socket
(safe for TLS too). Kept apart from ``_client`` because a board never needs
it: MicroPython loads only what it imports.
"""

import queue
import select
import socket
import sys
import threading

from ._client import NoLock
from ._client_base import BaseClient
from ._errors import MQTTError


def start(c):
    if c._io_thread is not None:
        return
    c._lock = threading.RLock()
    c._cond = threading.Condition(c._lock)
    c._wake = socket.socketpair()
    c._wake[0].setblocking(False)
    c._wake[1].setblocking(False)  # never block a publisher holding the lock
    c._wake_sent = False
    if c._poller is not None:
        c._poller.register(c._wake[0], select.POLLIN)
    c._calls = queue.SimpleQueue()
    c._closing = False
    c._io_thread = threading.Thread(target=_run_io, args=(c,), daemon=True)
    c._call_thread = threading.Thread(target=_run_calls, args=(c,), daemon=True)
    c._io_thread.start()
    c._call_thread.start()


def stop(c):
    stopping = c._closing
    c._closing = True
    try:
        c._wake[1].send(b"\x00")
    except OSError:  # full: the I/O thread is waking up anyway
        pass
    with c._lock:
        c._cond.notify_all()  # an I/O thread paused for room waits here, not on the socket
    if c._elsewhere(c._io_thread):
        c._io_thread.join()
    with c._lock:
        # Waiters (recv(), publish(), a callback's publish() too) give up
        # now rather than at their timeout: Client._wait() sees the thread
        # gone. Before joining the callback thread, which may be one of them.
        c._io_thread = None
        c._cond.notify_all()
    c._calls.put(None)
    if c._elsewhere(c._call_thread):
        c._call_thread.join()
    with c._lock:
        c._calls = None
        for s in c._wake:
            s.close()
        c._wake = None
        c._cond = None
    c._lock = NoLock()
    c._closing = stopping


def poll(c, ms):
    # Client._readable() under loop_start(): waits with the lock let go;
    # True if the connection's socket is ready (a byte on the wake-up
    # socket only wakes the I/O thread).
    c._lock.release()
    try:
        ready = c._poller.poll(ms)
    finally:
        c._lock.acquire()
    ok = False
    for entry in ready:
        if c._wake is not None and entry[0] in (c._wake[0], c._wake[0].fileno()):
            _woken(c)
        else:
            ok = True
    return ok


def _woken(c):
    # The I/O thread drains its wake-up socket; the next kick sends again.
    c._wake_sent = False
    try:
        while c._wake[0].recv(4096):
            pass
    except OSError:  # drained (non-blocking)
        pass


def _route(c, msg):
    # On the callback thread: routes a message that the I/O thread read and
    # queued as (None, message), holding its place meanwhile.
    try:
        BaseClient._route(c, msg)
    finally:
        with c._lock:
            c._release(msg)
            c._kick()


def _run_io(c):
    with c._lock:
        while not c._closing:
            if c._retry_at is None:
                # loop_start() before the first connect(): nothing to drive
                # yet, and _io() would end the thread with "not connected".
                # connect() runs on its caller's thread and notifies us.
                c._cond.wait(1.0)
                continue
            try:
                c._io(1.0)
            except (MQTTError, OSError) as e:  # down for good (OSError: why it broke)
                c._error = e
                c._cond.notify_all()
                return
            c._cond.notify_all()


def _run_calls(c):
    calls = c._calls  # stop() clears c._calls, maybe from a callback of ours
    while True:
        item = calls.get()
        if item is None:
            return
        fn, arg = item
        if fn is None:  # a message for the routes (Client._route())
            fn, arg = _route, (c, arg)
        try:
            if isinstance(arg, tuple):
                fn(*arg)
            else:
                fn(arg)
        except Exception as e:  # a callback's bug must not stop the others
            print("fieldline: callback %r raised %r" % (fn, e), file=sys.stderr)
