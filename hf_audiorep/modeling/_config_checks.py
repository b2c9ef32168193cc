"""What the hf_audiorep configs check, and what they raise.

The configs are strict dataclasses, as transformers v5's own are (``huggingface_hub.dataclasses.strict``).
Whenever a field is set (by ``__init__``, ``from_dict``/``from_pretrained`` or an assignment), its annotation
is checked (``int`` rejects ``True`` and ``32.0``; ``tuple[int, int]`` the length; ``Literal[...]`` the
choices) and then its range, by the checks below attached with ``validated_field``. After ``__init__`` (and
before ``save_pretrained`` writes), the config's ``validate_*`` methods check relations between fields.
A config module must not use ``from __future__ import annotations``: ``strict`` skips string annotations.

`strict_config` is ``strict`` whose errors are also built-in exceptions, so ``except ValueError`` keeps
working: a bad value raises `ConfigFieldError` (a ``ValueError``), a value of the wrong type
`ConfigFieldTypeError` (a ``ValueError`` and a ``TypeError``), a broken relation `ConfigRelationError` (a
``ValueError``). Each is also the ``huggingface_hub`` error that ``strict`` raises, and its message names
the field (or, for a relation, the fields) and the value.
"""

from collections.abc import Callable
from typing import Any, get_args

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from transformers.activations import ACT2FN

__all__ = [
    "ConfigFieldError",
    "ConfigFieldTypeError",
    "ConfigRelationError",
    "activation",
    "at_least",
    "choices",
    "divisible_by",
    "each",
    "length",
    "non_negative",
    "odd",
    "positive",
    "rate",
    "strict_config",
    "unit_interval",
]


def choices(config_class: type, field: str) -> tuple:
    """The values a ``Literal[...]`` config field accepts, for a recipe option that sets it (its argparse
    choices stay the config's own, so a value added to the config is offered without a second list)."""
    return get_args(config_class.__dataclass_fields__[field].type)


class ConfigFieldError(StrictDataclassFieldValidationError, ValueError):
    """A config field was given a bad value."""


class ConfigFieldTypeError(ConfigFieldError, TypeError):
    """A config field was given a value of the wrong type."""


class ConfigRelationError(StrictDataclassClassValidationError, ValueError):
    """Config fields that are valid one by one do not fit together."""


def strict_config(cls: type) -> type:
    """``strict`` for a ``PreTrainedConfig`` subclass, raising the errors above instead of its own."""
    cls = strict(cls)
    strict_setattr = cls.__setattr__

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            strict_setattr(self, name, value)
        except StrictDataclassFieldValidationError as err:
            cause = err.__cause__
            if isinstance(err, ConfigFieldError) or cause is None:
                raise
            error = ConfigFieldTypeError if isinstance(cause, TypeError) else ConfigFieldError
            raise error(field=name, cause=cause) from cause

    def validate(self) -> None:
        """Run the class validators (the ``validate_*`` methods): relations between fields."""
        for validator in cls.__class_validators__:
            try:
                validator(self)
            except (ValueError, TypeError) as err:
                raise ConfigRelationError(validator=validator.__name__, cause=err) from err

    # As strict's own `validate`, so that a subclass can be made strict in turn.
    validate.__is_defined_by_strict_decorator__ = True
    cls.__setattr__ = __setattr__
    cls.validate = validate
    return cls


class _Check:
    """A per-field validator: raises ``ValueError("must be <requirement>, got <value>")``."""

    def __init__(self, requirement: str, predicate: Callable[[Any], bool]):
        self.requirement, self.predicate = requirement, predicate

    def __call__(self, value: Any) -> None:
        if not self.predicate(value):
            raise ValueError(f"must be {self.requirement}, got {value!r}")


def at_least(low: int | float) -> _Check:
    return _Check(f">= {low}", lambda value: value >= low)


def divisible_by(divisor: int) -> _Check:
    return _Check(f"divisible by {divisor}", lambda value: value % divisor == 0)


def length(n: int) -> _Check:
    return _Check(f"of length {n}", lambda values: len(values) == n)


def each(check: _Check) -> _Check:
    """The check applied to every entry of a sequence."""
    return _Check(f"{check.requirement} in every entry", lambda values: all(map(check.predicate, values)))


positive = _Check("positive", lambda value: value > 0)
non_negative = at_least(0)
rate = _Check("in [0, 1)", lambda value: 0 <= value < 1)
unit_interval = _Check("in [0, 1]", lambda value: 0 <= value <= 1)
odd = _Check("odd", lambda value: value % 2 == 1)
activation = _Check("an activation of transformers' ACT2FN", lambda value: value in ACT2FN)
