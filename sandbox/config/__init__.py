"""Typed config tree: YAML + dotted overrides, validated at load time with clear errors.

    schema.py    the dataclasses; their Literals are the only list of allowed values, RANGES the only
                 list of numeric bounds (imports nothing from the sandbox, so the models read their
                 choices from it)
    loading.py   YAML and overrides -> Config: load_config, config_from_dict, read_yaml, save_config
    yamlfile.py  a config file read bounded: size, UTF-8, nesting, values with aliases expanded
    resolve.py   derived values (a generative model.size from data.size)
    validate.py  cross-field checks, ranges and registry names (pure)
    stages.py    a config's stages: each stage's Config (the base + its keys), checked at load time

This package's own namespace holds the schema only: loading and validation sit above the registries
they check, the schema below the models that read it. ``from sandbox import load_config``.
"""
from sandbox.config.schema import (BalanceConfig, Config, DataConfig, ModelConfig, TrackConfig, TrainConfig,
                                   choices)

__all__ = ["Config", "DataConfig", "ModelConfig", "TrainConfig", "TrackConfig", "BalanceConfig", "choices"]
