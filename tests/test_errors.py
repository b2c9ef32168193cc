"""The library's error types can be caught from `hf_audiorep` and `hf_audiorep.errors`, and each is also the
built-in error a caller would catch without knowing them."""

import subprocess
import sys

import pytest

import hf_audiorep
from hf_audiorep import errors

BUILT_IN = {
    "CacheBudgetError": ValueError,
    "ConfigFieldError": ValueError,
    "ConfigFieldTypeError": TypeError,
    "ConfigRelationError": ValueError,
    "CorruptAudioError": ValueError,
    "HubUnreachableError": RuntimeError,
    "SplitNotFoundError": ValueError,
    "UnknownLabelError": KeyError,
}


def test_every_error_is_public_and_a_built_in_error():
    assert sorted(errors.__all__) == sorted(BUILT_IN)
    for name, base in BUILT_IN.items():
        error = getattr(errors, name)
        assert getattr(hf_audiorep, name) is error
        assert issubclass(error, base)
    with pytest.raises(AttributeError, match="NoSuchError"):
        hf_audiorep.NoSuchError  # noqa: B018


def test_importing_the_package_does_not_load_the_error_modules():
    code = (
        "import sys, hf_audiorep; print('hf_audiorep.errors' in sys.modules); "
        "from hf_audiorep import CorruptAudioError; print(CorruptAudioError.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "hf_audiorep.data.decode"]
