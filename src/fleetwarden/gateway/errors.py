"""Gateway errors (mapped to exit codes / HTTP status by the foundation)."""

from fleetwarden.errors import ConfigError, Error


class GatewayError(Error):
    """The broker could not be prepared or run."""


class BrokerMissingError(ConfigError):
    """The Mosquitto binary (or the plugin's build tools) is not installed."""
