"""The cache layer: serve from the store, fetch and store, forward and stream, invalidate, and
hold long polls (`Prefer: wait`) until what they would be served changes.

``CachingProxy`` (``proxy.py``) drives the parts; the policy it follows is ``proxy.core``.
"""

from proxy.cache.exchange import ProxyRequest, RequestRejected, Responder, route_of
from proxy.cache.proxy import CachingProxy

__all__ = ["CachingProxy", "ProxyRequest", "RequestRejected", "Responder", "route_of"]
