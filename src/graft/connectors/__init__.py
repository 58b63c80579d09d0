"""Visual prompt generators behind one interface (see ``base.Connector``)."""

# each module registers its connectors: lexical; linear, mlp2x_gelu, swiglu; qformer, qformer_instruct; vpgc
from graft.connectors import lexical, projector, qformer, vpgc  # noqa: F401
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
