"""C allocator settings for the node's processes.

Every instance passes through a few buffers of about its own size: the received
PDUs and the assembled data set in the receiving process, the pixel data, its
display copies and the encoded header in a worker. glibc's malloc serves such
sizes from fresh ``mmap`` regions until its adaptive threshold grows, and gives
the top of its heap back to the kernel (``brk``) whenever more than twice that
threshold is free. With one half-megabyte image after another, this returns the
same memory to the kernel and faults it back in, zeroed page by page, for every
image: page faults and ``brk``/``munmap`` were about a fifth of a worker's CPU
time on CT images (bench/throughput.py, perf). Fixed, larger thresholds keep
those buffers in the heap, reused from one image to the next; the cost is at
most :data:`TRIM_THRESHOLD` of free heap kept per process (about 10 MB more
resident memory for the node's processes together in the same bench).
"""

from __future__ import annotations

import ctypes

# mallopt(3) parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Allocations below this come from the heap (glibc's default starts at 128 KiB).
MMAP_THRESHOLD = 8 << 20
# Free memory at the top of the heap above this goes back to the kernel.
TRIM_THRESHOLD = 32 << 20


def tune_allocator() -> bool:
    """Apply the thresholds to this process's malloc; False where the C library
    has no ``mallopt`` (not glibc) or refuses them, which changes nothing else."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
