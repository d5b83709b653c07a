"""The worker contract: class-keyword options, new(), stored names, @worker and backoff."""

from __future__ import annotations

import dataclasses
import statistics
from datetime import UTC, datetime, timedelta

import pytest

import flowpro
from flowpro.job import Job, JobState
from flowpro.worker import DEFAULT_MAX_ATTEMPTS, registered_workers, resolve_worker


def define(cls_name: str = "W", /, **options):
    """Define a worker class with these class keywords."""
    return type(cls_name, (flowpro.Worker,), {"process": lambda self, job: None}, **options)


class Fetch(flowpro.Worker, queue="etl", priority=2, max_attempts=5, tags=["io"]):
    def process(self, job):
        return None


def _job(attempt: int) -> Job:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    return Job(
        id=1,
        state=JobState.EXECUTING,
        queue="q",
        worker="w",
        args={},
        meta={},
        tags=[],
        errors=[],
        attempt=attempt,
        max_attempts=100,
        priority=0,
        attempted_by="n",
        inserted_at=now,
        scheduled_at=now,
    )


# Options


def test_a_worker_without_options_uses_the_documented_defaults():
    cls = define()

    assert cls.queue == "default"
    assert cls.priority == 0
    assert cls.max_attempts == DEFAULT_MAX_ATTEMPTS == 20
    assert cls.timeout is None
    assert cls.tags == ()
    assert cls.cron is None


def test_class_keywords_set_the_options_and_subclasses_inherit_them():
    class Child(Fetch):
        pass

    assert (Fetch.queue, Fetch.priority, Fetch.max_attempts, Fetch.tags) == ("etl", 2, 5, ("io",))
    assert (Child.queue, Child.priority, Child.max_attempts) == ("etl", 2, 5)
    assert Child.__flowpro_name__.endswith("Child")


def test_timeout_is_given_in_seconds_or_as_a_timedelta():
    assert define(timeout=2).timeout == 2.0
    assert define(timeout=timedelta(minutes=1)).timeout == 60.0


def test_a_valid_cron_expression_is_kept():
    assert define(cron="*/5 * * * *").cron == "*/5 * * * *"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (dict(queue=""), "queue"),
        (dict(queue="a,b"), "queue"),
        (dict(queue="a=b"), "queue"),
        (dict(queue=7), "queue"),
        (dict(queue="q" * 101), "queue"),
        (dict(priority=-1), "priority"),
        (dict(priority=10), "priority"),
        (dict(priority=1.5), "priority"),
        (dict(priority=True), "priority"),
        (dict(max_attempts=0), "max_attempts"),
        (dict(max_attempts=-3), "max_attempts"),
        (dict(max_attempts="3"), "max_attempts"),
        (dict(max_attempts=False), "max_attempts"),
        (dict(timeout=0), "timeout"),
        (dict(timeout=-1.5), "timeout"),
        (dict(timeout="abc"), "timeout"),
        (dict(timeout="5"), "timeout"),
        (dict(timeout=float("nan")), "timeout"),
        (dict(timeout=float("inf")), "timeout"),
        (dict(timeout=True), "timeout"),
        (dict(timeout=timedelta(0)), "timeout"),
        (dict(cron="every minute"), "cron"),
        (dict(cron="* * *"), "cron"),
        (dict(cron="61 * * * *"), "cron"),
        (dict(cron=5), "cron"),
        (dict(tags="urgent"), "tags"),
        (dict(tags=["ok", 3]), "tags"),
        (dict(name=""), "name"),
        (dict(name="n" * 256), "name"),
        (dict(max_attempt=3), "max_attempt"),
    ],
)
def test_a_bad_option_is_a_config_error_naming_the_worker_and_the_option(options, problem):
    with pytest.raises(flowpro.ConfigError, match=problem) as caught:
        define("Bad", **options)

    assert "Bad" in str(caught.value)


def test_a_worker_with_a_bad_option_is_not_registered():
    with pytest.raises(flowpro.ConfigError):
        define("NeverRegistered", priority=99)

    assert not any(c.__name__ == "NeverRegistered" for c in registered_workers())


# Worker.new


def test_new_builds_an_unsaved_job_with_the_worker_options():
    job = Fetch.new({"url": "https://x"})

    assert isinstance(job, flowpro.NewJob)
    assert job.worker == Fetch.__flowpro_name__
    assert (job.queue, job.priority, job.max_attempts) == ("etl", 2, 5)
    assert job.args == {"url": "https://x"}
    assert job.args_json == '{"url":"https://x"}'
    assert job.tags == ["io"]
    assert job.meta == {} and job.meta_json == "{}"
    assert job.schedule_in is None and job.scheduled_at is None


def test_new_without_args_has_empty_args():
    assert Fetch.new().args == {}
    assert Fetch.new(None).args_json == "{}"


def test_new_overrides_queue_priority_max_attempts_tags_and_meta():
    job = Fetch.new({}, queue="other", priority=9, max_attempts=1, tags=["a", "b"], meta={"k": [1]})

    assert (job.queue, job.priority, job.max_attempts) == ("other", 9, 1)
    assert job.tags == ["a", "b"]
    assert job.meta == {"k": [1]}
    assert job.meta_json == '{"k":[1]}'


def test_new_with_schedule_in_takes_seconds_or_a_timedelta():
    assert Fetch.new({}, schedule_in=60).schedule_in == 60.0
    assert Fetch.new({}, schedule_in=timedelta(minutes=2)).schedule_in == 120.0


def test_new_with_scheduled_at_keeps_the_aware_datetime():
    at = datetime(2030, 1, 1, 9, 30, tzinfo=UTC)

    assert Fetch.new({}, scheduled_at=at).scheduled_at == at


def test_new_refuses_both_schedule_in_and_scheduled_at():
    at = datetime(2030, 1, 1, tzinfo=UTC)

    with pytest.raises(flowpro.ConfigError, match="schedule_in or scheduled_at"):
        Fetch.new({}, schedule_in=5, scheduled_at=at)


def test_new_refuses_a_naive_scheduled_at():
    with pytest.raises(flowpro.ConfigError, match="timezone-aware"):
        Fetch.new({}, scheduled_at=datetime(2030, 1, 1))


@pytest.mark.parametrize("value", ["60", float("nan"), float("inf"), True])
def test_new_refuses_a_schedule_in_that_is_not_a_finite_duration(value):
    with pytest.raises(flowpro.ConfigError, match="schedule_in"):
        Fetch.new({}, schedule_in=value)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (dict(queue=""), "queue"),
        (dict(priority=10), "priority"),
        (dict(max_attempts=0), "max_attempts"),
        (dict(tags="one"), "tags"),
    ],
)
def test_new_refuses_out_of_range_overrides(options, problem):
    with pytest.raises(flowpro.ConfigError, match=problem):
        Fetch.new({}, **options)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ([1, 2], "JSON object"),
        ("text", "JSON object"),
        ({1: "x"}, "keys must be strings"),
        ({"x": {1, 2}}, "not JSON-serialisable"),
        ({"x": float("nan")}, "not JSON-serialisable"),
        ({"x": "\x00"}, "NUL"),
    ],
)
def test_new_refuses_bad_args_with_an_args_error(args, problem):
    with pytest.raises(flowpro.ArgsError, match=problem):
        Fetch.new(args)


@pytest.mark.parametrize("meta", [[1], {2: "x"}, {"x": b"bytes"}])
def test_new_refuses_bad_meta_with_an_args_error_naming_meta(meta):
    with pytest.raises(flowpro.ArgsError, match="meta"):
        Fetch.new({}, meta=meta)


# Stored names and the registry


def test_the_stored_name_is_module_dot_class():
    assert Fetch.__flowpro_name__ == f"{__name__}.Fetch"
    assert resolve_worker(f"{__name__}.Fetch") is Fetch


def test_a_nested_class_stores_its_qualified_name():
    class Inner(flowpro.Worker):
        def process(self, job):
            return None

    assert Inner.__flowpro_name__ == f"{__name__}.{Inner.__qualname__}"
    assert "<locals>" in Inner.__flowpro_name__


def test_name_pins_the_stored_name_so_a_refactor_does_not_strand_jobs():
    class Renamed(flowpro.Worker, name="billing.Send"):
        def process(self, job):
            return None

    assert Renamed.new({}).worker == "billing.Send"
    assert resolve_worker("billing.Send") is Renamed


def test_an_unknown_stored_name_raises_worker_not_found_saying_what_to_do():
    with pytest.raises(
        flowpro.WorkerNotFound, match=r"'nope\.Missing' is not registered"
    ) as caught:
        resolve_worker("nope.Missing")

    assert "import its module" in str(caught.value)
    assert caught.value.name == "nope.Missing"


def test_process_must_be_defined_by_the_worker():
    cls = type("NoProcess", (flowpro.Worker,), {})

    with pytest.raises(NotImplementedError, match="does not define process"):
        cls().process(_job(1))


# The @worker decorator


def test_worker_decorator_turns_a_sync_function_into_a_worker_class():
    @flowpro.worker(queue="etl", max_attempts=3, priority=1)
    def extract(job):
        return {"rows": job.args["n"]}

    assert isinstance(extract, type) and issubclass(extract, flowpro.Worker)
    assert extract.__name__ == "extract"
    assert extract.__flowpro_name__ == f"{__name__}.{extract.__qualname__}"
    assert extract.__flowpro_name__.endswith("extract")
    assert (extract.queue, extract.max_attempts, extract.priority) == ("etl", 3, 1)
    assert extract.is_async is False
    assert extract().process(dataclasses.replace(_job(1), args={"n": 4})) == {"rows": 4}
    assert extract.new({"n": 1}).worker == extract.__flowpro_name__
    assert resolve_worker(extract.__flowpro_name__) is extract


def test_worker_decorator_turns_an_async_function_into_an_async_worker():
    import asyncio

    @flowpro.worker(name="tests.async_fn", timeout=3)
    async def fetch(job):
        await asyncio.sleep(0)
        return job.args

    assert fetch.is_async is True
    assert fetch.timeout == 3.0
    assert resolve_worker("tests.async_fn") is fetch
    assert asyncio.run(fetch().process(_job(1))) == {}


def test_worker_decorator_works_without_parentheses_and_keeps_the_docstring():
    @flowpro.worker
    def plain(job):
        """Do plain things."""
        return 1

    assert plain.queue == "default"
    assert plain.__doc__ == "Do plain things."
    assert plain().process(_job(1)) == 1


def test_worker_decorator_validates_its_options():
    with pytest.raises(flowpro.ConfigError, match="priority"):

        @flowpro.worker(priority=42)
        def bad(job):
            return None


def test_class_workers_know_whether_process_is_async():
    class Sync(flowpro.Worker):
        def process(self, job):
            return None

    class Async(flowpro.Worker):
        async def process(self, job):
            return None

    assert Sync.is_async is False
    assert Async.is_async is True


# Backoff


def test_default_backoff_starts_near_seventeen_seconds_with_ten_percent_jitter():
    delays = [Fetch().backoff(_job(1)) for _ in range(200)]

    assert all(17 * 0.9 <= d <= 17 * 1.1 for d in delays)
    assert len(set(delays)) > 150  # jittered, not constant


def test_default_backoff_grows_exponentially_with_the_attempt():
    medians = [statistics.median(Fetch().backoff(_job(a)) for _ in range(51)) for a in range(1, 12)]

    assert medians == sorted(medians)
    assert medians[10] > 1_900  # 15 + 2**11
    assert medians[-1] / medians[-2] > 1.8


@pytest.mark.parametrize("attempt", [16, 20, 100, 10_000])
def test_default_backoff_is_bounded_for_any_attempt(attempt):
    delays = [Fetch().backoff(_job(attempt)) for _ in range(50)]

    assert all(0 < d <= 86_400 * 1.1 for d in delays)


def test_backoff_can_be_overridden():
    class Quick(flowpro.Worker):
        def process(self, job):
            return None

        def backoff(self, job):
            return job.attempt * 2

    assert Quick().backoff(_job(3)) == 6
