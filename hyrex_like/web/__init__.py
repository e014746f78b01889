"""The dashboard (``hyrex-like dashboard``, extra ``hyrex-like[web]``): `create_app` builds the
Starlette app for a registry. Importing this package needs Starlette and Jinja2."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
