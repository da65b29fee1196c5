"""Utilities with Ray's names: custom serializers, serializability reports,
ActorPool, the node's address, the named actors."""
from .. import _runtime
from .._protocol import Q as Query
from .._serialization import (deregister_serializer, inspect_serializability,
                              register_serializer)
from ..exceptions import DEFAULT_NODE_IP
from .actor_pool import ActorPool

__all__ = ["ActorPool", "deregister_serializer", "get_node_ip_address",
           "inspect_serializability", "list_named_actors", "register_serializer"]


def get_node_ip_address() -> str:
    """The IP address of this process's node: the address ``nodes()`` and
    the ``node:<ip>`` resource use, so ``resources={f"node:{ip}": 0.01}``
    pins work to it."""
    rt = _runtime.current_or_none()
    return rt.node_ip if rt is not None else DEFAULT_NODE_IP


def list_named_actors(all_namespaces: bool = False) -> list:
    """Names of the live named actors (detached or not) in this job's
    namespace; with ``all_namespaces=True``, dicts ``{"name", "namespace"}``
    for every namespace."""
    rt = _runtime.current()
    actors = rt.client.query(Query.LIST_NAMED_ACTORS)
    if all_namespaces:
        return [{"name": a["name"], "namespace": a["namespace"]} for a in actors]
    return [a["name"] for a in actors if a["namespace"] == rt.namespace]
