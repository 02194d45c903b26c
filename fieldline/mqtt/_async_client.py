"""The asyncio MQTT client, for CPython's asyncio and MicroPython's.

One task per connection reads from the broker, handles what arrives (acks
complete their waiters, messages go to callbacks and ``messages()``
streams), runs the keepalive timer and, when the connection breaks,
reconnects with backoff. Coroutines such as ``publish()`` only queue bytes
in the session, write them, and wait for their ack. MicroPython's asyncio
has no Future or Queue and no async generators, so waiting uses ``Event``
and ``messages()`` returns a plain async iterator.
"""

import asyncio

from ._client_base import BaseClient, ConnectionLost, MQTTTimeout, published, warn
from ._client_inbox import Fifo, clock
from ._errors import LocalProtocolError, MQTTError

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_CONNECTING = const(1)
_CONNECTED = const(2)

if hasattr(asyncio, "timeout"):  # CPython 3.11: cheaper than wait_for, no extra task

    async def _within(seconds, aw):
        async with asyncio.timeout(seconds):
            return await aw

else:

    async def _within(seconds, aw):
        return await asyncio.wait_for(aw, seconds)


class _Waiter:
    # A result that one coroutine waits for (MicroPython has no Future).
    def __init__(self):
        self.event = asyncio.Event()
        self.value = None
        self.request = False

    def set(self, value):
        self.value = value
        self.event.set()


class _Stream:
    """``async for message in client.messages(filter)``: the messages
    matching ``filter`` from now on (None: those no callback or stream takes)."""

    _closed = False  # close() was called: the iteration ends

    def __init__(self, client, topic_filter):
        self._client = client
        self._filter = topic_filter
        self._queue = client._inbox if topic_filter is None else Fifo()
        self._event = client._inbox_event if topic_filter is None else asyncio.Event()
        if topic_filter is not None:
            client._routes.append([topic_filter, self, None])  # unsubscribe() keeps it

    def __call__(self, message):  # a route target
        self._client._hold(message)
        self._queue.append(message)
        self._event.set()

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self._queue or self._closed:
            c = self._client
            if c._closing or self._closed:
                raise StopAsyncIteration
            if c._r is None and not c.reconnect and c._task is not None:
                # lost for good: the connection task has ended or is ending
                raise c._error or ConnectionLost(0x80, "the connection was lost")
            self._event.clear()
            await self._event.wait()
        message = self._queue.take()
        self._client._taken(message, self._queue)
        return message

    def close(self):
        """Stop routing messages here; those not read yet give up their
        places, and an iteration waiting for the next one ends."""
        self._closed = True
        self._event.set()
        c = self._client
        routes = c._routes
        for r in routes:
            if r[1] is self:
                routes.remove(r)
                q = self._queue
                while q:
                    c._taken(q.take(), q)
                break


class AsyncClient(BaseClient):
    """asyncio MQTT 3.1.1/5.0 client; options as in ``BaseClient``.

    ``async with AsyncClient(...) as c:`` connects and disconnects. Every
    coroutine takes ``timeout`` (seconds; default the client's ``timeout``)
    and raises MQTTTimeout when it passes. Callbacks may be plain functions
    (keep them quick: they run on the reading task) or coroutine functions
    (each call runs as its own task).
    """

    def __init__(self, *args, **kwargs):
        BaseClient.__init__(self, *args, **kwargs)
        self._r = self._w = None
        self._task = None
        self._closing = False
        self._opening = False  # a connect() call is making its connection
        self._waiters = {}  # packet id -> _Waiter
        self._inbox_event = asyncio.Event()
        self._up = asyncio.Event()  # set while connected
        self._wlock = asyncio.Lock()
        self._error = None
        self._retry_at = 0
        self._room = []  # Events of publish() calls waiting for room, first come first served
        self._unsent = 0  # publishes whose bytes wait for _write_now()
        self._loop = None  # CPython's running loop, for call_soon()
        self._space = asyncio.Event()  # set when a paused reader may go on

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc):
        await self.disconnect()

    @property
    def is_connected(self):
        return self._w is not None and self.session.state == _CONNECTED

    # -- connection ---------------------------------------------------------------

    async def connect(self, timeout=None):
        """Connect and return the ConnAck; a task then keeps the connection
        (and reconnects if ``reconnect``). While the connection is down and
        that task waits to reconnect, connect() reconnects now instead.
        Raises LocalProtocolError while a connection is up or being made
        (disconnect() first), as ``Client.connect`` does; ConnectionRefused
        (or NotAuthorized), MQTTTimeout, OSError, ConnectionLost (the
        connection broke before it was ready)."""
        if self._w is not None or self._opening:
            # A second connection would leave this one's transport open,
            # with its task still reading it.
            raise LocalProtocolError(0x82, "already connected: disconnect() first")
        self._opening = _current_task() or True  # disconnect() cancels the task
        waiting = self._task is not None and self.reconnect  # to reconnect, after a loss
        try:
            await self._stop_task()  # one waiting to reconnect: replaced by this call
            self._closing = False
            loop = asyncio.get_event_loop()
            self._loop = loop if hasattr(loop, "call_soon") else None
            self._load_stored()
            try:
                await self._open(not self._resume, self._t(timeout))
            except BaseException as e:
                if not self._closing:
                    if waiting:
                        # The replaced task's job is not done: a failed attempt
                        # (or a cancelled one) must not end the reconnecting.
                        self._retry_later()
                        self._task = asyncio.create_task(self._run())
                elif isinstance(e, asyncio.CancelledError) and self._opening is None:
                    # disconnect() ended this attempt: not a cancellation of
                    # the caller's, which goes on
                    uncancel = getattr(_current_task(), "uncancel", None)
                    if uncancel is not None:  # CPython 3.11
                        uncancel()
                    raise ConnectionLost(0x80, "disconnect() while connecting") from None
                raise
            self._task = asyncio.create_task(self._run())
        finally:
            self._opening = False
        return self.connack

    async def disconnect(self, reason_code=0, properties=None, timeout=None):
        """Send DISCONNECT and close; unacknowledged QoS 1/2 messages stay in
        the session for the next connect(). Open ``messages()`` iterators end.
        A stalled network cannot hold it beyond ``timeout``. Properties or a
        reason code the protocol refuses raise LocalProtocolError, once a
        plain DISCONNECT went out and the connection is closed."""
        self._closing = True
        t = self._opening
        if t and t is not True and t is not _current_task():
            # A connect() in another task (dialling, in a TLS handshake or
            # waiting for CONNACK) ends now, not at its timeout.
            self._opening = None
            t.cancel()
        refused = None
        if self._w is not None:
            try:
                refused = self._goodbye(reason_code, properties)
                await _within(self._t(timeout), self._flush())
            except (OSError, MQTTError, asyncio.TimeoutError):
                pass
        await self._close(None)
        await self._stop_task()
        self._wake_all()
        if refused is not None:
            raise refused

    async def _stop_task(self):
        t = self._task
        self._task = None
        if t is not None and t is not _current_task():
            t.cancel()
            try:
                await t
            except BaseException:  # CancelledError is a BaseException on CPython
                pass

    async def _open(self, first, timeout):
        deadline = clock() + timeout
        try:
            r, w = await _within(timeout, self._dial())
        except asyncio.TimeoutError:
            raise MQTTTimeout(0x80, "timed out connecting") from None
        self.connack = None
        self._r, self._w = r, w
        try:
            self.session.connect(self._connect_packet(first), self._now())
            # One deadline for the whole attempt, as the blocking client has,
            # writing the CONNECT included: on MicroPython that waits for
            # the TLS handshake, which a silent peer never completes (it
            # waited 1.5 x keepalive there).
            try:
                await _within(max(0.0, deadline - clock()), self._connack(r))
            except asyncio.TimeoutError:
                raise MQTTTimeout(0x80, "timed out waiting for CONNACK") from None
            e = self._accepted()
            if e is not None:
                raise e
            # Restoring the subscriptions can still fail (too large for the
            # broker's Maximum Packet Size, or not written): the attempt
            # failed, is closed here and counted once by _run(). It once
            # escaped with the transport open, and was counted again when
            # _io() found that connection dead.
            await self._flush()
        except BaseException as e:
            await self._close(self._failed(e))
            raise
        self._attempt = 0  # this attempt succeeded: the backoff starts over
        self._up.set()
        if self.on_connect is not None:
            self._call(self.on_connect, self.connack)

    async def _connack(self, r):
        # Send the CONNECT and handle what comes until the CONNACK. An error
        # writing the CONNECT is raised as it is: on MicroPython a refused
        # connection shows only here (CPython's open_connection() raises it).
        s = self.session
        w = self._w
        w.write(s.data_to_send())
        await w.drain()
        while self.connack is None:
            data = await r.read(4096)
            if not data:
                raise ConnectionLost(0x80, "closed before CONNACK")
            s.receive_data(data, self._now())
            self._events()
            await self._flush()  # e.g. our AUTH answer

    async def _dial(self):
        if self.tls:
            from ._tls import tls_context
        if self.transport == "websockets":  # CPython only: loads wsproto
            from ._websocket import open_websocket

            return await open_websocket(
                self.host,
                self.port,
                ssl=tls_context(self) if self.tls else None,
                server_hostname=self.server_hostname or self.host,
                path=self.ws_path,
                headers=self.ws_headers,
            )
        if self.tls:
            return await asyncio.open_connection(
                self.host,
                self.port,
                ssl=tls_context(self),
                server_hostname=self.server_hostname or self.host,
            )
        r, w = await asyncio.open_connection(self.host, self.port)
        sock = getattr(w, "s", None)  # MicroPython's stream; CPython sets TCP_NODELAY itself
        if sock is not None:
            try:  # as Client._dial() does, for the same 40 ms per message
                sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY on Linux and lwIP
            except (OSError, AttributeError):
                pass
        return r, w

    async def _close(self, error):
        w = self._w
        self._r = self._w = None
        self._up.clear()
        # The session learns it at once, not after wait_closed(): an ack
        # given meanwhile is then kept for the broker's resend, not queued
        # for a transport that is gone.
        self.session.connection_lost(self._now())
        if w is not None:
            # A connection lost, or that no CONNACK accepted, is aborted: TLS
            # would wait for the close_notify of a peer that may never answer
            # (up to ``timeout`` more, after keepalive found it silent or a
            # connect() timed out already). Only disconnect() closes politely.
            t = getattr(w, "transport", None) if error is not None or not self._was_up else None
            try:
                if t is not None:
                    t.abort()
                else:
                    w.close()
                    await _within(self.timeout, w.wait_closed())  # TLS waits for the peer
            except (OSError, AttributeError, asyncio.TimeoutError):
                pass
        self._closed(error)
        self._wake_all()

    def _wake_all(self):
        # A closed connection fails the waits that cannot outlive it: SUBSCRIBE
        # and UNSUBSCRIBE always (they are sent again), the rest when the
        # client will not reconnect.
        final = self._closing or not self.reconnect
        for w in self._waiters.values():
            if final or w.request:
                w.event.set()
        if final:
            if not self._up.is_set():  # wakes _until_up(), which finds no connection
                self._up.set()
                self._up.clear()
            for ev in self._room:
                ev.set()
            self._inbox_event.set()  # messages() streams end (or raise the error)
            for r in self._routes:
                if isinstance(r[1], _Stream):
                    r[1]._event.set()

    async def _flush(self, quiet=False):
        """Write what the session queued. A broken connection is left to the
        connection task to notice (it reconnects); with ``quiet`` nothing is
        raised, else ConnectionLost, also for a transport found closing
        (``_alive()``)."""
        w = self._w
        if not self._alive():
            if w is not None and not quiet:
                raise ConnectionLost(0x80, "the connection was lost")
            return
        data = self.session.data_to_send()
        if data:
            async with self._wlock:
                try:
                    w.write(data)
                    await self._drain(w)
                except OSError:
                    if not quiet:
                        # no 'from e': MicroPython prints a warning for chaining
                        raise ConnectionLost(0x80, "connection lost while writing")  # noqa: B904

    def _alive(self):
        """True while the connection's transport takes bytes. One that is
        closing (a write or read failed, the peer reset it, _drain() aborted
        it) drops what is written to it without a word on CPython, and the
        connection task may not have seen it yet: waiting for room, reading
        is paused. Found here, that is connection loss at once, before an
        acknowledgement is lost with it: the session goes IDLE, so that an
        answer given from now on is kept and sent when the broker sends the
        message again on the next connection (not delivered twice), and the
        connection task is woken to close and reconnect."""
        w = self._w
        if w is None:
            return False
        closing = getattr(w, "is_closing", None)  # MicroPython's streams have none
        if closing is None or not closing():
            return True
        self._lost()
        return False

    def _lost(self):
        # The connection is gone; the connection task closes it and reconnects.
        s = self.session
        if s.state:  # not IDLE yet
            s.connection_lost(self._now())
        self._up.clear()
        t = getattr(self._w, "transport", None)
        if t is not None:
            t.abort()  # the reader sees it now, also if close() waits to flush
        self._space.set()  # a connection task paused for room

    async def _drain(self, w):
        """Wait until the socket's buffer has room, at most as long as a
        silent broker may live (1.5 x keepalive, else ``timeout``): a
        half-open peer that stops reading would otherwise hold the writer,
        and with it the keepalive timer, for ever. Past that the connection
        is lost: aborted, so that the reading task sees it too, and OSError."""
        k = self.keepalive
        try:
            await _within(k * 1.5 if k else self.timeout, w.drain())
        except asyncio.TimeoutError:
            t = getattr(w, "transport", None)  # CPython: close() would wait to flush
            if t is not None:
                t.abort()
            else:
                w.close()
            raise OSError("the network stalled: nothing could be written") from None

    async def _send_soon(self, quiet):
        """Get the queued bytes written, coalescing: on CPython, publishes
        made in one turn of the event loop go out in one write (at the end of
        the turn, or every 64 of them), so a burst costs few system calls.
        MicroPython's asyncio has no call_soon: it writes at once."""
        loop = self._loop
        if loop is None:
            return await self._flush(quiet)
        self._unsent += 1
        if self._unsent >= 64:
            self._write_now()
            w = self._w
            if w is not None:
                try:
                    await self._drain(w)  # waits only while the socket's buffer is full
                except OSError:
                    if not quiet:
                        # no 'from e': MicroPython prints a warning for chaining
                        raise ConnectionLost(0x80, "connection lost while writing")  # noqa: B904
        elif self._unsent == 1:
            loop.call_soon(self._write_now)

    def _write_now(self):
        self._unsent = 0
        if not self._alive():
            return
        data = self.session.data_to_send()
        if data:
            try:
                self._w.write(data)  # CPython: errors surface on the reading side
            except OSError:  # MicroPython writes at once: the connection is gone
                self._lost()

    # -- the connection task ----------------------------------------------------------

    async def _run(self):
        while not self._closing:
            if self._r is None:
                if not self.reconnect:
                    return
                await asyncio.sleep(max(0.0, self._retry_at - clock()))
                try:
                    await self._open(False, self.timeout)
                except (OSError, MQTTError, asyncio.TimeoutError) as e:
                    self._error = e
                    self._retry_later()
                continue
            try:
                await self._io()
            except (OSError, MQTTError, asyncio.TimeoutError) as e:
                if self._closing:
                    return
                try:
                    await self._flush()  # a DISCONNECT carrying the reason code
                except (OSError, MQTTError):
                    pass
                await self._close(e)
                self._retry_later()

    async def _io(self):
        s = self.session
        self._alive()  # before a held message is handed over and answered
        if not self._events():  # nothing left over from the last read
            if self._paused():
                if not self._droppable():
                    await self._wait_for_room()
                    return
                await asyncio.sleep(0)  # consumers first: they may make room
                if not self._has_room():
                    self._drop_held()  # and reading must go on
                return
            # Answers to packets that were no event (a resend we had
            # answered already, a PUBREL, left over after the CONNACK) go
            # out now, not after the next bytes come; with publishes of this
            # turn of the loop, if a coalesced write is due (_send_soon()).
            if not self._unsent:
                await self._flush()
            d = s.next_deadline()
            data = None
            r = self._r
            if d is None:
                data = await r.read(4096)
            else:
                left = d - self._now()
                if left > 0:
                    try:
                        data = await _within(left, r.read(4096))
                    except asyncio.TimeoutError:
                        pass
            if data is not None:
                if not data:
                    raise ConnectionLost(0x80, "the broker closed the connection")
                if s.state < _CONNECTING:  # _lost() while we read
                    raise ConnectionLost(0x80, "the connection was lost")
                s.receive_data(data, self._now())
                self._events()
        if self._held is None:
            s.tick(self._now())
        await self._flush()
        if s.state < _CONNECTING:
            raise ConnectionLost(0x80, "the broker closed the connection")

    async def _wait_for_room(self):
        # Reading is paused until the application takes a message: nothing
        # is read, but PINGREQ still goes out.
        ev = self._space
        ev.clear()
        wait = self._paused_ping()
        await self._flush()
        if self._has_room():
            return
        if wait is None:
            await ev.wait()
        else:
            try:
                await _within(wait, ev.wait())
            except asyncio.TimeoutError:
                pass

    def _notify(self):
        # A place is free: a reader paused for one may go on.
        self._space.set()

    def _taken(self, message, more=None):
        # The application took ``message`` from a stream (``more``: what is
        # left there), or its callback finished: let go, and get the ack
        # written: at once, or with the others of a backlog being read.
        self._alive()  # a dead connection is lost before the answer is given
        self._release(message)
        if message.qos:
            if more:
                self._write_soon()
            else:
                self._write_now()

    def _write_soon(self):
        loop = self._loop
        if loop is None:  # MicroPython: its stream write() sends at once
            self._write_now()
        else:
            self._unsent += 1
            if self._unsent == 1:
                loop.call_soon(self._write_now)

    async def _finish(self, coro, message):
        # An async callback's task: the message keeps its place until it ends.
        try:
            await coro
        finally:
            self._taken(message)

    def ack(self, message):
        """Acknowledge a QoS 1/2 ``message`` received with ``manual_ack=True``,
        as ``Client.ack`` (a plain method: it only queues the answer, which is
        written soon). Returns True, or False when there is nothing to
        acknowledge."""
        self._alive()  # a dead connection is lost before the answer is given
        done = self._answer(message)
        if done:
            self._write_soon()
        return done

    # -- application messages ----------------------------------------------------------

    async def publish(self, topic, payload=b"", qos=0, retain=False, properties=None, timeout=None):
        """Publish and, for QoS 1/2, wait until the broker acknowledged it;
        returns the PubAck/PubComp (None for QoS 0). ``timeout=0``: queue and
        send a QoS 1/2 message without waiting. Raises PublishRefused,
        PacketTooLarge, QueueFull, MQTTTimeout, ConnectionLost."""
        if isinstance(payload, str):
            payload = payload.encode()
        t = self._t(timeout or None)  # timeout=0 still waits for room
        s = self.session
        if not self.is_connected and (self._closing or not self.reconnect):
            raise self._error or ConnectionLost(0x80, "not connected")
        if not qos:
            if not self.is_connected:
                await self._until_up(t)
        elif s.inflight >= self.max_queued:
            await self._make_room(t)
        pid = self._publish(topic, payload, qos, retain, properties)
        if pid is None or timeout == 0:
            await self._send_soon(pid is not None)  # a QoS 1/2 message is sent again anyway
            return None
        return published(await self._ack(pid, t))

    async def _ack(self, pid, t, request=False):
        # Wait for the ack of ``pid``. A QoS 1/2 message survives a lost
        # connection (the session sends it again); a SUBSCRIBE or UNSUBSCRIBE
        # does not, so its waiter is woken with None and the caller resends.
        w = self._waiters[pid] = _Waiter()
        w.request = request
        try:
            await self._send_soon(True)
            try:
                await _within(t, w.event.wait())
            except asyncio.TimeoutError:
                raise MQTTTimeout(0x80, "timed out waiting for the acknowledgement") from None
        finally:
            self._waiters.pop(pid, None)
        if w.value is None and (self._closing or not self.reconnect or not request):
            raise self._error or ConnectionLost(0x80, "the client closed")
        return w.value

    async def _request(self, send, items, properties, timeout):
        t = self._t(timeout)
        deadline = clock() + t
        while True:
            if not self.is_connected:
                await self._until_up(max(0.0, deadline - clock()))
            ack = await self._ack(send(items, properties), max(0.0, deadline - clock()), True)
            if ack is not None:
                return ack.reason_codes

    async def _until_up(self, t):
        deadline = clock() + t
        while not self.is_connected:
            # Also after _wake_all() woke us: the client closed for good. Or
            # nothing is bringing a connection up: no connect() yet.
            if self._closing or not self.reconnect or self._task is None and not self._opening:
                raise self._error or ConnectionLost(0x80, "not connected")
            try:
                await _within(max(0.0, deadline - clock()), self._up.wait())
            except asyncio.TimeoutError:
                raise MQTTTimeout(0x80, "timed out waiting for a connection") from None

    async def _make_room(self, t):
        s = self.session
        if self._full_queue():
            return
        deadline = clock() + t
        ev = asyncio.Event()
        while s.inflight >= self.max_queued:
            left = deadline - clock()
            if left <= 0:
                raise MQTTTimeout(0x80, "timed out waiting for room in the queue")
            ev.clear()
            self._room.append(ev)  # an ack wakes the first in line (and removes it)
            try:
                await _within(left, ev.wait())
            except asyncio.TimeoutError:
                pass  # the loop raises MQTTTimeout
            finally:
                if not ev.is_set():  # timed out or cancelled: leave the line
                    self._room.remove(ev)
            if self._closing or not self.reconnect and not self.is_connected:
                raise self._error or ConnectionLost(0x80, "not connected")

    async def subscribe(self, subscriptions, qos=0, properties=None, callback=None, timeout=None):
        """Subscribe and wait for the SUBACK; returns its reason codes (the
        granted QoS, or a failure code >= 0x80, per filter). Arguments as
        for ``Client.subscribe``."""
        subs = self._remember(subscriptions, qos, properties, callback)
        try:
            return await self._request(self.session.subscribe, subs, properties, timeout)
        except BaseException:  # a timeout, or cancelled
            self._unconfirmed()
            raise

    async def unsubscribe(self, topic_filters, properties=None, timeout=None):
        """Unsubscribe and wait for the UNSUBACK; returns its reason codes."""
        filters = self._forget(topic_filters)
        try:
            return await self._request(self.session.unsubscribe, filters, properties, timeout)
        except LocalProtocolError:  # invalid: nothing was sent
            raise
        except BaseException:  # a timeout, the connection lost for good, cancelled
            self._unsub_failed(filters)
            raise

    async def reauthenticate(self, data=None):
        """MQTT 5.0: re-authenticate, as ``Client.reauthenticate``."""
        self.session.auth(self.auth_data if data is None else data)
        await self._flush()

    async def request(self, topic, payload=b"", qos=1, properties=None, timeout=None):
        """MQTT 5.0 request/response, as ``Client.request``: publish with our
        Response Topic and fresh Correlation Data; return the response."""
        from ._client_request import prepare

        t = self._t(timeout)
        deadline = clock() + t
        props, corr, route = prepare(self, properties)
        if route is not None:
            await self.subscribe(self._reply_topic, 1, None, route, t)
        w = self._responses[corr] = _Waiter()
        try:
            await self.publish(topic, payload, qos, False, props, max(0.001, deadline - clock()))
            try:
                await _within(max(0.0, deadline - clock()), w.event.wait())
            except asyncio.TimeoutError:
                raise MQTTTimeout(0x80, "timed out waiting for the response") from None
        finally:
            del self._responses[corr]
        return w.value

    async def respond(self, request, payload=b"", qos=1, properties=None, timeout=None):
        """Answer the message ``request``: publish ``payload`` to its Response
        Topic with its Correlation Data."""
        from ._client_request import reply

        topic, props = reply(request, properties)
        return await self.publish(topic, payload, qos, False, props, timeout)

    def _got_response(self, corr, msg):
        self._responses[corr].set(msg)

    def messages(self, topic_filter=None):
        """An async iterator over incoming messages: those matching
        ``topic_filter`` (subscribe to it first), or with None those no
        callback or filtered stream takes. Ends when the client disconnects;
        raises the error when the connection is lost for good (no reconnect).
        A QoS 1/2 message is acknowledged as it is returned (unless
        ``manual_ack``); close() a filtered stream no longer read."""
        return _Stream(self, topic_filter)

    def _complete(self, pid, packet):
        w = self._waiters.get(pid)
        if w is not None:
            w.set(packet)
        if self._room:
            self._room.pop(0).set()

    def _put(self, queue, msg):
        self._hold(msg)
        queue.append(msg)
        self._inbox_event.set()

    def _call(self, fn, arg):
        # Runs on the connection task: a callback's bug must not end it (no
        # more reading, keepalive or reconnecting), as on Client's thread.
        try:
            r = fn(arg)
        except Exception as e:
            warn("callback %r raised %r" % (fn, e))
            return
        if r is not None and hasattr(r, "send"):  # a coroutine: run it as a task
            if id(arg) in self._holds:  # a message: it keeps its place until the task ends
                self._hold(arg)
                r = self._finish(r, arg)
            asyncio.create_task(r)

    def _t(self, timeout):
        return self.timeout if timeout is None else timeout


def _current_task():
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
