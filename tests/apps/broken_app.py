"""An app module that fails while being imported."""

raise RuntimeError("broken_app refuses to import")
