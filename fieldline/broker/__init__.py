"""An embedded asyncio MQTT 3.1.1 and 5.0 broker (CPython), in memory or kept in an
SQLite file across restarts (``persistence``; see persist.py).

``Broker`` (asyncio) and ``BrokerThread`` (a broker in a background thread) take the
``BrokerConfig`` fields as keyword arguments (``listeners``: a list of ``Listener``);
``fieldline broker`` runs one from the command line and a TOML file
(``configfile.load_config``). See docs/broker.md.
"""

from .config import DROP_NEW, DROP_OLDEST, BrokerConfig, ConfigError, Listener
from .persist import PersistenceError
from .server import Broker
from .thread import BrokerThread

__all__ = [
    "DROP_NEW",
    "DROP_OLDEST",
    "Broker",
    "BrokerConfig",
    "BrokerThread",
    "ConfigError",
    "Listener",
    "PersistenceError",
]
