"""Errors of access control. The Serve app maps :class:`AuthenticationError` to 401 and
:class:`AccessDeniedError` to 403; :class:`PolicyError` is a wrong grant or a damaged access file."""

from __future__ import annotations

from headwater.errors import ConfigError, HeadwaterError


class AuthenticationError(HeadwaterError):
    """No token, or a token that is not (or no longer) valid."""


class AccessDeniedError(HeadwaterError):
    """The caller is known but the request is outside its role's grants."""


class PolicyError(ConfigError):
    """A grant, role or token command is invalid, or an access file does not parse; the message says what to fix."""
