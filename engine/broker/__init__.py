"""Room brokers: one order per room and delivery to every node with viewers in it.

The interface and its guarantees are in :mod:`engine.broker.base`; the memory broker is
the embedded default for one process, the Redis broker shares rooms between processes and
machines; :class:`RoomFeed` follows one room for a node (in order, exactly once, gaps
filled). engine/relay.py connects a node's rooms to a broker.
"""

from engine.broker.base import (
    Broker,
    BrokerError,
    BrokerUnavailable,
    Handler,
    History,
    Position,
    Publication,
    Snapshot,
    Totals,
)
from engine.broker.feed import RoomFeed
from engine.broker.memory import MemoryBroker
from engine.broker.redis_broker import RedisBroker, connect

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Handler",
    "History",
    "MemoryBroker",
    "Position",
    "Publication",
    "RedisBroker",
    "RoomFeed",
    "Snapshot",
    "Totals",
    "connect",
]
