"""MQTT 5.0 request/response for both clients: ``request()`` and ``respond()``.

A request goes out with a Response Topic of the client's own and fresh
Correlation Data; its response is the message that comes back on that topic
with the same Correlation Data. The adapters do the publishing and the
waiting; this is what they share. Kept apart from ``_client_base`` because a
device that never makes a request (every 3.1.1 one) need not load it: the
adapters import it on the first call.
"""

from ._client_base import _random


def prepare(c, properties):
    """Properties for a new request of client ``c``: its Response Topic and
    fresh Correlation Data. Returns (properties, correlation data, route):
    ``route`` is the callback to subscribe to the Response Topic with, or
    None when the client has subscribed already."""
    if c._reply_topic is None:
        c._reply_topic = "fieldline/responses/%s/%d" % (
            c.session.client_id,
            int(_random() * 1000000000),
        )
    c._requests_sent += 1
    corr = b"%d" % c._requests_sent
    props = dict(properties) if properties else {}
    props["response_topic"] = c._reply_topic
    props["correlation_data"] = corr
    route = None
    if c._reply_topic not in c._subs:

        def route(msg):
            # A response someone waits for goes to the adapter.
            d = msg.properties
            corr = d.get("correlation_data") if d else None
            if corr in c._responses:
                c._got_response(corr, msg)

    return props, corr, route


def reply(request, properties):
    """Topic and properties of the response to ``request``: its Response
    Topic and Correlation Data. Raises ValueError if it has no Response
    Topic."""
    d = request.properties or {}
    topic = d.get("response_topic")
    if not topic:
        raise ValueError("the message has no Response Topic")
    props = dict(properties) if properties else {}
    if "correlation_data" in d:
        props["correlation_data"] = d["correlation_data"]
    return topic, props
