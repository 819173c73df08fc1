"""The admin REST API (FastAPI): fleet registry, tokens, and the controls as they land."""

from fleetwarden.api.app import create_app

__all__ = ["create_app"]
