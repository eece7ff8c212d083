"""The YAML configuration: models, field checks, a strict loader and one-line errors.

`load_config(path)` returns a frozen `Config` or raises `ConfigError` whose message has one
line per problem: `FILE: FIELD: problem (what to do)`.  docs/config.md documents the schema.

- fields.py: the checks every model shares (names, paths, modes, MACs, addresses);
- ports.py: one model per port `type:`; model.py: the switch and the whole file;
- loader.py: the YAML loader and the error renderer, public for lab files too.
"""

from vswitch.config.loader import DuplicateKey, StrictLoader, load_config, parse_config
from vswitch.config.model import Config, MetricsConfig, SwitchConfig, default_control_path
from vswitch.config.ports import PORT_TYPES, Port, PortConfig, TapPort, VhostUserPort, VxlanPort
from vswitch.errors import ConfigError

__all__ = [
    "PORT_TYPES",
    "Config",
    "ConfigError",
    "DuplicateKey",
    "MetricsConfig",
    "Port",
    "PortConfig",
    "StrictLoader",
    "SwitchConfig",
    "TapPort",
    "VhostUserPort",
    "VxlanPort",
    "default_control_path",
    "load_config",
    "parse_config",
]
