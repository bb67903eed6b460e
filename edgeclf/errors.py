"""Errors that edgeclf raises for problems a user can act on.

Library code raises these; only the CLI turns them into one red line and a
non-zero exit code. Anything else escaping is a bug in edgeclf.
"""

from __future__ import annotations


class EdgeclfError(Exception):
    """Base class of every error edgeclf raises on purpose."""


class DataError(EdgeclfError):
    """The images, their folder layout or a split manifest cannot be used."""


class ProfileError(EdgeclfError):
    """A hardware profile is missing, malformed or inconsistent."""


class ConfigError(EdgeclfError):
    """A configuration value or command-line option is invalid."""
