"""Loaders: YAML files into the frozen values of `gateway.settings` and `gateway.tables`, every
problem reported as `file:line: message`. Nothing on a request's path imports this package."""

from gateway.loading.config import admin_settings, load_config
from gateway.loading.nodes import ConfigError, Problem

__all__ = ["ConfigError", "Problem", "admin_settings", "load_config"]
