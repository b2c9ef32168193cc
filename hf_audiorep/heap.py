"""Give the C heap's freed pages back to the system during long streamed work.

Tagging an hour-long file allocates and frees the same few megabytes per batch of windows thousands of
times. glibc's malloc raises its mmap threshold after the first large block is freed, so later blocks
come from the heap, and the freed chunks there are kept, not returned: the process's resident memory
grows with the length of the file although the live data does not (docs/benchmarks.md, "Long files").
``malloc_trim`` returns them. Elsewhere (macOS, musl, Windows) there is no such call and nothing to do.
"""

import ctypes
import ctypes.util
import functools

__all__ = ["release_freed_memory"]


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system (glibc's ``malloc_trim(0)``); False where unsupported."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
