"""The toy model, stream and steps of ``tests/scripts/ddp_train_script.py`` for in-process loop tests, and the
fixture that resets accelerate's process-wide state after each test (each test builds its own loops).

    from toy_training import fresh_accelerate_state, toy  # noqa: F401  (the autouse fixture applies)
"""

import importlib.util
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState

SCRIPT = Path(__file__).resolve().parent / "scripts" / "ddp_train_script.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("ddp_train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # transformers resolves the model's `config` annotation through it
    spec.loader.exec_module(module)
    return module


toy = _load_script()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    # Accelerator state is a process-wide singleton; each test builds its own loops.
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
