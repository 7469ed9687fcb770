"""Components and workflows used directly, in-process: no Redis, no worker."""

from __future__ import annotations

import collections
import datetime
import json
import time

import pytest
import tenacity
from marshmallow import fields

import flowkit
from flowkit import ConfigError, ValidationError, component, continue_with, exponential
from flowkit.component import lookup
from flowkit.engine import broker
from flowkit.engine.paths import continuation_key
from flowkit.policy import Policy, key_value, retry_after_of
from flowkit.worker import checks
from flowkit.workflow import _workflows


class Boom(Exception):
    pass


@component(name="unit.add")
def add(data: dict) -> int:
    return data["a"] + data["b"]


calls: list[int] = []


@component(name="unit.flaky")
def flaky(n: int) -> int:
    calls.append(n)
    if len(calls) < 3:
        raise Boom("not yet")
    return n


@component(name="unit.slow")
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_component_called_outside_a_run_just_runs():
    assert add({"a": 2, "b": 3}) == 5
    assert add.__name__ == "add" and add.name == "unit.add"


def test_fluent_configuration_returns_a_new_component_and_leaves_the_original():
    configured = add.retry(attempts=4, backoff=exponential(0.5, 8), jitter=False).timeout(10)
    configured = configured.cache(ttl=60).queue("cpu")
    assert configured is not add
    assert add.policy == Policy()
    p = configured.policy
    assert (p.attempts, p.backoff.initial, p.backoff.maximum, p.jitter) == (4, 0.5, 8, False)
    assert (p.timeout, p.cache_ttl, p.queue) == (10, 60, "cpu")
    assert configured.task_name == add.task_name == "flowkit.step.unit.add"


def test_retry_policy_applies_outside_a_run():
    calls.clear()
    assert flaky.retry(attempts=3, backoff=exponential(0, 0), jitter=False)(7) == 7
    assert len(calls) == 3


def test_retries_stop_after_the_configured_attempts():
    calls.clear()
    with pytest.raises(Boom):
        flaky.retry(attempts=2, backoff=exponential(0, 0), jitter=False)(1)
    assert len(calls) == 2


class Busy(Exception):
    """A provider's error whose Retry-After no one can keep."""

    def __init__(self, retry_after: object) -> None:
        super().__init__("busy")
        self.retry_after = retry_after


@pytest.mark.parametrize("retry_after", [float("inf"), "inf", float("nan"), "nan"])
def test_a_retry_after_of_infinity_or_nan_falls_back_to_the_backoff(retry_after):
    """time.sleep(inf) raised OverflowError, which replaced the provider's error."""
    failures = [Busy(retry_after)]

    def call() -> str:
        if failures:
            raise failures.pop()
        return "done"

    busy = component(name=f"unit.busy.{retry_after!r}")(call)
    assert busy.retry(attempts=2, backoff=exponential(0.01, 0.01))() == "done"
    assert retry_after_of(Busy(retry_after)) is None  # the backoff's wait, not 0 s (NaN)


def test_only_the_listed_errors_retry():
    calls.clear()
    with pytest.raises(Boom):
        flaky.retry(attempts=5, backoff=exponential(0, 0), retry_on=(KeyError,))(1)
    assert len(calls) == 1


def test_timeout_fails_the_attempt():
    with pytest.raises(flowkit.StepTimeout):
        slow.timeout(0.05)(1.0)
    assert slow.timeout(1)(0.01) == 0.01


def test_retry_after_hint_wins_over_backoff():
    class Limited(Exception):
        retry_after = 0.25

    wait = Policy(backoff=exponential(5, 5), jitter=False).wait()
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.set_exception((Limited, Limited(), None))
    assert wait(state) == 0.25


def test_policy_survives_a_json_round_trip():
    p = add.retry(attempts=3, retry_on=(Boom, KeyError)).timeout(2).policy
    assert Policy.from_dict(p.to_dict()) == p
    assert p.exception_types() == (Boom, KeyError)


def domain_of(page: dict) -> str:
    return page["url"].split("/")[2]


def test_limits_travel_as_json_and_key_steps_by_field_or_function():
    limited = add.concurrency(4, key=domain_of).rate_limit("60/m", key="user.id",
                                                           tokens="9000/m", cost="size")
    p = limited.policy
    assert Policy.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert (p.concurrency.limit, p.concurrency.key) == (4, f"fn:{__name__}.domain_of")
    assert (p.rate.per_second, p.rate.burst, p.rate.tokens_per_second) == (1.0, 1.0, 150.0)
    page = {"url": "https://a.example/x", "user": {"id": 7}, "size": 12}
    assert key_value(p.concurrency.key, page, "concurrency") == "a.example"
    assert key_value(p.rate.key, page, "rate") == "7"
    assert key_value(None, page, "rate") == "*"
    assert add.policy.concurrency is None and add.policy.rate is None  # the original is untouched


def test_bad_limits_say_what_to_do():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="whole number"):
            add.concurrency(bad)
    with pytest.raises(ConfigError, match="module-level function"):
        add.concurrency(2, key=lambda page: page["domain"])
    with pytest.raises(ConfigError, match="like '60/m'"):
        add.rate_limit("fast")
    for bad in (0, float("inf"), float("nan"), True, "5"):
        with pytest.raises(ConfigError, match=r"rate_limit\(burst=...\) is a number >= 1"):
            add.rate_limit("60/m", burst=bad)
    # "10/0s" divided by zero, "0/s" passed and no step ever started
    for bad in ("10/0s", "0/s", "0.0/m"):
        with pytest.raises(ConfigError, match="more than 0 per more than 0 seconds"):
            add.rate_limit(bad)
        with pytest.raises(ConfigError, match="more than 0 per more than 0 seconds"):
            add.rate_limit("1/s", tokens=bad, cost="size")
    with pytest.raises(ConfigError, match=r"Concurrency\(key=...\) is an input field's name"):
        flowkit.Concurrency(limit=1, key="")
    with pytest.raises(ConfigError, match="needs cost="):
        add.rate_limit("60/m", tokens="1000/m")
    with pytest.raises(ConfigError, match="no field 'domain'"):
        key_value("domain", {"url": "x"}, "concurrency")


def test_a_policy_out_of_what_redis_and_python_can_hold_is_refused_where_written():
    """Each passed the checks, then failed the run once its step's work was done (a TTL
    under a millisecond was Redis's PX 0, 1e300 out of its range) or raised OverflowError
    after the call had begun (a timeout past what a thread can wait)."""
    for bad in (0.0001, 1e300):
        with pytest.raises(ConfigError, match=r"cache\(ttl=...\) is a number of seconds "
                                              r">= 0.001 and <= 1e\+12, not"):
            add.cache(bad)
    assert add.cache(0.001).policy.cache_ttl == 0.001
    with pytest.raises(ConfigError, match=r"timeout\(seconds\) is a number of seconds > 0 "
                                          r"and <= 9\.2\d+e\+09, not 1e\+300"):
        add.timeout(1e300)
    with pytest.raises(ConfigError, match=r"cache\(version=...\) is a non-empty string"):
        add.cache(10, version="")  # it meant the component's version, without a word


def test_retry_on_takes_classes_and_a_backoff_built_by_hand_is_checked():
    """An instance, a number or None raised a bare TypeError ('is not iterable'); a
    Backoff(-1, "x") made by hand failed later, inside tenacity."""
    for bad in (Boom("x"), 5, None):
        with pytest.raises(ConfigError, match=r"retry\(retry_on=...\) takes an exception "
                                              r"class or a tuple of them"):
            add.retry(attempts=1, retry_on=bad)
    assert add.retry(retry_on=[Boom]).policy.retry_on == (f"{__name__}.Boom",)
    with pytest.raises(ConfigError, match=r"exponential\(initial=...\) is a number of seconds"):
        add.retry(backoff=flowkit.policy.Backoff(-1, "x"))


def test_cache_keys_keep_a_component_s_name_and_version_apart():
    """``billing:charge`` of version 1 and ``billing`` of version ``charge:1`` shared one
    entry: the second was answered with the first's output, its own code never run."""
    from flowkit.store.keys import Keys

    keys = Keys("flowkit")
    assert keys.cache("billing:charge", "1", "d") != keys.cache("billing", "charge:1", "d")


def test_bad_configuration_says_what_to_do():
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(ConfigError, match=r"whole number >= 1 \(1 means no retry\)"):
            add.retry(attempts=bad)
    # NaN and infinity passed every check and failed later, in a timer or a JSON message
    for bad in (0, -1, float("nan"), float("inf"), "5"):
        with pytest.raises(ConfigError, match=r"timeout\(seconds\) is a number of seconds > 0"):
            add.timeout(bad)
        with pytest.raises(ConfigError, match=r"cache\(ttl=...\) is a number of seconds > 0"):
            add.cache(bad)
    for bad in (-1, float("nan"), "1"):
        with pytest.raises(ConfigError, match=r"retry\(jitter=...\) is True"):
            add.retry(jitter=bad)
        with pytest.raises(ConfigError, match=r"exponential\(initial=...\) is a number"):
            exponential(bad)
    with pytest.raises(ConfigError, match=r"retry\(backoff=...\) takes flowkit.exponential"):
        add.retry(backoff=5)
    for bad in ("", 3, None):
        with pytest.raises(ConfigError, match=r"queue\(name\) is the name of a Celery queue"):
            add.queue(bad)
    with pytest.raises(ConfigError, match=r"secret\(\) takes field names"):
        add.secret("ok", 3)
    with pytest.raises(ConfigError, match=r"@component\(name=...\) is a non-empty string"):
        component(name="")(lambda x: x)
    with pytest.raises(ConfigError, match=r"retry\(retry_on=\(\)\) retries on no error"):
        add.retry(attempts=3, retry_on=())
    # one exception class, as ``except`` takes it, is the same as a tuple of one
    assert add.retry(retry_on=ValueError).policy == add.retry(retry_on=(ValueError,)).policy

    class Local(Exception):
        pass

    with pytest.raises(ConfigError, match="module level"):
        add.retry(retry_on=(Local,))
    with pytest.raises(ConfigError, match="another name"):

        @component(name="unit.add")
        def other(x):
            return x


def test_retry_on_given_a_class_name_as_a_string_says_to_pass_the_class():
    """The string was read a letter at a time: "retry_on takes exception classes, got 'V'"."""
    with pytest.raises(ConfigError) as refused:
        add.retry(retry_on="ValueError")
    assert str(refused.value) == ("retry(retry_on=...) takes exception classes, not the string "
                                  "'ValueError': pass the class itself (retry_on=ValueError).")


def test_two_lambdas_may_not_share_a_default_name():
    # both are "tests.test_components.<lambda>": the later replaced the earlier, whose steps
    # then ran the later's body
    first = component(lambda x: x + 1)
    with pytest.raises(ConfigError, match="another name"):
        component(lambda x: x * 2)
    assert first(1) == 2


@pytest.mark.parametrize("name", [None, "unit.scaled"])
def test_a_factory_called_again_under_one_name_is_refused(name):
    # its closures differ (a model, a prompt): the worker would run the later one's for both,
    # under the default name or one fixed name=
    def make(k):
        @component(name=name)
        def scaled(x):
            return x * k
        return scaled

    first = make(2)
    with pytest.raises(ConfigError, match="another name"):
        make(3)
    assert first(1) == 2


@pytest.mark.parametrize("name", [None, "unit.cell"])
def test_a_notebook_cell_run_again_redefines_its_lambda_component(name):
    """A cell defining a component from a lambda, run again (edited or not), raised as if
    two lambdas shared the name: the cell is compiled again, at the same line."""
    cell = "step = component(name={!r})(lambda x: x {} 1)"
    scope = {"__name__": "__main__", "component": component}
    exec(compile(cell.format(name, "+"), "<cell-1>", "exec"), scope)
    exec(compile(cell.format(name, "+"), "<cell-1>", "exec"), scope)  # run again
    exec(compile(cell.format(name, "-"), "<cell-2>", "exec"), scope)  # edited and run again
    assert scope["step"](1) == 0
    assert lookup(scope["step"].name)(1) == 0  # what the worker runs is the latest


def test_a_partial_or_a_callable_object_needs_a_name_and_keeps_it():
    """Neither has a __qualname__: making one a component raised AttributeError."""
    import functools

    class Scale:
        def __call__(self, x):
            return 2 * x

    with pytest.raises(ConfigError, match="needs name="):
        component(functools.partial(pow, 2))
    with pytest.raises(ConfigError, match="needs name="):
        component(Scale())
    scaled = component(name="unit.scale-object")(Scale())
    assert scaled(2) == 4
    with pytest.raises(ConfigError, match="another name"):
        component(name="unit.scale-object")(functools.partial(pow, 2))


class _Client:  # at module level: its method's qualified name is plain, as in an app
    def __init__(self, k):
        self.k = k

    def call(self, x):
        return self.k * x


def test_a_callable_object_s_own_attributes_do_not_override_the_component_s():
    """update_wrapper merged the object's __dict__ into the component: its `name` replaced
    name=, its `timeout` broke .timeout(); a component given again was re-registered under
    its own name, replacing it."""
    class Tool:
        name, timeout = "tool-self-name", 30.0

        def __init__(self):
            self.fn = "not a function"

        def __call__(self, x):
            return x + 1

    tool = component(name="unit.tool")(Tool())
    assert tool.name == "unit.tool" and lookup("unit.tool") is tool
    assert tool.timeout(5)(1) == 2
    with pytest.raises(ConfigError, match="'unit.tool' is a component already"):
        component(name="unit.tool-alias")(tool.retry(2))


def test_one_method_bound_to_two_objects_may_not_share_a_name():
    """Both are _Client.call: the worker ran the later object's for both."""
    first = component(name="unit.bound")(_Client(2).call)
    with pytest.raises(ConfigError, match=r"_Client.call of <.*_Client object at .*another name"):
        component(name="unit.bound")(_Client(3).call)
    assert lookup(first.name)(1) == 2


def test_two_lambdas_on_one_line_may_not_share_a_name():
    """Compiled at one line, they are not a reload of one another: the first ran the
    second's body."""
    line = "double, negate = component(lambda x: x * 2), component(lambda x: -x)"
    with pytest.raises(ConfigError, match="another name"):
        exec(compile(line, "same_line.py", "exec"),
             {"__name__": "same_line", "component": component})


def test_continuation_keys_count_up_from_the_step():
    assert continuation_key("2:agent", "tool") == ("2+1:tool", 1)
    assert continuation_key("2+1:tool", "agent") == ("2+2:agent", 2)
    decision = continue_with(add, {"a": 1, "b": 1})
    assert decision.component is add


def test_workflow_input_is_validated_with_field_messages():
    wf = flowkit.Workflow(
        "unit-validate", [add], input_schema={"a": fields.Integer(required=True), "b": fields.Integer()}
    )
    with pytest.raises(ValidationError) as err:
        wf.validate({"b": "x", "zzz": 1})
    assert set(err.value.fields) == {"a", "b", "zzz"}
    assert err.value.fields["a"] == ["Missing data for required field."]
    assert wf.validate({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(ValidationError):
        wf.validate(["not", "an", "object"])


def test_a_dict_schema_holds_marshmallow_fields():
    """{"a": int} was taken: the field was dropped, and any input passed."""
    with pytest.raises(ConfigError, match=r"Schema unit-typedInput: field 'a' is <class 'int'>; "
                                          r"a dict schema maps names to marshmallow fields"):
        flowkit.Workflow("unit-typed", [add], input_schema={"a": int})


def test_workflow_composition_errors_are_clear():
    with pytest.raises(ConfigError, match="not a step"):
        flowkit.Workflow("unit-bad", [add, "nope"])
    for bad in ("bad/name", "a b", " ", "", 5, "x" * 201):
        with pytest.raises(ConfigError, match="must be 1 to 200 characters, without spaces"):
            flowkit.Workflow(bad, [add])
    with pytest.raises(ConfigError, match=r"takes a list of steps: write \[add\], not add alone"):
        flowkit.Workflow("unit-bad", add)
    # a queue that is no name passed, and the worker's start then failed on it
    for bad in (5, "", " "):
        with pytest.raises(ConfigError, match=r"Workflow\(queue=...\) is the name of a Celery"):
            flowkit.Workflow("unit-bad", [add], queue=bad)
    for batch in (0, 2.5, True):
        with pytest.raises(ConfigError, match="batch"):
            flowkit.fan_out(add, batch=batch)


def test_settings_come_from_flowkit_env_vars():
    s = flowkit.Settings.from_env({"FLOWKIT_HEARTBEAT_INTERVAL": "1.5", "FLOWKIT_MAX_RESTARTS": "7"})
    assert s.heartbeat_interval == 1.5 and s.max_restarts == 7
    with pytest.raises(ConfigError, match="FLOWKIT_MAX_RESTARTS='lots'"):
        flowkit.Settings.from_env({"FLOWKIT_MAX_RESTARTS": "lots"})
    with pytest.raises(ConfigError, match="HEARTBEAT_LAPSE"):
        flowkit.Settings.from_env({"FLOWKIT_HEARTBEAT_LAPSE": "1", "FLOWKIT_HEARTBEAT_INTERVAL": "2"})
    with pytest.raises(ConfigError, match=r"FLOWKIT_HEARTBEAT_STALL \(8.0s\) must be longer than "
                       r"FLOWKIT_HEARTBEAT_LAPSE \(8.0s\)"):
        flowkit.Settings.from_env({"FLOWKIT_HEARTBEAT_STALL": "8"})


@pytest.mark.parametrize("changes, says", [
    ({"retry_attempts": "3"}, "FLOWKIT_RETRY_ATTEMPTS (retry_attempts=) is a whole number, "
                              "not '3'; give a value like 1."),
    ({"max_payload_bytes": 2.5}, "is a whole number, not 2.5"),
    ({"redis_url": 5}, "FLOWKIT_REDIS_URL (redis_url=) is a string, not 5"),
    ({"redis_url": "localhost:6379"}, "FLOWKIT_REDIS_URL=localhost:6379 is not a Redis URL; write it as "
                                      "redis://host:port/db"),
    # Celery's spelling of a Sentinel URL was told first to be written redis://
    ({"redis_url": "sentinel://127.0.0.1:26379"}, "FLOWKIT_REDIS_URL=sentinel://127.0.0.1:26379 "
                                                  "is Celery's spelling of sentinels (sentinel://, "
                                                  "a broker's); write flowkit's: redis+sentinel://"
                                                  "host:port,host:port/service/db."),
    ({"api_open": "yes"}, "FLOWKIT_API_OPEN (api_open=) is True or False, not 'yes'"),
    ({"heartbeat_interval": float("nan")}, "is a finite number, not nan"),
    ({"wait_recheck_seconds": -1}, "FLOWKIT_WAIT_RECHECK_SECONDS (wait_recheck_seconds=) is "
                                   "more than 0, not -1."),
    ({"redis_socket_timeout": 0}, "is more than 0, not 0."),
    ({"retry_attempts": 0}, "is more than 0, not 0."),
    ({"drain_grace": -1.0}, "FLOWKIT_DRAIN_GRACE (drain_grace=) is 0 or more, not -1.0."),
    # a worker logged the metrics server's OverflowError and ran on unobserved
    ({"metrics_port": 99999}, "FLOWKIT_METRICS_PORT is a TCP port, 1 to 65535 (0: off), not "
                              "99999."),
    # the price table was read at the first call's cost, after the provider answered: every
    # LLM call failed, paid; NaN (which JSON reads) made the cost counter NaN for good
    ({"llm_prices": "alsonotjson"}, "FLOWKIT_LLM_PRICES is not valid JSON"),
    ({"llm_prices": '{"gpt-4o-mini": [0.15, "0.6$"]}'}, "FLOWKIT_LLM_PRICES: price of 'gpt-4o-mini' must be "
     "[input_usd_per_million, output_usd_per_million] (and a third, "
     "cached_input_usd_per_million, if its cached input costs less), finite numbers 0 or "
     "more, got [0.15, '0.6$']"),
    ({"llm_prices": '{"m": [NaN, 0.6]}'}, "finite numbers 0 or more, got [nan, 0.6]"),
    ({"llm_prices": '{"m": [-2.5, 10]}'}, "finite numbers 0 or more, got [-2.5, 10]"),
    ({"llm_prices": '{"m": [1, 2, 3, 4]}'}, "finite numbers 0 or more, got [1, 2, 3, 4]"),
])
def test_a_setting_of_the_wrong_type_or_range_is_refused_where_it_is_set(changes, says):
    """configure(retry_attempts="3") was taken, and the first step failed on it; a negative
    FLOWKIT_WAIT_RECHECK_SECONDS failed in the middle of a wait."""
    with pytest.raises(ConfigError) as refused:
        flowkit.configure(**changes)
    assert says in str(refused.value)
    env = {f"FLOWKIT_{name.upper()}": str(value) for name, value in changes.items()
           if isinstance(value, (int, float)) and not isinstance(value, bool)
           or name == "llm_prices"}
    if env:  # from the environment: the same check
        with pytest.raises(ConfigError, match="FLOWKIT_"):
            flowkit.Settings.from_env(env)
    assert flowkit.get_settings().replace(drain_grace=0, compact_after_seconds=0)


def test_prices_in_quotes_are_read_as_numbers_as_they_were():
    """Before the table was checked, ["0.15", "0.6"] was read with float(): refused, every
    process stopped at start after an upgrade."""
    prices = flowkit.Settings.from_env({"FLOWKIT_LLM_PRICES": '{"m": ["0.15", "0.6"]}'})
    assert prices.llm_prices == '{"m": ["0.15", "0.6"]}'
    with pytest.raises(ConfigError, match="got \\['0.15', 'lots'\\]"):
        flowkit.Settings.from_env({"FLOWKIT_LLM_PRICES": '{"m": ["0.15", "lots"]}'})


def test_celery_is_configured_for_long_work_and_json_only():
    conf = broker.celery_config(flowkit.Settings())
    # plain JSON out (flowkit-json, tests/test_wire_json.py); kombu's json of earlier
    # releases read; never pickle, yaml or msgpack
    assert conf["accept_content"] == conf["result_accept_content"] == ["flowkit-json", "json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "flowkit-json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_enable_prefetch_count_reduction"] is False  # it hung RabbitMQ workers
    assert conf["broker_transport_options"]["visibility_timeout"] == 3600


def test_visibility_timeout_must_exceed_the_longest_step():
    flowkit.Workflow("unit-long", [slow.timeout(600).retry(attempts=3, backoff=exponential(1, 10))])
    with pytest.raises(ConfigError, match="FLOWKIT_VISIBILITY_TIMEOUT above 1821"):
        checks.check_visibility_timeout(flowkit.Settings(visibility_timeout=1800))
    checks.check_visibility_timeout(flowkit.Settings(visibility_timeout=3600))


def test_an_output_schema_s_messages_are_cut_short_in_the_error(monkeypatch):
    # 100,000 bad items made a 3.5 MB message, kept in the run's error and every event
    monkeypatch.setitem(_workflows, "unit-output-cut", None)  # forgotten after the test
    checked = flowkit.Workflow("unit-output-cut", [component(name="unit.cut")(lambda x: x)],
                               output_schema={"items": fields.List(fields.Integer())})
    with pytest.raises(flowkit.ValidationError) as refused:
        checked.check_output({"items": ["x"] * 100_000})
    said = str(refused.value)
    assert len(said) < 2100 and said.endswith('["Not a valid integer."], ....'), said[-80:]
    assert len(refused.value.fields["items"]) == 100_000  # the fields themselves are whole


def test_a_workflow_defined_again_from_another_module_is_told(monkeypatch, caplog):
    """Two modules' workflows under one name: the later replaced the earlier silently, and
    starts of the earlier ran the later's steps. From the same module it is a reload."""
    monkeypatch.setitem(_workflows, "unit-twice", None)  # forgotten after the test
    step = component(name="unit.twice")(lambda x: x)
    flowkit.Workflow("unit-twice", [step])
    flowkit.Workflow("unit-twice", [step])  # a reload: nothing to say
    assert "replaces" not in caplog.text
    exec('import flowkit\nflowkit.Workflow("unit-twice", [step])',
         {"__name__": "other.flows", "step": step})
    assert ("Workflow 'unit-twice' defined in other.flows replaces the one defined in "
            "tests.test_components") in caplog.text


def test_a_pydantic_model_in_an_output_says_to_model_dump_it():
    """Returning the SDK's ChatCompletion (or a parsed model) is the first mistake of a user
    coming from the openai SDK: "Object of type ChatCompletion is not JSON serializable"."""
    import pydantic

    from flowkit.serialization import dumps_bounded

    class Answer(pydantic.BaseModel):
        text: str

    with pytest.raises(TypeError, match=r"the output of step 0:ask must be JSON-serialisable "
                                        r"\(at \['answer'\]\): it holds a Answer, a pydantic model .*return "
                                        r"value\.model_dump\(mode='json'\)"):
        dumps_bounded({"answer": Answer(text="hi")}, "the output of step 0:ask")


def _cyclic() -> dict:
    items: list = [1]
    items.append(items)
    return {"items": items}


_SHARED = [1, 2]


@pytest.mark.parametrize("value, where", [
    ({"items": [1, {"when": datetime.date(2026, 1, 1)}]}, "['items'][1]['when']"),
    ([{"ok": 1}, (2, {3})], "[1][1]"),
    ({"scores": {"a": 1.0, "b": float("-inf")}}, "['scores']['b']"),
    ({"pairs": {(1, 2): "a"}}, "['pairs'] key (1, 2)"),
    ({(1, 2): "a"}, "key (1, 2)"),
    (object(), ""),
    # the walk that finds the part ended only for values without a cycle: a step whose
    # output held itself hung its worker thread for ever, its lease held
    (_cyclic(), "['items'][1], which holds itself (a reference cycle)"),
    ({"twice": [_SHARED, _SHARED], "bad": {1j}}, "['bad']"),  # held twice is no cycle
])
def test_an_output_json_cannot_carry_is_refused_with_where_the_part_is(value, where):
    """A deep output's error named the type only ("Object of type date is not JSON
    serializable"), not which of its thousand parts to fix."""
    from flowkit.serialization import dumps_bounded

    with pytest.raises(TypeError) as err:
        dumps_bounded(value, "the output of step 0:s")
    at = f" (at {where})" if where else ""
    assert str(err.value).startswith(f"the output of step 0:s must be JSON-serialisable{at}: ")


@pytest.mark.parametrize("value, clash", [
    ({1: "a", "1": "b"}, "keys 1 and '1' are both \"1\""),
    ({"x": [{None: 1, "null": 2}]}, "at ['x'][0] keys None and 'null' are both \"null\""),
    ({"k": {"true": 1, True: 0}}, "at ['k'] keys 'true' and True are both \"true\""),
    ({"k": {2.5: 1, "2.5": 0}}, "at ['k'] keys 2.5 and '2.5' are both \"2.5\""),
    # a dict subclass is an object too (its keys were walked as a list's items)
    (collections.OrderedDict([(1, "a"), ("1", "b")]), "keys 1 and '1' are both \"1\""),
    ([collections.defaultdict(int, {None: 1, "null": 2})],
     "at [0] keys None and 'null' are both \"null\""),
])
def test_an_output_with_two_keys_json_writes_as_one_is_refused(value, clash):
    from flowkit.serialization import dumps_bounded

    with pytest.raises(TypeError) as err:
        dumps_bounded(value, "the output of step 0:s")
    assert str(err.value).startswith(f"the output of step 0:s cannot be JSON as it is: {clash}")


def test_an_output_with_keys_of_several_types_that_do_not_clash_is_kept():
    from flowkit.serialization import dumps_bounded

    assert dumps_bounded({1: "a", "b": {None: 2}}, "x") == '{"1":"a","b":{"null":2}}'


def test_an_unknown_component_says_how_to_import_it_in_the_worker():
    """It named FLOWKIT_IMPORTS, a variable flowkit never read."""
    from flowkit.component import lookup
    from flowkit.errors import NotFound

    with pytest.raises(NotFound) as missing:
        lookup("unit.nowhere")
    assert str(missing.value) == (
        "No component named 'unit.nowhere' in this process; import the module that defines it "
        "in the worker: create_celery_app(..., imports=['myapp.flows']), or name it with "
        "celery -A.")


def test_a_process_s_own_end_is_never_retried_even_under_retry_on_base_exception():
    """A SystemExit that reaches the retry policy is the process ending (billiard's
    terminate handler in a prefork child; a step's own sys.exit() is a ComponentExit by
    then): under ``retry_on=BaseException`` the dying child ran the step again."""
    policy = flowkit.component(lambda data: data, name="t.ends").retry(
        retry_on=BaseException).policy
    assert not policy.retries(SystemExit(-241))
    assert policy.retries(KeyboardInterrupt()) and policy.retries(ValueError())
