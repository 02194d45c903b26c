"""The blocking MQTT client: one socket, no threads needed, so it runs on a board.

Every call drives the connection itself: ``publish(qos=1)`` writes the
PUBLISH, then reads and handles whatever arrives (messages for callbacks,
PINGRESP, other acks) until its PUBACK comes or its timeout passes. Between
calls, ``loop()`` does the same for a while; ``loop_forever()`` never
returns. A lost connection is re-established inside those calls, after a
backoff delay, when ``reconnect`` is on; unacknowledged QoS 1/2 messages are
then resent by the session, and subscriptions restored if the broker lost
them.

``loop_start()`` (CPython) moves the reading and writing into a background
thread, as paho does: publish() then queues its bytes and returns (QoS 0),
so a network that stops taking bytes never holds the caller. Two
differences: callbacks run on a second thread, so a slow callback never
delays PINGREQ, and a callback may itself call publish() and wait for the
ack without deadlocking.
"""

from time import sleep

from ._client_base import BaseClient, ConnectionLost, MQTTTimeout, published
from ._client_inbox import clock
from ._errors import LocalProtocolError, MQTTError

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_CONNECTING = const(1)
_CONNECTED = const(2)

_threads = None  # the _client_thread module, once a loop_start() loaded it (CPython)


class NoLock:
    # Stands in for the lock until loop_start() makes a real one.
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Client(BaseClient):
    """Blocking MQTT 3.1.1/5.0 client; options as in ``BaseClient``.

    ``with Client(...) as c:`` connects and disconnects. Every blocking call
    takes ``timeout`` (seconds; default the client's ``timeout``) and raises
    MQTTTimeout when it passes. Under ``loop_start()`` at most ``max_unsent``
    bytes (an attribute to set; default 1 MiB) wait to be written; beyond,
    publish() follows ``queue_policy``.
    """

    def __init__(self, *args, **kwargs):
        BaseClient.__init__(self, *args, **kwargs)
        self._sock = None
        self._poller = None
        self._done = {}  # packet id -> the ack a caller waits for
        self._requests = set()  # ids of SUBSCRIBE/UNSUBSCRIBE among them
        self._error = None  # why the last connection ended
        self._retry_at = None  # when to reconnect; None: not after a success yet
        self._closing = False
        self._lock = NoLock()
        self._cond = None  # threading.Condition once loop_start() runs
        self._io_thread = None
        self._call_thread = None
        self._wake = None  # socketpair: user threads wake the I/O thread
        self._wake_sent = False
        self._calls = None  # callbacks waiting for the callback thread
        self._unsent = b""  # loop_start(): bytes the I/O thread has yet to write
        self._dialling = None  # loop_start(): (thread, socket) loop_stop() can cut short

    # -- connection -------------------------------------------------------------

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.disconnect()

    @property
    def is_connected(self):
        return self._sock is not None and self.session.state == _CONNECTED

    def connect(self, timeout=None):
        """Connect and return the ConnAck. Raises ConnectionRefused (or its
        subclass NotAuthorized) with the broker's reason code, MQTTTimeout,
        or OSError when the broker cannot be reached; LocalProtocolError
        while connected (disconnect() first)."""
        with self._lock:
            if self._sock is not None:
                # A second dial would leave this connection open, or close
                # it when the new one failed.
                raise LocalProtocolError(0x82, "already connected: disconnect() first")
            # Not before the check: a connect() that raises must not undo
            # the _closing of a loop_stop() on another thread (it would wait
            # for ever for the loop thread, which goes on).
            self._closing = False
            self._load_stored()
            # A loop_start() thread waiting out a reconnect delay stands aside
            # (as before a first connect()) rather than drive the socket that
            # _open() reads with the lock let go; it goes on after a failure.
            retry_at = self._retry_at
            self._retry_at = None
            try:
                self._open(not self._resume, self._deadline(timeout))
            except BaseException as e:
                self._retry_at = retry_at
                if self._closing and isinstance(e, (OSError, MQTTError)):
                    # disconnect() on another thread cut the attempt short
                    # no 'from e': MicroPython prints a warning for chaining
                    raise ConnectionLost(0x80, "disconnect() while connecting")  # noqa: B904
                raise
            finally:
                if self._dialling is not None:
                    _threads.dialled(self)
            if self._io_thread is not None:
                self._ended = False  # calls wait for the loop thread again
            self._notify()  # a loop_start() thread waiting for a connection
        return self.connack

    def disconnect(self, reason_code=0, properties=None, timeout=None):
        """Send DISCONNECT (a will is then not published, unless 5.0 reason
        0x04) and close. QoS 1/2 messages still unacknowledged stay in the
        session for the next connect(). Stops a loop_start() thread. Writing
        the DISCONNECT waits at most ``timeout``. Properties or a reason code
        the protocol refuses raise LocalProtocolError, once a plain
        DISCONNECT went out and the connection is closed."""
        self._closing = True
        self.loop_stop()
        refused = None
        with self._lock:
            if self._sock is not None:
                try:
                    refused = self._goodbye(reason_code, properties)
                    settimeout = getattr(self._sock, "settimeout", None)
                    if settimeout is not None:  # a stalled network cannot hold us longer
                        settimeout(self.timeout if timeout is None else timeout)
                    self._flush()
                except (OSError, MQTTError):
                    pass
                self._close(None)
        if refused is not None:
            raise refused

    def _open(self, first, deadline, sock=None):
        if sock is None:
            sock = self._dial(deadline)
        s = self.session
        self.connack = None
        try:
            s.connect(self._connect_packet(first), self._now())
            self._attach(sock)
            self._flush()
            while self.connack is None:
                if self._sock is None:
                    raise self._error or ConnectionLost(0x80, "closed before CONNACK")
                self._io(self._left(deadline, "CONNACK"))
            e = self._accepted()
            if e is not None:
                raise e
            # Restoring the subscriptions can still fail (too large for the
            # broker's Maximum Packet Size, or not written): the attempt
            # failed, is closed here and counted once by _redial().
            self._flush()
        except BaseException as e:
            if self._sock is not sock:  # not attached yet
                sock.close()
            self._close(self._failed(e))
            raise
        self._retry_at = 0
        self._attempt = 0  # this attempt succeeded: the backoff starts over
        if self.on_connect is not None:
            self._call(self.on_connect, self.connack)

    def _dial(self, deadline):
        import socket  # here, not at the top: a port without sockets can still import us

        ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
        sock = socket.socket(ai[0], socket.SOCK_STREAM)
        try:
            if self._cond is not None:  # loop_start(): loop_stop() can cut this attempt short
                _threads.dialling(self, sock)
            # Whole ms: the Unix port turns 1.9999999999999998 s into 2 s
            # and 1000000 us, which Linux refuses (EDOM), failing connect().
            sock.settimeout(round(max(0.05, min(self.timeout, self._left(deadline, "connect"))), 3))
            sock.connect(ai[-1])
            try:
                # No Nagle: an ack written just before a PUBLISH held it back
                # until the broker's delayed ACK (40 ms on Linux) for every
                # message of a client that receives as it publishes. The
                # Linux and lwIP numbers, which the Unix port does not name.
                sock.setsockopt(
                    getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1), 1
                )
            except (OSError, AttributeError):  # a port without setsockopt, or the option
                pass
            if self.tls:
                from ._tls import tls_context

                self._raw = sock  # MicroPython's TLS socket has no timeout: see _attach()
                sock = tls_context(self).wrap_socket(
                    sock, server_hostname=self.server_hostname or self.host
                )
            if self.transport == "websockets":  # CPython only: loads wsproto
                from ._websocket import WebSocket

                sock = WebSocket(sock, self.host, self.port, self.ws_path, self.ws_headers)
        except BaseException:
            sock.close()
            raise
        return sock

    def _attach(self, sock):
        import select

        self._sock = sock
        p = self._poller = select.poll()
        p.register(sock, select.POLLIN)
        if self._wake is not None:
            p.register(self._wake[0], select.POLLIN)
        w = getattr(sock, "sendall", None)
        self._write = w if w is not None else sock.write
        settimeout = getattr(sock, "settimeout", None)
        k = self.keepalive
        # A write blocked by a stalled network gives up when keepalive
        # would have noticed the silence, not after ``timeout``.
        bound = min(self.timeout, k * 1.5) if k else self.timeout
        if settimeout is not None:
            if k:
                settimeout(bound)
        elif self.tls:  # MicroPython's TLS socket
            from ._tls import bounded_writer

            self._write = bounded_writer(sock, self._raw, bound)

    def _close(self, error):
        sock = self._sock
        self._sock = None
        self._poller = None
        if sock is not None:
            if self._unsent:  # loop_start(): bytes the I/O thread could not write
                error = _threads.last_words(self, sock, error)
            try:
                sock.close()
            except OSError:
                pass
        for pid in self._requests:
            self._done[pid] = False
        self._closed(error)
        self._notify()

    def _lost(self, error):
        # The connection broke: close it and plan the next attempt. One
        # that breaks before its CONNACK is counted by _redial(), not here.
        was_up = self._was_up
        self._close(error)
        if was_up and self.reconnect and self._retry_at is not None and not self._closing:
            self._retry_later()

    # -- I/O --------------------------------------------------------------------

    def _flush(self):
        data = self.session.data_to_send()
        if self._io_thread is not None:  # the I/O thread writes (_client_thread.poll())
            self._unsent += data
            return
        if self._unsent:  # left unwritten by loop_stop(): goes first
            data = bytes(self._unsent) + data
            self._unsent = b""
        if data and self._sock is not None:
            try:
                self._write(data)
            except OSError:  # a timeout too: waiters get ConnectionLost
                # no 'from e': MicroPython prints a warning for chaining
                raise ConnectionLost(0x80, "connection lost while writing")  # noqa: B904

    def _io(self, timeout):
        """Wait up to ``timeout`` s for bytes, handle all that arrived, run
        the keepalive timer and write what is due. Never raises for a broken
        connection: that becomes ``_lost()``."""
        s = self.session
        sock = self._sock
        if sock is None:
            self._redial(timeout)
            return
        d = s.next_deadline()
        if d is not None:
            timeout = min(timeout, max(0.0, d - self._now()))
        try:
            if not self._events():
                if not self._paused():
                    self._flush()  # acknowledgements given since the last round
                    if self._readable(sock, timeout):
                        data = sock.recv(4096)
                        if data is not None:  # None: no MQTT bytes yet (a WebSocket ping)
                            s.receive_data(data, self._now())
                            self._events()
                elif self._droppable():
                    self._drop_held()  # no place yet, and reading must go on
                    self._events()
                else:
                    self._wait_for_room(timeout)
                    return
            if self._held is None:
                s.tick(self._now())
            self._flush()
        except (OSError, MQTTError) as e:
            try:
                self._flush()  # a DISCONNECT carrying the reason code
            except MQTTError:
                pass
            self._lost(e)
            return
        if s.state < _CONNECTING:  # EOF
            self._lost(ConnectionLost(0x80, "the broker closed the connection"))

    def _wait_for_room(self, timeout):
        # Reading is paused until the application takes a message: nothing
        # is read, but PINGREQ still goes out and queued bytes are written.
        wait = self._paused_ping()
        self._flush()
        self._sleep(timeout if wait is None else min(timeout, wait))
        self._flush()

    def _notify(self):
        # loop_start(): wake the threads that wait on the condition (the I/O
        # thread paused for a place, callers waiting for an ack, a message,
        # a response or a connection).
        if self._cond is not None:
            self._cond.notify_all()

    def _readable(self, sock, timeout):
        pending = getattr(sock, "pending", None)  # CPython TLS: bytes already decrypted
        if pending is not None and pending():
            return True
        ms = int(min(timeout, 60.0) * 1000)
        if self._io_thread is not None:
            ready = _threads.poll(self, ms)
        else:
            ready = self._poller.poll(ms)
        return bool(ready) and self._sock is sock

    def _redial(self, timeout):
        # Not connected: reconnect when the backoff delay has passed.
        if self._closing or not self.reconnect or self._retry_at is None:
            raise self._error or ConnectionLost(0x80, "not connected")
        wait = self._retry_at - clock()
        if wait > 0:
            self._sleep(min(wait, timeout))
            return
        deadline = clock() + self.timeout
        try:
            sock = None
            if self._io_thread is not None:  # the loop thread: dial with the lock let go
                # Dialling (TCP, TLS, WebSocket) may take up to ``timeout``;
                # other threads' calls go on meanwhile, as during the delay.
                self._lock.release()
                try:
                    sock = self._dial(deadline)
                finally:
                    self._lock.acquire()
                if self._sock is not None or self._closing or self._retry_at is None:
                    sock.close()  # a connect() (or disconnect()) came meanwhile
                    return
            self._open(False, deadline, sock)
        except (OSError, MQTTError) as e:
            self._error = e
            self._retry_later()
        finally:
            if self._dialling is not None:
                _threads.dialled(self)

    def _sleep(self, seconds):
        if self._cond is None:
            sleep(seconds)
        elif self._unsent and self._sock is not None:  # reading paused, writing not
            _threads.poll(self, int(seconds * 1000), False)
        else:
            self._cond.wait(seconds)

    def _deadline(self, timeout):
        return clock() + (self.timeout if timeout is None else timeout)

    def _left(self, deadline, what):
        left = deadline - clock()
        if left <= 0:
            raise MQTTTimeout(0x80, "timed out waiting for " + what)
        return left

    def _until_up(self, deadline):
        if not self.is_connected:
            if deadline is None:  # the connection went since publish() looked
                deadline = self._deadline(None)
            self._wait(lambda: self.is_connected, deadline, "a connection")

    def _wait(self, ready, deadline, what):
        """Drive the connection (or, with loop_start(), let its thread do
        it) until ``ready()`` is true. Call with the lock held."""
        while not ready():
            left = self._left(deadline, what)
            if self._elsewhere(self._io_thread):
                _threads.wait(self, ready, left)
            else:
                self._io(left)

    # -- application messages ------------------------------------------------------

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None, timeout=None):
        """Publish a message and, for QoS 1/2, wait until the broker has
        acknowledged it (PUBACK, or PUBCOMP for QoS 2); returns that ack (None
        for QoS 0). ``payload``: bytes or str. With ``timeout=0`` a QoS 1/2
        message is queued and sent without waiting. Raises PublishRefused
        (failure reason code), PacketTooLarge, QueueFull, MQTTTimeout."""
        if isinstance(payload, str):
            payload = payload.encode()
        deadline = None  # QoS 0 while connected waits for nothing: no clock, no float
        if qos or self._io_thread is not None or not self.is_connected:
            deadline = self._deadline(timeout or None)  # timeout=0 still waits for room
        with self._lock:
            s = self.session
            if self._io_thread is not None:
                _threads.room(self, deadline)
            if not qos:
                self._until_up(deadline)
            elif s.inflight >= self.max_queued and not self._full_queue():
                self._wait(lambda: s.inflight < self.max_queued, deadline, "room in the queue")
            pid = self._publish(topic, payload, qos, retain, properties)
            if pid is not None and timeout != 0:
                self._done[pid] = None
            self._kick()
            if pid is None or timeout == 0:
                return None
            try:
                self._await_ack(pid, deadline)
            except BaseException:
                self._done.pop(pid, None)
                raise
            ack = self._done.pop(pid)
        return published(ack)

    def _await_ack(self, pid, deadline):
        self._wait(lambda: self._done[pid] is not None, deadline, "the acknowledgement")

    def subscribe(self, subscriptions, qos=0, properties=None, callback=None, timeout=None):
        """Subscribe and wait for the SUBACK; returns its reason codes (the
        granted QoS, or a failure code >= 0x80, per filter). ``subscriptions``:
        a topic filter (with ``qos``), a Subscription, a (filter, qos) tuple,
        or a list of those. ``callback(message)`` gets the messages matching
        these filters; other messages go to ``on_message`` or ``recv()``."""
        with self._lock:
            subs = self._remember(subscriptions, qos, properties, callback)
            try:
                return self._request(self.session.subscribe, subs, properties, timeout)
            except BaseException:  # a timeout, or cancelled
                self._unconfirmed()
                raise

    def unsubscribe(self, topic_filters, properties=None, timeout=None):
        """Unsubscribe and wait for the UNSUBACK; returns its reason codes
        (empty in 3.1.1)."""
        with self._lock:
            filters = self._forget(topic_filters)
            try:
                return self._request(self.session.unsubscribe, filters, properties, timeout)
            except LocalProtocolError:  # invalid: nothing was sent
                raise
            except BaseException:  # a timeout, the connection lost for good, cancelled
                self._unsub_failed(filters)
                raise

    def _request(self, send, items, properties, timeout):
        # A SUBSCRIBE/UNSUBSCRIBE does not outlive its connection (a QoS 1/2
        # message does): _close() marks it False, and it is sent again.
        deadline = self._deadline(timeout)
        while True:
            self._until_up(deadline)
            pid = send(items, properties)
            self._done[pid] = None
            self._requests.add(pid)
            self._kick()
            try:
                self._await_ack(pid, deadline)
            finally:
                ack = self._done.pop(pid, None)
                self._requests.discard(pid)
            if ack:
                return ack.reason_codes

    def _complete(self, pid, packet):
        if pid in self._done:
            self._done[pid] = packet
        self._notify()

    def recv(self, timeout=None):
        """Return the next message that no callback took, waiting up to
        ``timeout`` seconds; raises MQTTTimeout. A QoS 1/2 message is
        acknowledged as it is returned, unless ``manual_ack``."""
        deadline = self._deadline(timeout)
        with self._lock:
            self._wait(lambda: self._inbox, deadline, "a message")
            msg = self._inbox.take()
            self._release(msg)  # acknowledged now, unless manual_ack
            if self._io_thread is not None or not self._inbox:
                self._kick()  # else the next recv() writes the acks of a backlog at once
            return msg

    def ack(self, message):
        """Acknowledge a QoS 1/2 ``message`` received with ``manual_ack=True``
        (PUBACK, or PUBREC for QoS 2): the broker then forgets it. Returns
        True, or False when there is nothing to acknowledge: QoS 0, answered
        already, or received in a session the broker has since lost. Until
        then the broker counts it against our Receive Maximum (5.0) and sends
        it again after a reconnection (persistent sessions)."""
        with self._lock:
            done = self._answer(message)
            if done:
                self._kick()
            return done

    def messages(self, timeout=None):
        """Iterate over messages no callback takes; stops after ``timeout``
        seconds without one (None: never), or once disconnect() is called, as
        the AsyncClient's streams do. Raises the error (ConnectionLost, say)
        when the connection is lost for good (reconnect off)."""
        while True:
            try:
                msg = self.recv(1e9 if timeout is None else timeout)
            except MQTTTimeout:
                return
            except (MQTTError, OSError):
                if self._closing:  # disconnect() ended the wait
                    return
                raise
            yield msg

    def reauthenticate(self, data=None):
        """MQTT 5.0: re-authenticate on this connection with ``auth_method``
        (AUTH 0x19 carrying ``data``, default ``auth_data``); the broker's
        challenges go to ``on_auth``, and a refusal ends the connection."""
        with self._lock:
            self.session.auth(self.auth_data if data is None else data)
            self._kick()

    def request(self, topic, payload=b"", qos=1, properties=None, timeout=None):
        """MQTT 5.0 request/response: publish to ``topic`` with a Response
        Topic of this client's own and fresh Correlation Data, and return the
        response (the message that comes back with that Correlation Data).
        The responder answers with ``respond()``. Raises MQTTTimeout."""
        from ._client_request import prepare

        deadline = self._deadline(timeout)
        with self._lock:  # each thread's request its own Correlation Data and Response Topic
            props, corr, route = prepare(self, properties)
            if route is not None:
                self.subscribe(self._reply_topic, 1, None, route, timeout)
            self._responses[corr] = None
            try:
                self.publish(topic, payload, qos, False, props, max(0.001, deadline - clock()))
                self._wait(lambda: self._responses[corr] is not None, deadline, "the response")
                return self._responses[corr]
            finally:
                del self._responses[corr]

    def respond(self, request, payload=b"", qos=1, properties=None, timeout=None):
        """Answer the message ``request``: publish ``payload`` to its Response
        Topic with its Correlation Data."""
        from ._client_request import reply

        topic, props = reply(request, properties)
        return self.publish(topic, payload, qos, False, props, timeout)

    def _got_response(self, corr, msg):
        with self._lock:  # on the callback thread under loop_start()
            self._responses[corr] = msg
            self._notify()

    # -- driving the connection ------------------------------------------------------

    def loop(self, timeout=1.0):
        """Handle the connection for up to ``timeout`` seconds (returns
        earlier once something was handled). Raises ConnectionLost when the
        connection is down for good (reconnect off, or closed). Under
        loop_start() the loop thread drives the connection: this waits."""
        with self._lock:
            if self._elsewhere(self._io_thread):
                _threads.idle(self, timeout)  # two threads polling one socket would clash
            else:
                self._io(timeout)

    def loop_forever(self):
        """loop() until disconnect() is called."""
        while not self._closing:
            self.loop(1.0)

    def _kick(self):
        # Get queued bytes written: by the I/O thread, or now.
        if self._elsewhere(self._io_thread):
            _threads.kick(self)
        else:
            try:
                self._flush()
            except MQTTError as e:
                self._lost(e)

    def _put(self, queue, msg):
        with self._lock:
            self._hold(msg)
            queue.append(msg)
            self._notify()

    def _call(self, fn, arg):
        if self._calls is not None and self._elsewhere(self._call_thread):
            self._calls.put((fn, arg))
        else:
            fn(arg)

    def _route(self, msg):
        if self._calls is not None and self._elsewhere(self._call_thread):
            if self._responses:  # a request() may wait on the callback thread itself
                _threads.response(self, msg)
            if _threads.inbox_only(self, msg):  # so may a recv(): no callback to run
                BaseClient._route(self, msg)
                return
            self._hold(msg)  # its place stays taken while it waits for the callback thread
            self._calls.put((None, msg))  # routed there
        else:
            BaseClient._route(self, msg)

    # -- loop_start(): the background threads (CPython, in _client_thread) ------------

    def loop_start(self):
        """Run the connection on a background thread (and callbacks on a
        second one) until loop_stop() or disconnect()."""
        global _threads
        try:
            from . import _client_thread as _threads
        except (ImportError, AttributeError):  # MicroPython: no threading module
            raise NotImplementedError("loop_start() needs threads (CPython): call loop()") from None
        _threads.start(self)

    def loop_stop(self):
        """Stop the loop_start() threads (the connection stays open)."""
        if self._io_thread is not None:
            _threads.stop(self)

    def _elsewhere(self, thread):
        # True if loop_start() runs ``thread`` and this is another thread.
        if thread is None:
            return False
        import threading

        return threading.current_thread() is not thread
