"""An app module that imports a package that is not installed."""

import hyrex_like_missing_dependency_xyz  # noqa: F401

from hyrex_like import HyrexRegistry

hy = HyrexRegistry()
