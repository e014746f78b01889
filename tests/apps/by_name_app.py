"""The worker side of the send-by-name tests (tests/test_send_by_name.py): it registers the
tasks, while the sending registry in the tests does not."""

from __future__ import annotations

from pydantic import BaseModel

from hyrex_like import HyrexRegistry

hy = HyrexRegistry()


class Person(BaseModel):
    name: str
    age: int


@hy.task(max_retries=3, retry_backoff=0)
def greet(person: Person) -> str:
    return f"hello {person.name}, {person.age}"


@hy.task
def ping() -> str:
    return "pong"
