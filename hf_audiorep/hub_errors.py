"""One clear line instead of a traceback when the Hugging Face Hub cannot be reached or refuses access.

``huggingface_hub`` and ``datasets`` report a missing network, offline mode, a bad token or a missing
repository as a chain of exceptions from deep inside their HTTP clients, after retrying for up to
minutes. Every Hub call of the library goes through :func:`translate_hub_errors`, which turns those
chains into a :class:`HubUnreachableError` naming the repository and what to check;
:func:`check_hub_reachable` asks the Hub once, without retries, before a long retrying call; and
:func:`run_recipe`, the entry of every recipe, prints that error as one line (once, on rank 0) and
exits with status 2.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)

__all__ = [
    "RECIPE_EXIT_STATUS",
    "HubUnreachableError",
    "check_hub_reachable",
    "hub_error_message",
    "run_recipe",
    "translate_hub_errors",
]

#: exit status of a recipe that stopped because the Hub could not be used (1 is any other failure).
RECIPE_EXIT_STATUS = 2
#: seconds a rank other than 0 waits before reporting: rank 0 meets the same Hub and reports it once, and
#: the launcher stops the other ranks as soon as rank 0 exits. A rank that fails alone still reports.
_OTHER_RANKS_GRACE_SECONDS = 5.0
#: one request to the Hub before a long call; the libraries' own timeout for metadata requests is 10 s.
_PROBE_TIMEOUT_SECONDS = 10.0

_TOKEN = "the token (`hf auth login` or HF_TOKEN)"
_DATASET_HINT = "or use a local copy instead (--dataset PATH)"
_REPO_IN_URL = re.compile(r"(?:hf://|/)datasets/([\w.-]+/[\w.-]+?)(?:@|/resolve/|/tree/|/|$)")


class HubUnreachableError(RuntimeError):
    """The Hub could not be reached, or refused the request; the message says what to check."""

    def __init__(self, message: str, repo_id: str | None = None):
        super().__init__(message)
        self.repo_id = repo_id


def _offline() -> bool:
    if constants.HF_HUB_OFFLINE:
        return True
    # datasets has its own switch (HF_DATASETS_OFFLINE), read when it is imported.
    config = sys.modules.get("datasets.config")
    return bool(getattr(config, "HF_HUB_OFFLINE", False))


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from: ``raise ... from cause``, and the original that
    ``raise ... from None`` hides in ``__context__``. An exception merely raised while another was being
    handled does not count: a bad split after a cache fallback is about the split, not the network."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or (err.__context__ if err.__suppress_context__ else None)


def _connection_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [
        httpx2.TransportError,  # huggingface_hub's client: DNS, refused, reset, timeouts, proxy
        ConnectionError,  # OfflineModeIsEnabled, and datasets' "Couldn't reach" / "Server Disconnected"
        TimeoutError,
        socket.gaierror,
        LocalEntryNotFoundError,  # "cannot reach the Hub and no cached copy"
    ]
    # Clients that other libraries may use; only when already imported, since they cannot raise otherwise.
    for module, name in (
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("aiohttp", "ClientError"),
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            types.append(cls)
    return tuple(types)


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _repo_in_errors(chain: list[BaseException]) -> str | None:
    for err in chain:
        match = _REPO_IN_URL.search(str(err))
        if match:
            return match.group(1)
    return None


def hub_error_message(
    err: BaseException,
    repo_id: str | None = None,
    *,
    repo_type: str = "dataset",
    upload: bool = False,
    hint: str | None = None,
) -> str | None:
    """The one-line explanation of ``err``, or None when it is not a failure to use the Hub.

    ``repo_id`` and ``repo_type`` name what was being fetched (or, with ``upload``, published); ``hint``
    is the last resort offered to the user (default for datasets: a local copy with ``--dataset PATH``).
    """
    chain = list(_chain(err))
    if hint is None and repo_type == "dataset" and not upload:
        hint = _DATASET_HINT
    repo_id = repo_id or _repo_in_errors(chain)
    what = f"{repo_type} {repo_id}" if repo_id else f"the {repo_type}"
    if upload:
        verb = f"upload {what} to the Hugging Face Hub"
    elif repo_id:
        verb = f"reach the Hugging Face Hub for {what}"
    else:  # a stream whose files failed to open: they may live on another host
        verb = f"read {what} from the Hugging Face Hub or its data host"
    tail = f"; {hint}" if hint else ""
    names = {type(e).__name__ for e in chain}

    if any(isinstance(e, OfflineModeIsEnabled) for e in chain) or (
        _offline() and any(isinstance(e, _connection_error_types()) for e in chain)
    ):
        if upload:
            return (
                f"cannot upload {what}: offline mode is on (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE to "
                f"publish, with a network and {_TOKEN}{tail}"
            )
        return (
            f"cannot reach the Hugging Face Hub for {what}: offline mode is on (HF_HUB_OFFLINE or "
            f"HF_DATASETS_OFFLINE) and no copy is cached; unset it, with a network, to download{tail}"
        )
    if any(isinstance(e, GatedRepoError) for e in chain):
        return (
            f"{what} is gated on the Hub: accept its conditions on its Hub page and check that {_TOKEN} "
            f"is the account that did{tail}"
        )
    refused = next((e for e in chain if isinstance(e, HfHubHTTPError) and _status(e) in (401, 403)), None)
    if upload and (refused is not None or any(isinstance(e, RepositoryNotFoundError) for e in chain)):
        # Creating or writing a repository fails this way only for want of a token with write access.
        status = f" (HTTP {_status(refused)})" if refused is not None else ""
        return (
            f"the Hub refused to create or write {what}{status}: check that {_TOKEN} is valid and has "
            f"write access to its namespace{tail}"
        )
    if any(isinstance(e, RepositoryNotFoundError) for e in chain) or "DatasetNotFoundError" in names:
        # The Hub answers the same for a missing repository and a private one the token cannot see.
        return (
            f"the Hub has no {what if repo_id else f'such {repo_type}'}, or it is private and the token "
            f"cannot see it: check the id and {_TOKEN}{tail}"
        )
    if refused is not None:
        return (
            f"the Hub refused {what} (HTTP {_status(refused)}): check that {_TOKEN} is valid and has "
            f"access to it{tail}"
        )
    connection = next((e for e in reversed(chain) if isinstance(e, _connection_error_types())), None)
    if connection is not None:
        check = f"and {_TOKEN}" if upload else "; HF_HUB_OFFLINE=1 uses a copy already in the cache"
        return (
            f"cannot {verb} ({constants.ENDPOINT}; {_short(connection)}): check the network connection "
            f"(and HF_ENDPOINT or proxy settings){' ' if upload else ''}{check}{tail}"
        )
    for e in chain:
        if isinstance(e, HfHubHTTPError) and _status(e) is not None:
            return f"the Hub answered HTTP {_status(e)} for {what}: {_short(e)}{tail}"
    return None


@contextmanager
def translate_hub_errors(
    repo_id: str | None,
    *,
    repo_type: str = "dataset",
    upload: bool = False,
    hint: str | None = None,
) -> Iterator[None]:
    """Turn a failure to use the Hub inside the block into a :class:`HubUnreachableError` (raised from
    the original, which stays available as ``__cause__``); any other exception passes unchanged."""
    try:
        yield
    except HubUnreachableError:
        raise
    except Exception as err:
        message = hub_error_message(err, repo_id, repo_type=repo_type, upload=upload, hint=hint)
        if message is None:
            raise
        raise HubUnreachableError(message, repo_id) from err


def check_hub_reachable(
    repo_id: str,
    *,
    repo_type: str = "dataset",
    revision: str | None = None,
    hint: str | None = None,
    timeout: float = _PROBE_TIMEOUT_SECONDS,
) -> None:
    """Ask the Hub once, without retries, whether ``repo_id`` can be read; raise HubUnreachableError if not.

    ``datasets`` retries every request for about 20 s, and a stream retries opening each file 20 times
    5 s apart, so a missing network otherwise surfaces minutes later. In offline mode nothing is asked:
    the libraries fail at once there, or use the cache. A server error (5xx, 429) is left to their
    retries, since it may pass.
    """
    if _offline():
        return
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return  # not a repo id (a missing local path, say): the caller's own error says it better
    with translate_hub_errors(repo_id, repo_type=repo_type, hint=hint):
        try:
            HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=timeout)
        except HfHubHTTPError as err:
            if isinstance(err, RepositoryNotFoundError) or _status(err) in (401, 403):
                raise


def check_model_source(name: str | None, option: str) -> None:
    """Fail at once, naming ``option``, when ``name`` is neither a local directory nor a Hub model that can
    be read. transformers' own message for a missing folder is about repo id syntax, and comes after the
    data is loaded."""
    if not name or os.path.isdir(name):
        return
    if os.path.exists(name):
        raise NotADirectoryError(f"{option} {name}: not a directory (a saved model is a folder)")
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise FileNotFoundError(f"{option} {name}: no such model directory") from None
    if name.startswith((".", "~")):
        raise FileNotFoundError(f"{option} {name}: no such model directory")
    if _offline():
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return  # downloaded before: the libraries read it from the cache
        raise HubUnreachableError(
            f"{option} {name}: no such model directory here, and offline mode is on (HF_HUB_OFFLINE), so "
            "it cannot be read from the Hub either",
            name,
        )
    check_hub_reachable(name, repo_type="model", hint="or pass a local model directory")


def _report_and_exit(err: HubUnreachableError) -> None:
    rank = int(os.environ.get("RANK", "0") or 0)
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "recipe"
    if rank != 0:
        # Every rank meets the same Hub; rank 0 reports it, and the launcher stops this rank when rank 0
        # exits. Only a rank whose failure is its own gets past this wait and reports it.
        time.sleep(_OTHER_RANKS_GRACE_SECONDS)
        prog = f"{prog} (rank {rank})"
    print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            # Without it torch warns at exit that the process group leaked; no collective is pending here.
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a failing clean-up must not replace the message just printed
        pass
    sys.exit(RECIPE_EXIT_STATUS)


def start_processes(cpu: bool = False):
    """The recipe's `accelerate.PartialState`, returned once every process has joined the process group.

    A rank that meets an unusable Hub exits at once (`run_recipe`). Without the wait, rank 0 could do so while
    another rank was still connecting to it inside ``init_process_group``, and that rank then failed with
    gloo's "Connection closed by peer" traceback beside rank 0's one line (seen under load)."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    state.wait_for_everyone()
    return state


def run_recipe(main: Callable[[], object]) -> None:
    """Run a recipe's ``main()``: a Hub that cannot be used ends the run with one line on stderr (from
    rank 0 only under ``accelerate launch``) and exit status 2, instead of a traceback per process."""
    try:
        main()
    except HubUnreachableError as err:
        _report_and_exit(err)
