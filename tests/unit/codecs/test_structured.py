"""Structured args: option parsing, validation on insert and loading to run. No database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from flowpro.codecs import structured
from flowpro.errors import ArgsError, ConfigError


class ReceiptArgs(BaseModel):
    account_id: int
    sent_at: datetime | None = None


def test_dict_option_builds_a_model_with_required_and_optional_keys():
    model = structured.spec_from_option(dict(keys=["a", "b", "c"], required=["a", "c"]), "app.W")

    args = model(a=1, c=[2])

    assert (args.a, args.b, args.c) == (1, None, [2])  # type: ignore[attr-defined]


def test_dict_option_without_required_makes_every_key_optional():
    model = structured.spec_from_option(dict(keys=["a"]), "app.W")

    assert structured.validate(model, {}) == {"a": None}


def test_a_pydantic_model_option_is_used_as_is():
    assert structured.spec_from_option(ReceiptArgs, "app.W") is ReceiptArgs


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (dict(keys=["a", "b"], required=["d"]), "required key 'd' is not in keys ['a', 'b']"),
        (dict(required=["a"]), "needs 'keys'"),
        (dict(keys=[]), "'keys' must not be empty"),
        (dict(keys="abc"), "'keys' must be a list of str, got str"),
        (dict(keys=["a", 1]), "1 is a int"),
        (dict(keys=["a", "a"]), "lists key 'a' twice"),
        (dict(keys=["a"], requird=["a"]), "unknown key 'requird'"),
        (dict(keys=["a"], required="a"), "'required' must be a list of str"),
        (dict(keys=["a-b"]), "key 'a-b' is not a valid attribute name"),
        (dict(keys=["_a"]), "key '_a' is not a valid attribute name"),
        (dict(keys=["class"]), "key 'class' is not a valid attribute name"),
        (dict(keys=["json"]), "key 'json' clashes with a pydantic BaseModel attribute"),
        (dict(keys=["model_x"]), "key 'model_x' clashes with a pydantic BaseModel attribute"),
        (["a"], "must be a pydantic model class or dict"),
        (RootModel[dict[str, int]], "a RootModel cannot hold keyword args"),
    ],
)
def test_a_malformed_option_is_refused_naming_the_offending_key(option, message):
    with pytest.raises(ConfigError, match=r"structured option of worker 'app\.W'") as info:
        structured.spec_from_option(option, "app.W")

    assert message in str(info.value)


def test_validation_lists_every_problem_and_names_each_key():
    model = structured.spec_from_option(dict(keys=["url", "n"], required=["url"]), "app.Fetch")

    with pytest.raises(ArgsError) as info:
        structured.validate(model, {"urll": "https://x", "n": {1, 2}})

    message = str(info.value)
    assert "unknown key 'urll' (typo? did you mean 'url'?)" in message
    assert "missing required key 'url'" in message
    assert "key 'n': input was not a valid JSON value" in message


def test_a_pydantic_model_that_ignores_extra_keys_still_refuses_typos():
    with pytest.raises(ArgsError) as info:
        structured.validate(ReceiptArgs, {"acount_id": 7, "zzz": 1})

    message = str(info.value)
    assert "unknown key 'acount_id' (typo? did you mean 'account_id'?)" in message
    assert "unknown key 'zzz' (typo?)" in message
    assert "missing required key 'account_id'" in message


def test_wrong_types_are_reported_per_key():
    with pytest.raises(ArgsError, match=r"key 'account_id': Input should be a valid integer"):
        structured.validate(ReceiptArgs, {"account_id": "seven"})


def test_a_model_that_allows_extra_keys_keeps_them():
    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")
        a: int

    assert structured.validate(Open, {"a": 1, "b": 2}) == {"a": 1, "b": 2}


def test_validation_returns_the_json_mode_dump():
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    dumped = structured.validate(ReceiptArgs, {"account_id": "7", "sent_at": when})

    assert dumped == {"account_id": 7, "sent_at": "2024-05-01T12:00:00Z"}


def test_a_model_instance_is_accepted_and_dumped():
    assert structured.validate(ReceiptArgs, ReceiptArgs(account_id=3)) == {
        "account_id": 3,
        "sent_at": None,
    }


def test_an_instance_of_another_model_is_refused():
    class Other(BaseModel):
        account_id: int

    with pytest.raises(ArgsError, match="got a Other instance"):
        structured.validate(ReceiptArgs, Other(account_id=3))


@pytest.mark.parametrize("args", [[1, 2], "x", None, 3])
def test_args_that_are_not_a_dict_are_refused(args):
    with pytest.raises(ArgsError, match="must be a dict"):
        structured.validate(ReceiptArgs, args)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_naming_the_key(number):
    model = structured.spec_from_option(dict(keys=["a"]), "app.W")

    with pytest.raises(ArgsError, match="key 'a': contains a non-finite number"):
        structured.validate(model, {"a": [number]})


def test_load_returns_an_instance_of_the_users_own_class():
    args = structured.load(ReceiptArgs, {"account_id": 7, "sent_at": None})

    assert type(args) is ReceiptArgs
    assert args.account_id == 7


def test_load_refuses_args_that_no_longer_validate():
    with pytest.raises(ArgsError) as info:
        structured.load(ReceiptArgs, {"account": 7})

    assert "unknown key 'account'" in str(info.value)
    assert "missing required key 'account_id'" in str(info.value)


def test_aliased_fields_round_trip_through_validate_and_load():
    class Aliased(BaseModel):
        user_name: str = Field(alias="userName")

    stored = structured.validate(Aliased, {"userName": "ada"})

    assert stored == {"userName": "ada"}
    assert structured.load(Aliased, stored).user_name == "ada"


class Secretive(BaseModel):
    ssn: str

    @field_validator("ssn")
    @classmethod
    def _check(cls, value: str) -> str:
        raise ValueError(f"bad ssn {value}")


def test_redacted_messages_never_include_a_validators_echo_of_the_value():
    with pytest.raises(ArgsError) as info:
        structured.validate(Secretive, {"ssn": "CANARY-123"}, redact=True)

    assert "CANARY-123" not in str(info.value)
    assert "key 'ssn': invalid (value_error)" in str(info.value)


def test_unredacted_messages_keep_the_validators_own_message():
    with pytest.raises(ArgsError, match="bad ssn"):
        structured.validate(Secretive, {"ssn": "x"})


def test_builtin_type_errors_never_include_the_value():
    with pytest.raises(ArgsError) as info:
        structured.validate(ReceiptArgs, {"account_id": "CANARY-123"})

    assert "CANARY-123" not in str(info.value)
