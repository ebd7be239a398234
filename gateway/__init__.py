"""A reverse proxy that enforces OAuth scopes per route (see README.md and DESIGN.md)."""

from gateway.app import Gateway
from gateway.config import Config, ConfigError, Problem, load_config

__all__ = ["Config", "ConfigError", "Gateway", "Problem", "load_config"]
__version__ = "0.1.0"
