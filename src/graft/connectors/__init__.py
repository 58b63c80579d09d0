"""Visual prompt generators behind one interface (see ``base.Connector``)."""

from graft.connectors import projector  # noqa: F401  (registers linear, mlp2x_gelu)
from graft.connectors.base import Connector
from graft.connectors.reduction import TokenReduction
from graft.connectors.registry import (
    CONNECTORS,
    UnknownConnectorError,
    build_connector,
    connector_class,
    register_connector,
)

__all__ = [
    "CONNECTORS",
    "Connector",
    "TokenReduction",
    "UnknownConnectorError",
    "build_connector",
    "connector_class",
    "register_connector",
]
