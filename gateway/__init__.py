"""A reverse proxy that enforces OAuth scopes per route (see README.md and docs/)."""

from gateway.app import Gateway
from gateway.loading import ConfigError, Problem, load_config
from gateway.settings import Config
from gateway.validation import ScopeCheck, validate_scopes

__all__ = ["Config", "ConfigError", "Gateway", "Problem", "ScopeCheck", "load_config", "validate_scopes"]
__version__ = "0.1.0"
