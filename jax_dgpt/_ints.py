"""The one place static integers (shapes, attributes, options) are checked and normalised.

NOTES: ``128 == np.int32(128)`` and ``True == 1`` hash equal, so JAX's caches could reuse a lowering
made with another attribute type (i32 or bool instead of i64); every primitive parameter, FFI
attribute and integer option passes through here and comes out as a plain Python ``int``. No JAX
import: the heuristics use it and stay pure.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

__all__ = ["static_int"]


def static_int(where: str, name: str, value: Any, *, positive: bool = False, kind: str = "an int") -> int:
    """``value`` as a plain int (anything ``operator.index`` takes, but not a bool).

    Raises TypeError ("<where>: <name> must be <kind>, got <type>") or, with ``positive``,
    ValueError ("<where>: <name> must be positive, got <value>").
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be {kind}, got bool")
    try:
        result = int(operator.index(value))
    except TypeError:
        raise TypeError(f"{where}: {name} must be {kind}, got {type(value).__name__}") from None
    if positive and result <= 0:
        raise ValueError(f"{where}: {name} must be positive, got {result}")
    return result
