"""A policy as a Hydra spec, so that an engine core in another process can rebuild it.

In process mode ``multiprocess`` (and for a policy given as a spec) the policy travels with
every request as JSON (``SamplingParams.extra_args``): :func:`policy_spec` writes the spec (or
refuses before any engine starts), :func:`instantiate_policy` rebuilds the policy on the
scheduler's side.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping
from typing import Any

from scheduler.policies.base import Policy, check_admission_headroom
from scheduler.policies.fifo import FIFOPolicy


def policy_spec(policy: Policy | Mapping[str, Any]) -> dict[str, Any]:
    """A Hydra spec that rebuilds ``policy`` in another process.

    Accepts a spec directly; a policy that exposes ``spec()`` or ``_spec``; a dataclass
    policy (its init fields). Anything else cannot cross a process boundary without pickling.
    """
    if isinstance(policy, Mapping):
        if "_target_" not in policy:
            raise ValueError(f"policy spec {dict(policy)!r}: expected a '_target_' key")
        return dict(policy)
    spec = _object_spec(policy)
    if "victim" in vars(policy) and "victim" not in spec:  # a rule set on this object
        v = policy.victim
        spec["victim"] = (
            {"_target_": "scheduler.policies.victims.order_key"} if v is None else v.spec()
        )
    # the admission gate: set on this object (a class default such as drift's, or None that
    # turns it off, travels too) or a non-default value
    if "admission_headroom" in vars(policy) or policy.admission_headroom is not None:
        spec["admission_headroom"] = policy.admission_headroom
    return spec


def _object_spec(policy: Policy) -> dict[str, Any]:
    cls = type(policy)
    target = f"{cls.__module__}.{cls.__qualname__}"
    for attr in ("spec", "_spec"):
        s = getattr(policy, attr, None)
        s = s() if callable(s) else s
        if isinstance(s, Mapping) and "_target_" in s:
            return dict(s)
    if dataclasses.is_dataclass(policy):
        fields = {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy) if f.init}
        return {"_target_": target, **fields}
    if cls.__init__ is object.__init__ or not _init_params(cls):
        return {"_target_": target}  # no constructor parameters: nothing can be lost
    raise ValueError(
        f"policy {target}: cannot rebuild it inside a separate engine process; "
        "pass its Hydra spec (a dict with '_target_'), make it a dataclass, or "
        "use engine.process_mode=inprocess"
    )


def _init_params(cls: type) -> list[str]:
    """Constructor parameters (with or without defaults), except self, *args, **kwargs."""
    sig = inspect.signature(cls.__init__)
    return [
        n
        for n, p in sig.parameters.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def instantiate_policy(spec: Mapping[str, Any] | str | None) -> Policy:
    """Build a policy from a Hydra-style spec (dict or its JSON text); ``None`` gives FIFO.

    The engine-core side of ``report.jobs.build_policy``: the spec is rebuilt from the client's
    policy object (``scheduler.live.policy_spec``, paths already absolute) and arrives as
    JSON in a process with no Hydra config, so it is only instantiated and type-checked here."""
    if spec is None:
        return FIFOPolicy()
    if isinstance(spec, str):
        spec = json.loads(spec)
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ValueError(
            f"policy spec {spec!r}: expected a mapping with a '_target_' key "
            "(e.g. {'_target_': 'scheduler.policies.sjf.SJFPolicy'})"
        )
    from hydra.utils import instantiate

    spec = dict(spec)
    victim = spec.pop("victim", None)  # the memory-victim rule (report.config_schema)
    gated = "admission_headroom" in spec  # the admission gate (policies.base)
    headroom = spec.pop("admission_headroom", None)
    policy = instantiate(spec, _convert_="all")
    if victim:
        policy.victim = instantiate(victim)
    if gated:  # None turns a class default (drift's) off
        policy.admission_headroom = check_admission_headroom(headroom)
    if not isinstance(policy, Policy):
        raise TypeError(
            f"policy spec {spec['_target_']!r} built a {type(policy).__name__}; "
            "expected a scheduler.policies.base.Policy"
        )
    return policy
