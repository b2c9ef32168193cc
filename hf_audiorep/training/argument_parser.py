"""The recipes' command-line parser: transformers' ``HfArgumentParser`` with a help line for every option.

``HfArgumentParser`` shows ``field(metadata={"help": ...})`` and nothing else, while the library's argument
dataclasses document each field with the docstring under it (as transformers' own configs do), which kept
``recipes/* --help`` silent about most options. :class:`RecipeArgumentParser` reads those docstrings, for
the dataclass and every dataclass it inherits from, and uses them as the help where no metadata help is set.
An option no dataclass has is refused as argparse refuses it (usage, the option, the closest known option,
exit status 2), where ``HfArgumentParser`` raises a ``ValueError`` with a traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap

from transformers import HfArgumentParser


@functools.cache
def _docstrings_of(cls: type) -> dict[str, str]:
    """``{field name: docstring}`` of the annotated attributes declared in ``cls`` itself."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # defined in an interactive session: no source to read
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def field_docstrings(cls: type) -> dict[str, str]:
    """The help of every field of the dataclass ``cls``: its docstring, else the help its parent class gave
    it (a subclass that only changes a default, ``max_steps: int = 600``, keeps the parent's words)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            inherited = {
                f.name: f.metadata["help"] for f in dataclasses.fields(klass) if "help" in f.metadata
            }
            docs.update(inherited)
            docs.update(_docstrings_of(klass))
    return docs


def _describe_negative_twin(action) -> None:
    """The ``--no_<option>`` that HfArgumentParser adds beside a boolean option whose default is True repeats
    the option's help, which says what the option does, not what its twin turns off; and its "(default:
    False)" would read as the option's default (the twin's is never used: the option sets their shared
    destination)."""
    twin = next((o for o in action.option_strings if o.startswith("--no_")), None)
    if twin is None:
        return
    option = "--" + twin[len("--no_") :]
    action.help = f"turn {option} off (the same as {option} false)"
    action.default = argparse.SUPPRESS


class RecipeArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` that takes each field's docstring as its ``--help`` text."""

    def _add_dataclass_arguments(self, dtype):
        docs = field_docstrings(dtype)
        for field in dataclasses.fields(dtype):
            if "help" not in field.metadata and field.name in docs:
                # Field.metadata is a read-only mapping; the Field object itself is ours to update.
                field.metadata = {**field.metadata, "help": docs[field.name]}
        super()._add_dataclass_arguments(dtype)
        for action in self._actions:
            _describe_negative_twin(action)

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        """``HfArgumentParser``'s, but words no option takes end the run as argparse ends it (usage, the
        words, the closest option to the first, exit status 2) unless ``return_remaining_strings`` asks for
        them."""
        parsed = super().parse_args_into_dataclasses(args, return_remaining_strings=True, **kwargs)
        if return_remaining_strings:
            return parsed
        *dataclass_objects, remaining = parsed
        if remaining:
            known = [option for action in self._actions for option in action.option_strings]
            unknown = [word.split("=", 1)[0] for word in remaining if word.startswith("-")]
            close = difflib.get_close_matches(unknown[0], known, n=1) if unknown else []
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.error(f"unrecognized arguments: {' '.join(remaining)}{hint}")
        return tuple(dataclass_objects)
