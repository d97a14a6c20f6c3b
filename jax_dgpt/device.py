"""The CUDA devices JAX sees, and the SM count the kernels may use (set_num_sms, get_num_sms)."""

from __future__ import annotations

import functools
import threading

import jax

from ._ints import static_int

__all__ = [
    "DEFAULT_NUM_SMS",
    "REQUIRED_COMPUTE_CAPABILITY",
    "check_cuda_devices",
    "cuda_devices",
    "get_num_sms",
    "set_num_sms",
]

# NOTES: an H100 SXM has 132 SMs. Using it when no CUDA device is visible makes a CUDA lowering on a
# CPU machine (tests, export) deterministic and equal to what the H100 would pick by default.
DEFAULT_NUM_SMS = 132
REQUIRED_COMPUTE_CAPABILITY = "9.0"

_lock = threading.Lock()
_num_sms: int | None = None  # None: not set by the user, use the device's count


@functools.cache
def cuda_devices() -> tuple[jax.Device, ...]:
    """The CUDA devices visible to JAX; empty without a CUDA backend or without a GPU."""
    try:
        return tuple(jax.devices("cuda"))
    except RuntimeError:  # "Unknown backend cuda" / "Backend 'cuda' failed to initialize"
        return ()


def _device_sm_count() -> int | None:
    devices = cuda_devices()
    if not devices:
        return None
    return int(devices[0].core_count)


def check_cuda_devices() -> None:
    """Raises RuntimeError if a visible CUDA device is not an sm_90 (Hopper) GPU.

    Called by the CUDA lowering, so a program meant for a GPU the kernels cannot run on fails at
    compile time with a clear message instead of at launch.
    """
    for device in cuda_devices():
        capability = str(getattr(device, "compute_capability", "unknown"))
        if capability != REQUIRED_COMPUTE_CAPABILITY:
            raise RuntimeError(
                f"jax_dgpt kernels need an sm_90a (Hopper) GPU; device {device} "
                f"({device.device_kind}) has compute capability {capability}"
            )


def get_num_sms() -> int:
    """The number of SMs the kernels' persistent grid may use.

    Defaults to the ``core_count`` of the first visible CUDA device, or to 132 (an H100 SXM) when
    none is visible. The value is read when an op is traced; :func:`set_num_sms` clears JAX's caches
    so that every function is traced again, with the new value, at its next call.
    """
    with _lock:
        if _num_sms is not None:
            return _num_sms
    device_count = _device_sm_count()
    return DEFAULT_NUM_SMS if device_count is None else device_count


def _max_grid_size() -> int:
    """The largest persistent grid the kernels take (``max_grid_size`` of the extension's limits)."""
    from . import _native  # NOTES: at call time: the extension is loaded by the package's import

    return int(_native.load().limits()["max_grid_size"])


def set_num_sms(num_sms: int) -> None:
    """Limits the SMs the kernels may use (e.g. to leave SMs to overlapped communication kernels).

    Args:
      num_sms: an int, at least 1 and at most the SM count of the first visible CUDA device; when no
        CUDA device is visible (a CUDA lowering on a CPU machine), at most the kernels' largest
        persistent grid (``jax_dgpt._native.load().limits()["max_grid_size"]``).

    Applies to every op traced after the call. Since ``jax.jit`` caches a function's trace (a
    ``jax.jit(jax_dgpt.gemm)`` created again would otherwise reuse the trace made with the old
    value), this calls :func:`jax.clear_caches`: every jitted function, also one created before
    the call, is traced and compiled again at its next call and sees the new value. Only programs
    compiled ahead of time (``.lower(...).compile()``, or exported) keep the value they were
    compiled with. Call it once at start-up: clearing the caches recompiles everything.

    Raises:
      TypeError: num_sms is not an int (bools and floats are rejected).
      ValueError: num_sms is out of range; the value in use stays unchanged.
    """
    global _num_sms
    value = static_int("jax_dgpt.set_num_sms", "num_sms", num_sms)
    device_count = _device_sm_count()
    if device_count is not None:
        upper, where = device_count, f"the device's {device_count} SMs"
    else:
        upper = _max_grid_size()
        where = f"the kernels' largest persistent grid, {upper} CTAs (no CUDA device is visible)"
    if not 1 <= value <= upper:
        raise ValueError(f"jax_dgpt.set_num_sms: num_sms must be at least 1 and at most {where}, got {value}")
    with _lock:
        changed = _num_sms != value
        _num_sms = value
    if changed:
        jax.clear_caches()


def _reset_num_sms() -> None:
    """Forgets a value given to set_num_sms (for tests)."""
    global _num_sms
    with _lock:
        changed = _num_sms is not None
        _num_sms = None
    if changed:
        jax.clear_caches()
