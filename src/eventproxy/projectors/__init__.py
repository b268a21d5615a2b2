"""Projectors: keep a projection of the route log equal to its fold.

One port (:class:`Projector`: ``seq``, ``applied_seq()``, ``apply(records)``, ``reset(table)``)
and three projections behind it:

* :class:`PlaneProjector` -- the in-process data plane's routing table;
* :class:`TraefikFileProjector` -- one traefik file-provider TOML file, written atomically;
* :class:`TraefikKVProjector` -- traefik's KV layout in etcd, one compare-and-write txn per
  coalesced batch with the applied seq in the same txn.

What traefik sees (names, rules, the applied-seq marker) is computed by the pure functions of
:mod:`.traefik_config`; the KV transactions are planned by :mod:`.kv_plan`; the edges only do I/O.
"""

from __future__ import annotations

from ._kvstore import GatewayKV, KVStore
from ._port import ProjectionError, Projector
from ._runner import follow_log
from .file import TraefikFileProjector
from .kv import TraefikKVProjector
from .kv_plan import Limits
from .plane import PlaneProjector

__all__ = [
    "GatewayKV",
    "KVStore",
    "Limits",
    "PlaneProjector",
    "ProjectionError",
    "Projector",
    "TraefikFileProjector",
    "TraefikKVProjector",
    "follow_log",
]
