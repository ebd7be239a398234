"""A reverse proxy that enforces OAuth scopes per route (see README.md and DESIGN.md)."""

from gateway.app import Gateway
from gateway.loading import ConfigError, Problem, load_config
from gateway.settings import Config

__all__ = ["Config", "ConfigError", "Gateway", "Problem", "load_config"]
__version__ = "0.1.0"
