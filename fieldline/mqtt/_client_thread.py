"""``Client.loop_start()``: the blocking client on background threads (CPython).

Two threads, so that user code never starves the connection: one does all
the I/O (reading, writing, keepalive, reconnecting) and never runs user
code; the other runs the callbacks in order. Other threads queue their bytes
under the client's lock (``Client._unsent``) and wake the I/O thread through
a socket pair instead of writing themselves, so one thread alone touches the
socket (safe for TLS too). The I/O thread writes only what the socket takes
without waiting, the lock let go, so a network that stops taking bytes never
holds a caller: ``publish()`` returns once its bytes are queued. What is
queued is bounded by ``max_unsent`` bytes (an attribute of the client,
default ``MAX_UNSENT``), beyond which the queue policy applies; bytes that
find no room for 1.5 x keepalive (at most ``timeout``) end the connection
with ConnectionLost. Kept apart from ``_client`` because a board never needs
it: MicroPython loads only what it imports.
"""

import queue
import select
import socket
import threading

from ._client import NoLock
from ._client_base import RAISE, BaseClient, ConnectionLost, QueueFull, warn
from ._client_inbox import clock
from ._errors import MQTTError
from ._topic import topic_matches

_CHUNK = 65536  # bytes handed to the socket at most per round
MAX_UNSENT = 1 << 20  # Client.max_unsent unless set (not a class attribute: RAM on a board)


def start(c):
    if c._io_thread is not None:
        return
    c._lock = threading.RLock()
    c._cond = threading.Condition(c._lock)
    c._wake = socket.socketpair()
    c._wake[0].setblocking(False)
    c._wake[1].setblocking(False)  # never block a publisher holding the lock
    c._wake_sent = False
    c._unsent = bytearray(c._unsent)  # what an earlier loop_stop() left goes first
    c._stuck = None  # since when queued bytes wait and the socket takes none
    c._ended = False  # the connection is down for good (until a connect())
    if c._poller is not None:
        c._poller.register(c._wake[0], select.POLLIN)
    c._calls = queue.SimpleQueue()
    c._closing = False
    c._halt = False  # stop(): the I/O thread ends, even if a connect() resets _closing
    c._io_thread = threading.Thread(target=_run_io, args=(c,), daemon=True)
    c._call_thread = threading.Thread(target=_run_calls, args=(c,), daemon=True)
    c._io_thread.start()
    c._call_thread.start()


def stop(c):
    stopping = c._closing
    c._halt = c._closing = True  # _closing: a reconnect delay or attempt gives up
    d = c._dialling
    if d is not None and (stopping or d[0] is c._io_thread):
        # A connection being made (TCP connect, TLS handshake, CONNACK) by
        # the I/O thread, or by a connect() that disconnect() ends, fails
        # now rather than at its timeout: shutdown() wakes a blocked
        # connect() or read on Linux; a connect() of the application's own
        # that only loop_stop() meets goes on.
        try:
            d[1].shutdown(socket.SHUT_RDWR)
        except OSError:  # closed meanwhile, or not connected yet elsewhere
            pass
    try:
        c._wake[1].send(b"\x00")
    except OSError:  # full: the I/O thread is waking up anyway
        pass
    with c._lock:
        c._cond.notify_all()  # an I/O thread paused for room waits here, not on the socket
    if c._elsewhere(c._io_thread):
        c._io_thread.join()
    with c._lock:
        if c._sock is not None:  # as _attach() left it: poll() changed what it waits for
            c._poller.modify(c._sock, select.POLLIN)
            c._poller.unregister(c._wake[0])  # closed below: poll() would report it at once
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


def dialling(c, sock):
    # Client._dial() under loop_start(), on any thread: remember the new
    # socket for stop(), as a duplicate that outlives an SSLSocket's wrapping
    # (which takes the original's descriptor), until dialled().
    t = threading.current_thread()
    c._dialling = (t, sock.dup())
    if c._halt and t is c._io_thread:  # stop() came first and found nothing to cut short
        raise ConnectionLost(0x80, "the loop stopped while connecting")


def dialled(c):
    # The attempt that dialling() noted on this thread has ended, made or
    # failed. (A connect() and the I/O thread rarely dial at once: then
    # only the later attempt can be cut short.)
    d = c._dialling
    if d is not None and d[0] is threading.current_thread():
        c._dialling = None
        d[1].close()


def poll(c, ms, read=True):
    # Client._readable() (and Client._sleep() while reading is paused) under
    # loop_start(): waits up to ``ms`` with the lock let go, writing what
    # the socket takes of c._unsent meanwhile; True if the connection's
    # socket has bytes to read (a byte on the wake-up socket only wakes the
    # I/O thread). Raises ConnectionLost when queued bytes found no room for
    # 1.5 x keepalive (at most ``timeout``): the peer stopped reading.
    sock = c._sock
    fd = sock.fileno()
    chunk = None
    if c._unsent:
        now = clock()
        if c._stuck is None:
            c._stuck = now
        k = c.keepalive
        left = c._stuck + (min(c.timeout, k * 1.5) if k else c.timeout) - now
        if left <= 0:
            raise ConnectionLost(0x80, "connection lost while writing")
        ms = min(ms, int(left * 1000) + 1)
        chunk = bytes(c._unsent[:_CHUNK])  # callers may add to c._unsent meanwhile
    else:
        c._stuck = None
    c._poller.modify(sock, (select.POLLIN if read else 0) | (select.POLLOUT if chunk else 0))
    n = 0
    lock = c._lock  # the one to take back: stop() replaces it meanwhile
    lock.release()
    try:
        ready = c._poller.poll(ms)
        if chunk is not None:
            for entry in ready:
                if entry[0] == fd and entry[1] & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                    n = _send(sock, chunk)
    except OSError as e:
        raise ConnectionLost(0x80, "connection lost while writing") from e
    finally:
        lock.acquire()
    if n and c._sock is sock:
        del c._unsent[:n]
        c._stuck = clock() if c._unsent else None
    ok = False
    for entry in ready:
        if c._wake is not None and entry[0] in (c._wake[0], c._wake[0].fileno()):
            _woken(c)
        elif entry[0] == fd and entry[1] & ~select.POLLOUT:
            ok = read
    return ok


def _send(sock, data):
    # Returns how many bytes of ``data`` the socket took. A plain socket
    # reported writable takes what it can at once; TLS (whole records) and a
    # WebSocket (sendall(), one frame) take it all, waiting at most the
    # socket timeout, as only the I/O thread does, the lock let go.
    send = getattr(sock, "send", None)
    if send is None:
        sock.sendall(data)
        return len(data)
    return send(data)


def last_words(c, sock, error):
    # Client._close() under loop_start(), bytes still unwritten: the socket
    # takes what it can of them without waiting (a DISCONNECT with its
    # reason code, say). Returns why the connection ended: ``error``, or if
    # the socket has no room, ConnectionLost: the peer stopped reading, even
    # when Keep Alive ran out first.
    data = c._unsent
    c._unsent = bytearray()
    c._stuck = None
    p = select.poll()
    p.register(sock, select.POLLOUT)
    try:
        if p.poll(0):
            sock.settimeout(0)
            _send(sock, bytes(data))
            return error
    except OSError:
        return error
    if error is None or isinstance(error, ConnectionLost):
        return error
    e = ConnectionLost(0x80, "connection lost while writing: the broker took no bytes")
    e.__cause__ = error
    return e


def kick(c):
    # Client._kick() on a thread other than the I/O thread: the session's
    # new bytes join c._unsent, and the I/O thread wakes to write them.
    c._flush()
    if c._held is not None:  # paused: waits on the condition, not the socket
        c._cond.notify_all()
    if not c._wake_sent:  # one wake-up per round of the I/O thread
        c._wake_sent = True
        try:
            c._wake[1].send(b"\x00")
        except OSError:  # full: the I/O thread is waking up anyway
            pass


def room(c, deadline):
    # publish() under loop_start(): at most c.max_unsent bytes wait for the
    # I/O thread. Beyond, RAISE raises QueueFull; BLOCK (and DROP_OLDEST:
    # bytes queued cannot be taken back) waits until the I/O thread has
    # written enough, or the connection has ended and dropped them.
    limit = getattr(c, "max_unsent", MAX_UNSENT)
    if len(c._unsent) < limit or not c._elsewhere(c._io_thread):
        return
    if c.queue_policy == RAISE:
        raise QueueFull(0x97, "%d bytes wait to be written" % len(c._unsent))
    c._wait(lambda: len(c._unsent) < limit, deadline, "room to write")


def wait(c, ready, left):
    # Client._wait() on a thread other than the I/O thread: that thread
    # drives the connection and notifies the condition at every round.
    t = c._io_thread
    if c._ended or not t.is_alive():
        raise c._error or ConnectionLost(0x80, "the connection was lost")
    c._cond.wait(left)
    if c._io_thread is not t and not ready():  # disconnect(), loop_stop()
        raise c._error or ConnectionLost(0x80, "the loop thread stopped")


def idle(c, seconds):
    # Client.loop() on a thread other than the I/O thread: that thread
    # drives the connection; wait until it has handled something (it
    # notifies at every round), at most ``seconds``. Raises the error when
    # the connection is down for good, as loop() does.
    if c._ended:
        raise c._error or ConnectionLost(0x80, "the connection was lost")
    c._cond.wait(seconds)


def _woken(c):
    # The I/O thread drains its wake-up socket; the next kick sends again.
    c._wake_sent = False
    try:
        while c._wake[0].recv(4096):
            pass
    except OSError:  # drained (non-blocking)
        pass


def response(c, msg):
    # Client._route() on the I/O thread: a response that a request() waits
    # for goes to its waiter now, not only through the callback thread,
    # which may be the very thread waiting for it (a request() made in a
    # callback). Its route there finds it answered already.
    d = msg.properties
    corr = d.get("correlation_data") if d else None
    if corr in c._responses and msg.topic == c._reply_topic:
        c._responses[corr] = msg
        c._notify()


def inbox_only(c, msg):
    # Client._route() on the I/O thread: True if ``msg`` goes to the inbox
    # only (no route, no on_message). The I/O thread then puts it there
    # itself, running no user code: a callback waiting in recv() on the
    # callback thread would otherwise keep it queued behind itself.
    if c.on_message is not None:
        return False
    for r in c._routes:
        if topic_matches(r[0], msg.topic):
            return False
    return True


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
        while not (c._closing or c._halt):
            if c._retry_at is None:
                # loop_start() before the first connect(), or after the
                # connection was lost for good: nothing to drive, and _io()
                # would raise "not connected". connect() runs on its
                # caller's thread and notifies us; we drive what it opens.
                c._cond.wait(1.0)
                continue
            try:
                c._io(1.0)
            except (MQTTError, OSError) as e:  # down for good (OSError: why it broke)
                if c._closing or c._halt:  # loop_stop() made _redial() raise: the thread ends
                    break
                c._error = e
                c._ended = True  # waiters fail at once, until a connect() succeeds
                c._retry_at = None  # wait for that connect(), as for the first
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
            warn("callback %r raised %r" % (fn, e))
