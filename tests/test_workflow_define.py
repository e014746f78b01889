"""Defining a workflow (#16): the sequence and ``>>`` forms, the typed hand-off checked at
definition (a mismatch names both steps and both types), fan-in, sources, on_failure, names,
priorities and the stored definition. No database: a registry connects only on first send."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Optional

import pydantic
import pytest
from pydantic import BaseModel

from hyrex_like import HyrexRegistry, PayloadTooLarge, TaskDefinitionError
from hyrex_like.errors import WorkflowDefinitionError
from hyrex_like.workflow_types import accepts
from hyrex_like.workflows import Graph, Workflow, WorkflowFailure, define_workflow, step

from .helpers import ROOT

NOWHERE = "postgresql://nobody@localhost:1/none"  # never connected to


class Batch(BaseModel):
    id: int


class Inspected(BaseModel):
    files: list[str]


class Special(Inspected):
    flag: bool = True


class Report(BaseModel):
    ok: bool


class Both(BaseModel):
    load_a: int
    load_b: str
    note: str = ""


class ByName(BaseModel):
    a: int
    load_b: str


@pytest.fixture
def hy() -> HyrexRegistry:
    return HyrexRegistry(NOWHERE, schema="wf_define")


@pytest.fixture
def t(hy: HyrexRegistry) -> Any:
    """A set of tasks: t.extract >> t.transform >> [t.load_a, t.load_b] >> t.report."""

    class T:
        @hy.task
        def extract(b: Batch) -> list[int]:
            return [b.id]

        @hy.task(queue="cpu", max_retries=2, retry_backoff=3, timeout_seconds=9.5)
        def transform(xs: list[int]) -> list[float]:
            return [float(x) for x in xs]

        @hy.task
        def load_a(xs: list[float]) -> int:
            return len(xs)

        @hy.task
        async def load_b(xs: list[float]) -> str:
            return "b"

        @hy.task
        def report(both: Both) -> Report:
            return Report(ok=True)

        @hy.task
        def inspect(b: Batch) -> Inspected:
            return Inspected(files=[])

        @hy.task
        def archive(i: Inspected) -> Batch:
            return Batch(id=1)

        @hy.task(priority=9)
        def stage(b: Batch) -> Batch:
            return b

        @hy.task
        def cleanup(f: WorkflowFailure) -> None:
            pass

    return T


def raises(match: str) -> Any:
    return pytest.raises(WorkflowDefinitionError, match=match)


# -- the two forms ----------------------------------------------------------------------------


def test_sequence_form_resolves_options_and_priorities(hy, t):
    wf = define_workflow(
        hy,
        "archive_batch",
        steps=[
            t.inspect,
            t.archive.with_config(queue="q1"),
            t.stage.with_config(queue="q2", priority=5),
            step("again", t.inspect),
        ],
    )
    assert isinstance(wf, Workflow) and wf.registry is hy and wf.name == "archive_batch"
    assert [s.name for s in wf.steps] == ["inspect", "archive", "stage", "again"]
    assert [s.task for s in wf.steps] == [t.inspect, t.archive, t.stage, t.inspect]
    assert [s.after for s in wf.steps] == [(), ("inspect",), ("archive",), ("stage",)]
    # explicit with_config priority kept; else depth + 1 (the task's own priority=9 is not used)
    assert [s.priority for s in wf.steps] == [1, 2, 5, 4]
    assert wf.final.name == "again" and [s.name for s in wf.sources] == ["inspect"]
    rows = wf.steps_json()
    assert [r["queue"] for r in rows] == ["default", "q1", "q2", "default"]
    assert rows[1] == {
        "name": "archive",
        "task_name": "archive",
        "queue": "q1",
        "priority": 2,
        "max_retries": 0,
        "timeout_seconds": None,
        "backoff_seconds": [],
        "after": [0],
        "next": [2],
        "fan_in": False,
    }
    assert rows[3]["task_name"] == "inspect" and rows[3]["next"] == []
    json.dumps(rows)  # stored as jsonb


def test_dag_form_with_fan_out_and_fan_in(hy, t):
    wf = define_workflow(hy, "etl", t.extract >> t.transform >> [t.load_a, t.load_b] >> t.report)
    rows = wf.steps_json()
    assert [r["name"] for r in rows] == ["extract", "transform", "load_a", "load_b", "report"]
    assert [r["after"] for r in rows] == [[], [0], [1], [1], [2, 3]]
    assert [r["next"] for r in rows] == [[1], [2, 3], [4], [4], []]
    assert [r["fan_in"] for r in rows] == [False, False, False, False, True]
    assert [r["priority"] for r in rows] == [1, 2, 3, 3, 4]
    # the task's own options, backoff as a send computes it
    assert rows[1]["queue"] == "cpu" and rows[1]["max_retries"] == 2
    assert rows[1]["timeout_seconds"] == 9.5 and rows[1]["backoff_seconds"] == [3.0, 3.0]
    assert wf.result_adapter is t.report.result_adapter
    assert wf.payload_json(Batch(id=3)) == '{"id":3}' == wf.source_payload_json({"id": 3})


def test_rshift_on_senders_steps_lists_and_graphs(hy, t):
    fan_in = [step("a", t.load_a), t.load_b.with_config(priority=7)] >> step("r", t.report)
    assert isinstance(fan_in, Graph)
    with raises("field 'a'"):  # the model's fields are step names: 'a' is no field of Both
        define_workflow(hy, "named", t.extract >> t.transform >> fan_in)

    @hy.task
    def report2(both: ByName) -> Report:
        return Report(ok=True)

    inner = [step("a", t.load_a), t.load_b.with_config(priority=7)] >> report2
    wf = define_workflow(
        hy, "named", graph=t.extract >> (t.transform.with_config(queue="q") >> inner)
    )
    assert [s.name for s in wf.steps] == ["extract", "transform", "a", "load_b", "report2"]
    assert [s.priority for s in wf.steps] == [1, 2, 3, 7, 4]
    assert wf.steps_json()[1]["queue"] == "q"
    # a list inside the sequence form is a fan-out
    seq = define_workflow(hy, "seq", steps=[t.extract, t.transform, [t.load_a, t.load_b], t.report])
    assert (
        seq.steps_json()
        == define_workflow(
            hy, "dag", t.extract >> t.transform >> [t.load_a, t.load_b] >> t.report
        ).steps_json()
    )
    # one task alone is a workflow of one step
    assert define_workflow(hy, "one", t.extract).final.name == "extract"


def test_depth_priority_caps_at_ten(hy):
    @hy.task
    def inc(n: int) -> int:
        return n + 1

    chain = [step(f"s{i}", inc) for i in range(13)]
    wf = define_workflow(hy, "long", steps=chain)
    assert [s.priority for s in wf.steps] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10]


# -- typed hand-off ---------------------------------------------------------------------------


def test_mismatch_names_both_steps_and_both_types(hy, t):
    with pytest.raises(WorkflowDefinitionError) as err:
        define_workflow(hy, "bad", steps=[t.extract, t.archive])
    msg = str(err.value)
    for word in ("workflow bad", "step archive", "Inspected", "step extract", "list[int]"):
        assert word in msg, msg
    assert isinstance(err.value, TaskDefinitionError)
    with raises(r"step x \(task archive\) takes Inspected but step extract .*list\[int\]"):
        define_workflow(hy, "bad", t.extract >> step("x", t.archive))


@pytest.mark.parametrize(
    ("param", "ret", "ok"),
    [
        (Any, Report, True),
        (object, list[int], True),
        (int, Any, True),
        (int, int, True),
        (float, int, True),
        (int, float, False),
        (Inspected, Special, True),
        (Special, Inspected, False),
        (Optional[int], int, True),  # noqa: UP045 - the spelling under test
        (int | None, None, True),
        (int | str, int | str, True),
        (float | str, int | str, True),
        (int, int | None, False),
        (str, int, False),
        (list[float], list[int], True),
        (list[int], list[str], False),
        (list[Any], list[Report], True),
        (list, list[int], True),
        (dict[str, float], dict[str, int], True),
        (dict, list[int], False),
        (Batch, dict[str, Any], False),
        (str, Any, True),
    ],
)
def test_acceptance_rules(param, ret, ok):
    assert accepts(param, ret) is ok


def test_union_optional_any_and_subclass_steps(hy):
    @hy.task
    def special(n: int) -> Special:
        return Special(files=[])

    @hy.task
    def takes_base(i: Inspected | None) -> int | None:
        return 1

    @hy.task
    def takes_opt_float(x: Optional[float]) -> Any:  # noqa: UP045
        return x

    @hy.task
    def takes_int(x: int) -> int:
        return x

    @hy.task
    def takes_anything(x: Any) -> None:
        pass

    define_workflow(
        hy, "ok", steps=[special, takes_base, takes_opt_float, takes_int, takes_anything]
    )
    with raises(r"step takes_int takes int but step takes_base .* returns int \| None"):
        define_workflow(hy, "no", steps=[special, takes_base, takes_int])


def test_a_step_before_another_needs_a_return_annotation(hy, t):
    @hy.task
    def untyped(b: Batch):  # type: ignore[no-untyped-def]
        return 1

    with raises("step untyped has no return annotation.*step archive"):
        define_workflow(hy, "w", steps=[untyped, t.archive])
    assert define_workflow(hy, "w", steps=[t.inspect, t.archive, untyped]).final.name == "untyped"


def test_a_step_without_payload_cannot_follow(hy, t):
    @hy.task
    def tick() -> int:
        return 1

    assert define_workflow(hy, "starts", steps=[tick]).payload_json() == "null"
    with raises("step tick takes no payload, so it cannot follow step extract"):
        define_workflow(hy, "w", steps=[t.extract, tick])


# -- fan-in -----------------------------------------------------------------------------------


def test_fan_in_model_fields_must_fit(hy, t):
    class WrongType(BaseModel):
        load_a: str
        load_b: str

    class Missing(BaseModel):
        load_a: int

    class Extra(BaseModel):
        load_a: int
        load_b: str
        more: int

    for model, pattern in [
        (WrongType, r"field 'load_a' of .*WrongType is str but step load_a returns int"),
        (Missing, r"needs a field 'load_b' for the result of step load_b .*returns str"),
        (Extra, r"also requires more: give those fields defaults"),
    ]:

        def join(x: Any) -> Report:
            return Report(ok=False)

        join.__annotations__["x"] = model
        task = hy.task(name=f"join_{model.__name__}")(join)
        with raises(pattern):
            define_workflow(hy, "fan", t.transform >> [t.load_a, t.load_b] >> task)


def test_fan_in_dict_form(hy, t):
    @hy.task
    def join_any(parts: dict[str, int | str]) -> Report:
        return Report(ok=True)

    @hy.task
    def join_ints(parts: dict[str, int]) -> Report:
        return Report(ok=True)

    @hy.task
    def join_list(parts: list[int]) -> Report:
        return Report(ok=True)

    wf = define_workflow(hy, "fan", t.transform >> [t.load_a, t.load_b] >> join_any)
    assert wf.final.fan_in and wf.final.after == ("load_a", "load_b")
    with raises(r"join_ints takes dict\[str, int\], whose values are int, but step load_b"):
        define_workflow(hy, "fan", t.transform >> [t.load_a, t.load_b] >> join_ints)
    with raises(r"comes after several steps \(load_a, load_b\) and takes list\[int\]"):
        define_workflow(hy, "fan", t.transform >> [t.load_a, t.load_b] >> join_list)


def test_several_sources_take_one_type(hy, t):
    @hy.task
    def other(n: int) -> int:
        return n

    @hy.task
    def both_batches(parts: dict[str, Inspected | Batch]) -> Report:
        return Report(ok=True)

    wf = define_workflow(hy, "two", [t.inspect, t.stage] >> both_batches)
    assert [s.name for s in wf.sources] == ["inspect", "stage"]
    assert wf.payload_json(Batch(id=1)) == '{"id":1}'
    with raises(r"first steps .* step extract takes Batch but step other takes int"):
        define_workflow(hy, "two", [t.extract, other] >> t.report)


# -- names, registry, shape -------------------------------------------------------------------


def test_names_shape_and_registry_checks(hy, t):
    with raises("two steps are named 'inspect'"):
        define_workflow(hy, "dup", steps=[t.inspect, t.archive, t.inspect])
    with raises("has no steps"):
        define_workflow(hy, "empty", steps=[])
    with raises("has no steps"):
        define_workflow(hy, "none")
    with raises("workflow name must not be empty"):
        define_workflow(hy, " ", steps=[t.inspect])
    with raises("control character"):
        define_workflow(hy, "a\x00b", steps=[t.inspect])
    with raises(r"has 2 final steps \(load_a, load_b\)"):
        define_workflow(hy, "two_ends", t.extract >> t.transform >> [t.load_a, t.load_b])
    other = HyrexRegistry(NOWHERE, schema="wf_other")

    @other.task
    def foreign(b: Batch) -> Inspected:
        return Inspected(files=[])

    with raises("task foreign is not registered with this registry"):
        define_workflow(hy, "foreign", steps=[foreign, t.archive])
    with raises("delay/run_at/idempotency_key"):
        define_workflow(hy, "late", steps=[t.inspect.with_config(delay=5), t.archive])
    with raises("a workflow step must be a task"):
        define_workflow(hy, "odd", steps=[t.inspect, "archive"])
    with raises("step name must not be empty"):
        step("", t.inspect)


def test_reusing_one_graph_twice_is_a_cycle(hy, t):
    g = step("a", t.load_a) >> step("b", t.load_a)
    with raises("form a cycle"):
        define_workflow(hy, "loop", g >> g)


# -- on_failure -------------------------------------------------------------------------------


def test_on_failure_takes_a_workflow_failure(hy, t):
    wf = define_workflow(hy, "w", steps=[t.inspect, t.archive], on_failure=t.cleanup)
    assert wf.on_failure is t.cleanup

    @hy.task
    def as_dict(f: dict[str, Any]) -> None:
        pass

    @hy.task
    def wrong(f: Batch) -> None:
        pass

    @hy.task
    def nothing() -> None:
        pass

    assert define_workflow(hy, "w", steps=[t.inspect], on_failure=as_dict).on_failure is as_dict
    with raises("on_failure task wrong takes Batch; it receives a WorkflowFailure"):
        define_workflow(hy, "w", steps=[t.inspect], on_failure=wrong)
    with raises("on_failure task nothing takes no payload"):
        define_workflow(hy, "w", steps=[t.inspect], on_failure=nothing)
    with raises("give the task itself"):
        define_workflow(hy, "w", steps=[t.inspect], on_failure=t.cleanup.with_config(queue="x"))
    with raises("on_failure must be a task"):
        define_workflow(hy, "w", steps=[t.inspect], on_failure="cleanup")
    failure = WorkflowFailure(
        workflow_id=uuid.uuid4(), workflow_name="w", step="s", task_id=uuid.uuid4(), error=None
    )
    assert t.cleanup.load_payload(t.cleanup.dump_payload(failure)) == failure


# -- the payload ------------------------------------------------------------------------------


def test_payload_is_validated_as_the_first_step_does(hy, t):
    wf = define_workflow(hy, "w", steps=[t.inspect, t.archive])
    with pytest.raises(pydantic.ValidationError) as err:
        wf.payload_json({"id": "x"})
    notes = "\n".join(err.value.__notes__)
    assert "payload for task inspect does not match its annotation" in notes
    assert "workflow w" in notes
    with pytest.raises(PayloadTooLarge, match="payload for task extract"):
        define_workflow(hy, "big", t.extract).payload_json(
            Batch.model_construct(id=10 ** (hy.settings.max_payload_bytes + 10))  # type: ignore[call-arg]
        )


def test_mypy_accepts_the_readme_forms(tmp_path: Path):
    app = tmp_path / "app.py"
    app.write_text(
        "from pydantic import BaseModel\n"
        "from hyrex_like import HyrexRegistry\n"
        "from hyrex_like.workflows import Workflow, WorkflowFailure, define_workflow, step\n"
        "hy = HyrexRegistry('postgresql://u@h/db')\n"
        "class Batch(BaseModel):\n    id: int\n"
        "class Report(BaseModel):\n    ok: bool\n"
        "class Both(BaseModel):\n    load_a: int\n    load_b: str\n"
        "@hy.task\ndef extract(b: Batch) -> list[int]:\n    return [b.id]\n"
        "@hy.task\ndef load_a(xs: list[int]) -> int:\n    return 1\n"
        "@hy.task\nasync def load_b(xs: list[int]) -> str:\n    return 'b'\n"
        "@hy.task\ndef report(both: Both) -> Report:\n    return Report(ok=True)\n"
        "@hy.task\ndef cleanup(f: WorkflowFailure) -> None:\n    pass\n"
        "wf: Workflow[Batch, Report] = define_workflow(\n"
        "    hy, 'etl', extract >> [load_a, load_b] >> report, on_failure=cleanup\n)\n"
        "g = [step('a', load_a), load_b.with_config(priority=3)] >> report\n"
        "seq: Workflow[Batch, list[int]] = define_workflow(hy, 's', steps=[extract])\n"
    )
    env = dict(os.environ, MYPYPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", str(app)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
