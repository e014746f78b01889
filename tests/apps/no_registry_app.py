"""An app module with no HyrexRegistry: `run-worker no_registry_app` must refuse it."""

VALUE = 1
