"""Every error type the library raises on purpose, in one place to catch them from.

Each is a subclass of the built-in error a caller would catch anyway (``ValueError``, ``KeyError``,
``RuntimeError``), so ``except ValueError`` keeps working; these names let a caller tell the library's
reasons apart::

    from hf_audiorep.errors import ConfigFieldError, CorruptAudioError

    try:
        config = CATConfig(patch_size=0)
    except ConfigFieldError as err:  # names the field and the value
        print(err)
"""

from .data.decode import CorruptAudioError
from .data.ontology import UnknownLabelError
from .data.sources import SplitNotFoundError
from .evaluation.probing.cache import CacheBudgetError
from .hub_errors import HubUnreachableError
from .modeling._config_checks import ConfigFieldError, ConfigFieldTypeError, ConfigRelationError

__all__ = [
    "CacheBudgetError",
    "ConfigFieldError",
    "ConfigFieldTypeError",
    "ConfigRelationError",
    "CorruptAudioError",
    "HubUnreachableError",
    "SplitNotFoundError",
    "UnknownLabelError",
]
