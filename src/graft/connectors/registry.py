"""Exact-name registry of connectors. An unknown name is an error that lists the valid ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graft.connectors.base import Connector

CONNECTORS: dict[str, type[Connector]] = {}


class UnknownConnectorError(ValueError):
    pass


def register_connector(name: str) -> Callable[[type[Connector]], type[Connector]]:
    def decorate(cls: type[Connector]) -> type[Connector]:
        if name in CONNECTORS:
            raise ValueError(f"connector {name!r} is registered twice")
        cls.name = name
        CONNECTORS[name] = cls
        return cls

    return decorate


def connector_class(name: str) -> type[Connector]:
    try:
        return CONNECTORS[name]
    except KeyError:
        valid = ", ".join(sorted(CONNECTORS))
        raise UnknownConnectorError(f"unknown connector {name!r}; valid connectors: {valid}") from None


def build_connector(spec: dict[str, Any], vision_hidden_size: int, text_hidden_size: int) -> Connector:
    """``spec`` = {"name": ..., **options} as stored in ``GraftConfig.connector``."""
    if "name" not in spec:
        raise ValueError(f"connector spec needs a 'name' field, got {spec!r}")
    options = {k: v for k, v in spec.items() if k != "name"}
    return connector_class(spec["name"])(vision_hidden_size, text_hidden_size, **options)
