"""``GraftConfig``: one transformers config that holds the vision and text configs, the
connector spec and how image features are selected and placed.

It is a ``PreTrainedConfig`` so a graft model saves, loads and registers with the Auto classes
like any transformers model. Training recipes live in ``graft.train.recipe`` (plain dataclasses).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig

DEFAULT_IMAGE_TOKEN = "<image>"
#: the connector of a model composed without one named (LLaVA-1.5's projector)
DEFAULT_CONNECTOR = "mlp2x_gelu"
#: the label of a position that is not supervised (PyTorch's cross-entropy default)
IGNORE_INDEX = -100
SELECT_STRATEGIES = ("default", "full")  # "default" drops the CLS token, as LLaVA does


def connector_spec(connector: dict[str, Any] | str | None) -> dict[str, Any]:
    """A connector as ``GraftConfig.connector`` holds it: ``{"name": ..., **options}``; a name
    alone (``"linear"``) is ``{"name": "linear"}``, None is ``DEFAULT_CONNECTOR``."""
    if not connector:  # None (or an empty spec, as older callers passed)
        connector = DEFAULT_CONNECTOR
    if isinstance(connector, str):
        return {"name": connector}
    if not isinstance(connector, dict) or not isinstance(connector.get("name"), str):
        raise ValueError(f"a connector is a name or {{'name': NAME, **options}}, got {connector!r}")
    return dict(connector)


def _as_config(value: Any) -> PreTrainedConfig | None:
    if value is None or isinstance(value, PreTrainedConfig):
        return value
    if isinstance(value, dict):
        if "model_type" not in value:
            raise ValueError("a sub-config given as a dict needs a 'model_type' field")
        value = dict(value)
        return AutoConfig.for_model(value.pop("model_type"), **value)
    raise TypeError(f"expected a config or dict, got {type(value).__name__}")


class GraftConfig(PreTrainedConfig):
    model_type = "graft"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: PreTrainedConfig | dict | None = None,
        text_config: PreTrainedConfig | dict | None = None,
        connector: dict[str, Any] | str | None = None,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        image_token_id: int | None = None,
        vision_feature_layer: int = -2,
        vision_feature_select_strategy: str = "default",
        image_seq_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        if vision_feature_select_strategy not in SELECT_STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy must be one of {SELECT_STRATEGIES}, "
                f"got {vision_feature_select_strategy!r}"
            )
        self.vision_config = _as_config(vision_config)
        self.text_config = _as_config(text_config)
        # hidden_states holds the embeddings' output and each layer's: L + 1 of them
        layers = getattr(self.vision_config, "num_hidden_layers", None)
        if isinstance(layers, int) and not -(layers + 1) <= vision_feature_layer <= layers:
            raise ValueError(
                f"vision_feature_layer={vision_feature_layer} is outside the vision tower, which has "
                f"{layers} layers (valid: {-(layers + 1)}..{layers}; -1 is the last layer's output)"
            )
        self.connector = connector_spec(connector)
        self.image_token = image_token
        self.image_token_id = image_token_id
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        # soft tokens per image after the connector; filled in by the model at construction
        self.image_seq_length = image_seq_length
        super().__init__(**kwargs)
