"""Checks on config values read from YAML and command-line overrides.

Workload, paper and trace specs (and ``data.presets``) validate every field when they are
built, so a typo or a string where a number belongs fails at once, naming the field, instead
of deep inside numpy or pandas minutes later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def check_number(
    what: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    integer: bool = False,
    none_ok: bool = False,
    finite: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``what`` unless ``value`` is a number in range.

    Config values arrive from YAML and command-line overrides, so a string ("fast"), a bool,
    NaN or inf must fail here, when the spec is built, not deep inside numpy minutes later.
    """
    if value is None and none_ok:
        return
    kind = "an integer" if integer else "a number"
    bounds = f" > {gt:g}" if gt is not None else (f" >= {ge:g}" if ge is not None else "")
    expected = f"expected {kind}{bounds}" + (" or null" if none_ok else "")
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if ok and integer and not isinstance(value, int | np.integer):
        ok = False  # 2.0 too: a float size would fail later inside numpy
    if ok and math.isnan(value):
        ok = False
    if ok and finite and math.isinf(value):
        ok = False
    if ok and gt is not None and not value > gt:
        ok = False
    if ok and ge is not None and not value >= ge:
        ok = False
    if not ok:
        raise ValueError(f"{what} = {value!r}: {expected}")


def _check_fields(what: str, given: Mapping[str, Any], cls: type) -> None:
    """Unknown keys in a config mapping: a ValueError listing the valid ones (not TypeError)."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; expected some of {sorted(known)}")


def _to_container(cfg: Any) -> dict[str, Any]:
    """A plain dict of a config node: an OmegaConf ``DictConfig`` (interpolations resolved)
    or any mapping, so specs never depend on OmegaConf types."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)
