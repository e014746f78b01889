"""An app module with two registries: `run-worker two_registries_app` must ask which one."""

from hyrex_like import HyrexRegistry

first = HyrexRegistry()
second = HyrexRegistry()


@first.task
def one(n: int) -> int:
    return n
