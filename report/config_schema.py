"""Typed schemas for the ``policy`` and ``engine`` config groups: one definition per knob.

Every parameter of a policy or engine is declared once, in its class: the keyword arguments of
``__init__`` (a class whose ``__init__`` takes ``**kwargs`` names its dataclass in a ``Config``
attribute, as ``VllmEngine`` does). :func:`register` turns each ``conf/<group>/<name>.yaml`` that
names a ``_target_`` into a structured config stored in Hydra's ConfigStore as
``schema/<group>/<name>``, and each such YAML starts its defaults list with it::

    defaults:
      - /schema/policy/drift@_here_   # every knob of DriftPolicy, with its default
      - _self_
    _target_: scheduler.policies.drift.DriftPolicy
    predictor_dir: ${predictor_dir}   # only what differs from the class's defaults

so the YAML holds only what differs from the class (interpolations, a preset's own values), a key
that is not a parameter (a typo, a removed knob) is an error when the config is composed, and
``python evaluate.py +policy=drift --cfg job`` still lists every knob with its value.

Field types: ``bool`` and ``str`` parameters are typed (OmegaConf validates overrides); numbers
and containers are ``Any`` so a value keeps the exact type it is given (an int stays an int: run
configs and summaries stay identical to before the schemas).
"""

from __future__ import annotations

import dataclasses
import inspect
import pydoc
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("policy", "engine")
_REGISTERED = False


def _field_type(annotation: Any) -> Any:
    """bool / str (optionally None) stay typed; everything else is Any (see module docstring)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and inner[0] in (bool, str):
            return inner[0] | None
        return Any
    return annotation if annotation in (bool, str) else Any


def _default(value: Any) -> dataclasses.Field:
    if value is inspect.Parameter.empty:
        return dataclasses.field()  # required: OmegaConf reports it as missing
    if isinstance(value, tuple | list):
        return dataclasses.field(default_factory=lambda v=list(value): list(v))
    if isinstance(value, Mapping):  # (a read-only mapping default too: a plain dict node)
        return dataclasses.field(default_factory=lambda v=dict(value): dict(v))
    return dataclasses.field(default=value)


def parameters(cls: type) -> list[tuple[str, Any, Any]]:
    """(name, annotation, default) of every knob of ``cls`` (``__init__`` keywords, or the
    fields of its ``Config`` dataclass when ``__init__`` takes ``**kwargs``)."""
    config = getattr(cls, "Config", None)
    if config is not None and dataclasses.is_dataclass(config):
        hints = typing.get_type_hints(config)
        return [
            (
                f.name,
                hints.get(f.name, Any),
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default,
            )
            for f in dataclasses.fields(config)
        ]
    init = cls.__init__
    if init is object.__init__:
        return []
    hints = typing.get_type_hints(init)
    out = []
    for name, p in inspect.signature(init).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = p.default
        if default is dataclasses.MISSING:
            default = inspect.Parameter.empty
        out.append((name, hints.get(name, Any), default))
    return out


# Knobs every policy has beside its class's own: ``victim``, the memory-victim rule
# (``scheduler.policies.victims``), a node with a ``_target_`` that ``report.jobs.build_policy``
# instantiates and sets as ``policy.victim``; null keeps the class's default (vLLM's rule, the
# order key, for every policy but drift). Select one with ``+victim@policy.victim=cost_aware``
# (``conf/victim/``: cost_aware, least_computed, order_key).
POLICY_KNOBS: tuple[tuple[str, Any, dataclasses.Field], ...] = (
    ("victim", Any, dataclasses.field(default=None)),
)


def schema(target: str, extra: tuple[tuple[str, Any, dataclasses.Field], ...] = ()) -> type:
    """A dataclass with ``_target_``, one field per knob of the class ``target`` names, and
    the ``extra`` fields (:data:`POLICY_KNOBS` for policies)."""
    cls = pydoc.locate(target)
    if not isinstance(cls, type):
        raise ValueError(f"_target_ {target!r}: not an importable class")
    fields: list[tuple[str, Any, dataclasses.Field]] = [
        ("_target_", str, dataclasses.field(default=target)),
        *extra,
    ]
    for name, annotation, default in parameters(cls):
        fields.append((name, _field_type(annotation), _default(default)))
    required = [f for f in fields if f[2].default is dataclasses.MISSING and _no_factory(f[2])]
    optional = [f for f in fields if f not in required]
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", [*required, *optional])


def _no_factory(f: dataclasses.Field) -> bool:
    return f.default_factory is dataclasses.MISSING  # type: ignore[misc]


def _target_of(path: Path) -> str | None:
    import yaml

    doc = yaml.safe_load(path.read_text()) or {}
    target = doc.get("_target_") if isinstance(doc, dict) else None
    return str(target) if target is not None else None


def register(conf_dir: Path = CONF_DIR) -> None:
    """Store ``schema/<group>/<name>`` for every ``conf/<group>/<name>.yaml`` with a
    ``_target_`` (idempotent; call before composing: ``report.jobs.compose`` and
    ``evaluate.py`` do)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group in GROUPS:
        for path in sorted((conf_dir / group).glob("*.yaml")):
            target = _target_of(path)
            if target is not None:
                extra = POLICY_KNOBS if group == "policy" else ()
                cs.store(group=f"schema/{group}", name=path.stem, node=schema(target, extra))
    _REGISTERED = True
