"""Configuration: settings from the environment and logging setup."""

from app.config.settings import ConfigurationError, Settings, get_settings, load_settings

__all__ = ["ConfigurationError", "Settings", "get_settings", "load_settings"]
