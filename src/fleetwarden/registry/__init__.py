"""The fleet registry: devices, groups, credentials and API tokens, one source of truth."""

from fleetwarden.registry.service import Actor, Principal, Registry

__all__ = ["Actor", "Principal", "Registry"]
