"""Utilities with Ray's names: custom serializers, serializability reports,
ActorPool."""
from .._serialization import (deregister_serializer, inspect_serializability,
                              register_serializer)
from .actor_pool import ActorPool

__all__ = ["ActorPool", "deregister_serializer", "inspect_serializability",
           "register_serializer"]
