"""The one Policy interface both engines (simulator and live vLLM) drive.

A policy decides *order only*: which waiting request is admitted next and which running request
is preempted first when memory runs out. It never sees KV blocks or batch composition; those are
the engine's. The contract both engines follow every step:

1. ``on_arrival`` for newly arrived requests (batched), ``on_finish``/``on_abort`` for ended ones;
2. ``on_step(running, waiting, now)`` (batched: predictors run here, never inside ``key``);
3. ``preempt(running, waiting, now)``: running requests the policy wants preempted voluntarily
   (bounded preemption; default none);
4. continue running requests first; admit waiting ones in ascending ``(key, arrival_s, index)``
   order within the token budget, ``max_num_seqs`` and KV blocks, calling ``on_admit``;
5. when KV memory runs out, preempt the running request with the *largest* ``victim_key``
   (recompute; by default the order key, vLLM's priority rule) and report every preemption,
   memory or voluntary, through ``on_preempt``.

``key`` must be cheap and deterministic. If ``dynamic_keys`` is False the key of a waiting
request never changes after ``on_arrival`` (engines may keep a heap); if True engines re-rank the
waiting queue after every ``on_step``.

Optional extensions (defaults keep the contract above; engines may ignore them):

* ``incremental_keys`` (with ``dynamic_keys``): the policy reports waiting requests whose key
  changed through ``take_changed()`` after ``on_step``, so an engine can keep its heap and re-push
  only those (O(changed log n) per step instead of re-sorting the queue).
* ``ranked(waiting, now)``: the waiting queue in admission order; a dynamic policy may override
  it with something faster than sorting by ``key`` (it must agree with ``key`` on the first
  request). Engines use it for dynamic, non-incremental policies.
* ``prepare(requests)``: called once before serving with every request the engine will serve,
  so a policy can batch admission-time work (featurising prompts) over the whole trace. It may
  use admission-time fields only; a policy must also work without it (live arrivals).
* ``victim`` (a :class:`scheduler.policies.victims.VictimRule`, set by the job layer from the
  policy config's ``victim`` node): the memory-victim rule, separate from the admission order.
  ``None`` (the default) keeps vLLM's rule (``victim_key`` = ``key``), so baselines stay
  faithful; a policy may override ``victim_key`` itself.
* ``admission_headroom`` (a fraction, or ``None``): the admission gate. ``None`` (the default)
  is vLLM's rule: a waiting request is admitted whenever blocks for its sequence are free. A
  fraction ``f`` makes the engine also keep ``f x`` the running (and just-admitted) requests'
  expected remaining output tokens free (``victims.expected_remaining``: the policy's own
  estimates), so requests are not admitted into memory their neighbours are about to need:
  fewer memory preemptions and less recompute. Both engines implement it (the live adapter
  holds such requests out of vLLM's waiting heap for the step): the shape of an
  admission-control hook in a scheduler plugin (RFC #51608).
* ``fast_forward_horizon(running, waiting, now)``: for how many engine steps, counting the
  current one, the policy's decisions stay valid while nothing happens but decode progress
  (+1 token per running request per step) and time (no arrival, finish, admission or
  preemption). The simulator may then skip ``on_step``/``preempt`` for the remaining steps and
  simulate them in bulk (decode fast-forward). Default: 1 (call the hooks every step) for a
  policy that uses ``on_step`` or overrides ``preempt``, unbounded otherwise.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import ClassVar

from scheduler.policies.victims import VictimRule
from scheduler.request import SchedRequest


def check_admission_headroom(value: object) -> float | None:
    """A policy's ``admission_headroom`` checked: ``None`` (vLLM's rule) or a number >= 0 (a
    fraction of the running requests' expected remaining tokens kept free at admission)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(
            f"policy.admission_headroom {value!r}: expected a number >= 0 (e.g. 0.05: keep 5% "
            "of the running requests' expected remaining tokens free), or null (vLLM's rule)"
        )
    return float(value)


class Policy(ABC):
    name: ClassVar[str] = "base"
    # the memory-victim rule (module doc); an instance's is set by report.jobs.build_policy
    victim: VictimRule | None = None
    # the admission gate (module doc): None = vLLM's rule
    admission_headroom: float | None = None
    dynamic_keys: ClassVar[bool] = False
    # True when the policy overrides on_step (engines skip the call otherwise: it is per step)
    uses_step_hook: ClassVar[bool] = False
    # True when a dynamic policy reports changed keys through take_changed() (see module doc)
    incremental_keys: ClassVar[bool] = False

    def prepare(self, requests: Sequence[SchedRequest]) -> None:  # noqa: B027
        """Optional: batch admission-time work over every request before serving starts."""

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:  # noqa: B027
        """New requests entered the waiting queue (batched)."""

    def on_admit(self, requests: Sequence[SchedRequest], now: float) -> None:  # noqa: B027
        """Requests were scheduled from the waiting queue (first admission or re-admission)."""

    def on_step(  # noqa: B027
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> None:
        """Called once per engine step before ordering (re-prediction goes here)."""

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:  # noqa: B027
        """Requests finished (batched): online calibration updates go here."""

    def on_abort(self, requests: Sequence[SchedRequest], now: float) -> None:  # noqa: B027
        """Requests were aborted: drop any per-request state."""

    def on_preempt(self, requests: Sequence[SchedRequest], now: float) -> None:  # noqa: B027
        """The engine preempted these running requests (for memory, or because ``preempt``
        asked; batched): their KV is dropped and they wait again (``status`` WAITING,
        ``num_computed_tokens`` 0, ``num_preemptions`` counted). Engines call it for every
        preemption, so a policy never infers one from the running set's size."""

    @abstractmethod
    def key(self, request: SchedRequest, now: float) -> float:
        """Ordering key: lower is served sooner; the largest running key is preempted first."""

    def victim_key(self, request: SchedRequest, now: float) -> float:
        """Memory-victim key of a running request: the largest ``(victim_key, arrival_s,
        index)`` is preempted first when KV blocks run out. The ``victim`` rule's, else the
        order key (vLLM's priority rule)."""
        v = self.victim
        return self.key(request, now) if v is None else v.victim_key(request, now)

    def preempt(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> list[SchedRequest]:
        """Running requests to preempt voluntarily this step (default: none)."""
        return []

    def take_changed(self) -> Sequence[SchedRequest]:
        """Waiting requests whose key changed since the last call (``incremental_keys``)."""
        return ()

    def ranked(self, waiting: Sequence[SchedRequest], now: float) -> Iterable[SchedRequest]:
        """The waiting queue in admission order (ascending ``(key, arrival_s, index)``)."""
        key = self.key
        return sorted(waiting, key=lambda r: (key(r, now), r.arrival_s, r.index))

    def fast_forward_horizon(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> float:
        """Steps (>= 1, counting this one) for which this step's hook decisions stay valid if
        only decode progress and time change (see the module doc). Returns ``math.inf`` when
        the policy has no per-step hooks, else 1 (no skipping)."""
        if self.uses_step_hook or type(self).preempt is not Policy.preempt:
            return 1
        return math.inf

    def describe(self) -> dict[str, object]:
        """Flat parameters for logs and summaries."""
        return {"policy": self.name}
