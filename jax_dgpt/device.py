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
    none is visible. The value is read when an op is traced: functions already traced or compiled
    keep the value they saw (``jax.jit`` reuses a function's trace for the same input shapes).
    """
    with _lock:
        if _num_sms is not None:
            return _num_sms
    device_count = _device_sm_count()
    return DEFAULT_NUM_SMS if device_count is None else device_count


def set_num_sms(num_sms: int) -> None:
    """Limits the SMs the kernels may use (e.g. to leave SMs to overlapped communication kernels).

    Args:
      num_sms: an int, at least 1 and at most the SM count of the first visible CUDA device (any
        positive value when no CUDA device is visible).

    Applies to ops traced after the call; already traced or compiled functions keep their value.
    """
    global _num_sms
    value = static_int("jax_dgpt.set_num_sms", "num_sms", num_sms)
    device_count = _device_sm_count()
    if value < 1 or (device_count is not None and value > device_count):
        upper = "" if device_count is None else f" and at most the device's {device_count} SMs"
        raise ValueError(f"jax_dgpt.set_num_sms: num_sms must be at least 1{upper}, got {value}")
    with _lock:
        _num_sms = value


def _reset_num_sms() -> None:
    """Forgets a value given to set_num_sms (for tests)."""
    global _num_sms
    with _lock:
        _num_sms = None
