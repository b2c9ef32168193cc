"""Fixtures shared across test files: a tiny tagger of each problem type, and the awkward-audio corpus; and a
guard that no test leaves autograd switched off for the tests after it."""

import pytest
import torch
from awkward_audio import write_awkward_files
from tagger_utils import save_tiny_tagger


@pytest.fixture(scope="session")
def tagger_dir(tmp_path_factory):
    """A random-weight multi-label (sigmoid) tiny tagger saved to disk."""
    return save_tiny_tagger(tmp_path_factory.mktemp("tagger") / "multi-label")


@pytest.fixture(scope="session")
def single_label_tagger_dir(tmp_path_factory):
    """The same tiny tagger trained, notionally, for single-label classification (softmax)."""
    return save_tiny_tagger(tmp_path_factory.mktemp("tagger") / "single-label", "single_label_classification")


@pytest.fixture(scope="session")
def awkward_files(tmp_path_factory):
    """The awkward-audio corpus without the hour-long file: ``{name: (path, case)}``."""
    return write_awkward_files(tmp_path_factory.mktemp("awkward"), include_slow=False)


@pytest.fixture(scope="session")
def hour_long_flac(tmp_path_factory):
    """An hour of 8-kHz FLAC (about 47 MB, written block by block in a few seconds)."""
    from awkward_audio import AWKWARD_FILES

    case = next(c for c in AWKWARD_FILES if c.slow)
    path = tmp_path_factory.mktemp("long") / case.name
    case.write(path)
    return path


@pytest.fixture(autouse=True)
def _autograd_stays_on():
    """A test that switches autograd off globally (a server's ``torch.set_grad_enabled(False)``, run
    in-process) would make every later test that trains fail far from the cause: it is switched back on and
    the test that left it off fails here."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("the test left autograd switched off (torch.set_grad_enabled(False)) for later tests")
