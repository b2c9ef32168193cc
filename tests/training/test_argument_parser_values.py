"""The recipes' parser (hf_audiorep/training/argument_parser.py) on argument dataclasses written here: each
field's docstring (whitespace collapsed) becomes its ``--help``, a subclass that only changes a default keeps
its parent's words, a field's own ``metadata["help"]`` and its other metadata (``choices``) are kept, and
parsing, defaults and errors stay HfArgumentParser's. test_recipe_finetune.py checks that every recipe
option has some help; this file checks which words each option gets.

Each test imports the dataclasses from a fresh file: the parser writes the help into the classes' ``Field``
objects, so classes shared between tests would carry one test's result into the next."""

import dataclasses
import importlib.util
import itertools
import sys

import pytest

from hf_audiorep.training import TrainingArguments
from hf_audiorep.training.argument_parser import RecipeArgumentParser, field_docstrings
from hf_audiorep.training.optim import LR_SCHEDULERS, OPTIMIZERS

SOURCE = '''
import dataclasses
from dataclasses import dataclass, field


@dataclass
class Base:
    """Arguments of a run (this docstring is the class's, not a field's)."""

    steps: int = 10
    """number of   optimizer
        steps"""
    rate: float = field(default=0.1, metadata={"help": "the rate, from metadata"})
    label: str = field(default="x", metadata={"help": "the metadata help wins"})
    """a docstring the parser does not show"""
    optimizer: str = field(default="adam", metadata={"choices": ["adam", "sgd"]})
    """which optimizer"""
    plain: int = 1
    after_plain: str = "a str default, not a docstring"
    """the second of two fields"""
    ellipsis: int = 3
    ...
    note = "a class attribute, not a field"
    """not a field's docstring"""
    name: str = "base"
    """the base's name"""


class Mixin:
    hidden: int = 0
    """a docstring of a class that is no dataclass"""


@dataclass
class Child(Base, Mixin):
    steps: int = 600
    rate: float = 0.5
    name: str = "child"
    """the child's   name"""
    hidden: int = 7
    extra: bool = True
    """a switch of the child"""


class Outer:
    @dataclass
    class Inner:
        depth: int = 2
        """a field of a nested class"""


Made = dataclasses.make_dataclass(
    "Made", [("made", int, field(default=5, metadata={"help": "made's help"})), ("bare", int, 6)]
)
'''

BASE_DOCS = {
    "steps": "number of optimizer steps",
    "label": "a docstring the parser does not show",
    "optimizer": "which optimizer",
    "after_plain": "the second of two fields",
    "name": "the base's name",
}
BASE_HELP = {  # what --help shows for Base: the metadata help where there is one, else the docstring
    "steps": "number of optimizer steps",
    "rate": "the rate, from metadata",
    "label": "the metadata help wins",
    "optimizer": "which optimizer",
    "plain": None,
    "after_plain": "the second of two fields",
    "ellipsis": None,
    "name": "the base's name",
}
_count = itertools.count()


@pytest.fixture
def classes(tmp_path):
    """A fresh import of SOURCE (a real file, so that inspect finds the classes' source)."""
    name = f"_argument_parser_values_{next(_count)}"
    path = tmp_path / f"{name}.py"
    path.write_text(SOURCE, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]


def helps(parser) -> dict:
    """``{option name: help}`` of every option but ``--help``."""
    return {a.option_strings[0].removeprefix("--"): a.help for a in parser._actions if a.dest != "help"}


def test_field_docstrings_of_a_dataclass(classes):
    assert field_docstrings(classes.Base) == {**BASE_DOCS, "rate": "the rate, from metadata"}


def test_a_subclass_keeps_its_parents_words_and_its_own_override_them(classes):
    expected = {
        **BASE_DOCS,
        "rate": "the rate, from metadata",  # redeclared without help: the parent's metadata help
        "label": "the metadata help wins",  # an inherited field's metadata help (the parser shows it)
        "name": "the child's name",  # its own docstring over the parent's
        "extra": "a switch of the child",
    }  # nothing from Mixin, which is no dataclass
    assert field_docstrings(classes.Child) == expected


def test_nested_and_sourceless_dataclasses(classes):
    assert field_docstrings(classes.Outer.Inner) == {"depth": "a field of a nested class"}
    assert field_docstrings(classes.Made) == {"made": "made's help"}  # no source: metadata help only
    parser = RecipeArgumentParser((classes.Outer.Inner, classes.Made))
    assert helps(parser) == {"depth": "a field of a nested class", "made": "made's help", "bare": None}


def test_help_of_each_option(classes, capsys):
    parser = RecipeArgumentParser(classes.Base)
    assert helps(parser) == BASE_HELP
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps STEPS number of optimizer steps (default: 10)" in text
    assert "--optimizer {adam,sgd} which optimizer (default: adam)" in text


def test_help_of_a_subclass_and_of_several_dataclasses(classes):
    parser = RecipeArgumentParser((classes.Child, classes.Outer.Inner))
    child = helps(parser)
    # the bool's --no_extra twin says what it turns off, not the option's own words
    assert child.pop("no_extra") == "turn --extra off (the same as --extra false)"
    assert child == {
        **BASE_HELP,
        "rate": "the rate, from metadata",
        "name": "the child's name",
        "hidden": None,
        "extra": "a switch of the child",
        "depth": "a field of a nested class",
    }


def test_the_help_is_written_into_the_fields_with_their_other_metadata(classes):
    RecipeArgumentParser(classes.Base)
    fields = {f.name: f for f in dataclasses.fields(classes.Base)}
    assert dict(fields["optimizer"].metadata) == {"choices": ["adam", "sgd"], "help": "which optimizer"}
    assert dict(fields["label"].metadata) == {"help": "the metadata help wins"}
    assert dict(fields["plain"].metadata) == {}
    # A second parser of the same class finds the help already there and gives the same options.
    assert helps(RecipeArgumentParser(classes.Base)) == BASE_HELP


def test_parsing_defaults_and_errors(classes, capsys):
    parser = RecipeArgumentParser((classes.Child, classes.Outer.Inner))
    child, inner = parser.parse_args_into_dataclasses(args=[])
    assert child == classes.Child() and inner == classes.Outer.Inner()
    assert (child.steps, child.rate, child.name, child.extra) == (600, 0.5, "child", True)
    argv = [
        "--steps",
        "3",
        "--rate",
        "0.25",
        "--optimizer",
        "sgd",
        "--no_extra",
        "--depth",
        "4",
        "--name",
        "n",
    ]
    child, inner = parser.parse_args_into_dataclasses(args=argv)
    assert (child.steps, child.rate, child.optimizer, child.extra, child.name) == (3, 0.25, "sgd", False, "n")
    assert inner.depth == 4
    for bad, words in (
        (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["--steps", "x"], "int"),
        # an option no dataclass has: argparse's refusal (not HfArgumentParser's ValueError), with a hint
        (["--stpes", "3"], "error: unrecognized arguments: --stpes 3 (did you mean --steps?)\n"),
        (["--steps=3", "--zzz=1", "x"], "error: unrecognized arguments: --zzz=1 x\n"),
    ):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args_into_dataclasses(args=bad)
        assert exit_.value.code == 2
        assert words in capsys.readouterr().err
    # asked for, the words no option takes come back instead
    *_, remaining = parser.parse_args_into_dataclasses(args=["--stpes", "3"], return_remaining_strings=True)
    assert remaining == ["--stpes", "3"]


@pytest.mark.parametrize(
    ("option", "names"), [("--optimizer", OPTIMIZERS), ("--lr_scheduler", LR_SCHEDULERS)]
)
def test_training_arguments_offer_exactly_the_optimizers_and_schedules_the_loop_builds(capsys, option, names):
    """A wrong name is argparse's usage error listing the loop's own names, before any recipe work starts."""
    parser = RecipeArgumentParser(TrainingArguments)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args_into_dataclasses(args=[option, "foo"])
    assert exit_.value.code == 2
    assert f"(choose from {', '.join(repr(name) for name in names)})" in capsys.readouterr().err
    for name in names:
        (parsed,) = parser.parse_args_into_dataclasses(args=[option, name, "--max_grad_norm", "0"])
        assert getattr(parsed, option[2:]) == name
