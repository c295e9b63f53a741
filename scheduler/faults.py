"""Fault injection and the predictor deadline guard (issue 9 part 5; docs/RELIABILITY.md).

Three kinds of faults, each a small plan object built from config (``+faults=<name>``,
``conf/faults/*.yaml``) and validated before any work starts:

* :class:`PredictorFaults` -> :class:`FaultyPredictor`: wraps the serving predictor behind a
  learned policy (``policy.lengths.predictor``) and makes chosen calls raise, return NaN/inf,
  or sleep (a slow predictor). Works in both engines;
* :class:`ClientFaults`: the live replay client aborts a seeded random share of requests
  through the engine's abort API (after a random number of tokens or a random time after
  submission, so some are still waiting) and disconnects others (the consumer walks away
  mid-stream; vLLM's ``AsyncLLM`` aborts them on the close). Live engine only;
* :class:`EngineFaults`: the live scheduler raises :class:`InjectedEngineFault` inside the engine
  step ``die_at_step`` (the engine core dies: the in-process ``LLMEngine.step`` raises, a
  separate engine-core process exits and the client sees vLLM's ``EngineDeadError``).

The guard, :class:`GuardedLengths`, is not a fault: it is the production defence against a
slow predictor. It wraps a policy's :class:`~scheduler.policies.estimates.LearnedLengths` and
runs every admission / re-prediction call on one worker thread with a deadline
(``deadline_ms``). A call that misses it returns the fallback estimates (a calibrated heuristic
of finished lengths) at once, and the predictor is backed off for ``backoff_s`` (doubling on each
consecutive miss, up to ``max_backoff_s``) and while the late call is still running; then it is
probed again. So an engine step never waits for the predictor longer than the deadline. All
predictor state is touched by the worker thread only (calls are serialised on it), the fallback
by the calling thread only. Counts: :meth:`GuardedLengths.stats`, reported in ``summary.json``
(``predictor_guard``) and the live engine's scheduler summary.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduler.request import SchedRequest

log = logging.getLogger("driftsched.faults")

PREDICTOR_MODES = ("raise", "nan", "inf", "slow")
PREDICTOR_METHODS = ("featurize", "predict_admission", "predict_remaining")


class InjectedFault(RuntimeError):
    """An error raised on purpose by the fault-injection facility."""


class InjectedEngineFault(InjectedFault):
    """The live engine's scheduler was told to die (``EngineFaults.die_at_step``)."""


def _bad(where: str, name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{where}: {name}={value!r}: expected {expected} (conf/faults/*.yaml)")


def _from_mapping(cls: type, cfg: Mapping[str, Any] | None, where: str) -> Any:
    if cfg is None:
        return None
    if isinstance(cfg, cls):
        return cfg
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields, got {cfg!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    obj = cls(**dict(cfg))
    obj.validate()
    return obj


# ------------------------------------------------------------------------- predictor faults
@dataclass
class PredictorFaults:
    """Which predictor calls fail, and how."""

    mode: str = "raise"  # raise | nan | inf | slow
    methods: tuple[str, ...] = ("predict_admission", "predict_remaining")
    after_calls: int = 0  # the first N calls (of the chosen methods) are healthy
    every: int = 1  # then every k-th call faults
    max_faults: int | None = None  # stop injecting after this many (None: never stop)
    delay_s: float = 0.5  # slow mode: extra latency per faulty call (s)

    def validate(self) -> None:
        w = "faults.predictor"
        if self.mode not in PREDICTOR_MODES:
            raise _bad(w, "mode", self.mode, f"one of {PREDICTOR_MODES}")
        self.methods = tuple(self.methods)
        bad = [m for m in self.methods if m not in PREDICTOR_METHODS]
        if bad or not self.methods:
            raise _bad(
                w, "methods", list(self.methods), f"a non-empty subset of {PREDICTOR_METHODS}"
            )
        if not isinstance(self.after_calls, int) or self.after_calls < 0:
            raise _bad(w, "after_calls", self.after_calls, "an integer >= 0")
        if not isinstance(self.every, int) or self.every < 1:
            raise _bad(w, "every", self.every, "an integer >= 1")
        if self.max_faults is not None and (
            not isinstance(self.max_faults, int) or self.max_faults < 0
        ):
            raise _bad(w, "max_faults", self.max_faults, "null or an integer >= 0")
        if not (isinstance(self.delay_s, int | float) and 0 <= self.delay_s < math.inf):
            raise _bad(w, "delay_s", self.delay_s, "seconds >= 0")


class FaultyPredictor:
    """A serving predictor whose chosen calls raise, return NaN/inf or are slow.

    Delegates everything else to ``inner`` (``has_drift``, ``drift``, ``describe``, ...).
    ``injected`` counts the faults by method; ``calls`` the calls of the chosen methods.
    """

    def __init__(self, inner: Any, faults: PredictorFaults) -> None:
        self.inner = inner
        self.faults = faults
        self.calls = 0
        self.injected: dict[str, int] = {}
        self._lock = threading.Lock()  # calls may come from the guard's worker thread

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    def _should_fault(self, method: str) -> bool:
        f = self.faults
        if method not in f.methods:
            return False
        with self._lock:
            self.calls += 1
            k = self.calls - f.after_calls
            n = sum(self.injected.values())
            if k < 1 or (k - 1) % f.every or (f.max_faults is not None and n >= f.max_faults):
                return False
            self.injected[method] = self.injected.get(method, 0) + 1
            return True

    def _call(self, method: str, *args: Any) -> Any:
        fault = self._should_fault(method)
        mode = self.faults.mode
        if fault and mode == "raise":
            raise InjectedFault(f"injected predictor failure in {method}")
        if fault and mode == "slow":
            time.sleep(self.faults.delay_s)
        out = getattr(self.inner, method)(*args)
        if fault and mode in ("nan", "inf"):
            out = np.array(out, dtype=np.float64, copy=True)
            out.flat[:: max(1, out.size // 2 or 1)] = math.nan if mode == "nan" else math.inf
        return out

    def featurize(self, rows: Any) -> Any:
        return self._call("featurize", rows)

    def predict_admission(self, X: Any) -> Any:
        return self._call("predict_admission", X)

    def predict_remaining(self, X: Any, admission: Any, generated: Any, *rest: Any) -> Any:
        # rest: optional partial output texts (drift models that read text)
        return self._call("predict_remaining", X, admission, generated, *rest)

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.faults.mode,
            "calls": self.calls,
            "injected": sum(self.injected.values()),
            "injected_by_method": dict(self.injected),
        }


# ------------------------------------------------------------------------- the deadline guard
@dataclass
class GuardConfig:
    """The predictor deadline guard (``predictor_guard`` in the evaluate config)."""

    deadline_ms: float = 50.0  # longest an engine step waits for one predictor call
    backoff_s: float = 1.0  # first back-off after a missed deadline (s)
    max_backoff_s: float = 30.0  # back-off doubles per consecutive miss, up to this

    def validate(self) -> None:
        w = "predictor_guard"
        for name in ("deadline_ms", "backoff_s", "max_backoff_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
                raise _bad(w, name, v, "a finite number > 0")
        if self.max_backoff_s < self.backoff_s:
            raise _bad(w, "max_backoff_s", self.max_backoff_s, f">= backoff_s ({self.backoff_s})")


class GuardedLengths:
    """``LearnedLengths`` behind a deadline, with a back-off and fallback (module docstring).

    Drop-in for the policy's ``lengths`` attribute: ``featurize`` (called before serving, by
    ``prepare``: not on the engine step, so it runs without a deadline), ``admission``,
    ``remaining``, ``observe``, ``failed``, ``has_drift``.
    """

    def __init__(self, inner: Any, config: GuardConfig | None = None, clock=time.monotonic) -> None:
        from scheduler.policies.estimates import CalibratedHeuristic

        self.inner = inner
        self.config = config or GuardConfig()
        self.fallback = CalibratedHeuristic()  # caller thread only (inner's is the worker's)
        self._clock = clock
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftsched-pred")
        self._inflight: cf.Future | None = None  # the last deadline-bound call
        self._open_until = -math.inf  # back-off: the predictor is not asked before this
        self._misses = 0  # consecutive missed deadlines
        self.counts: dict[str, int] = {
            "calls": 0,  # admission + remaining calls
            "predictor": 0,  # answered by the predictor in time
            "timeouts": 0,  # missed the deadline
            "skipped_backoff": 0,  # not asked: backing off
            "skipped_busy": 0,  # not asked: a late call still running
            "errors": 0,  # the guarded call itself raised (LearnedLengths catches its own)
            "fallback_calls": 0,  # not the predictor's (timeouts + skipped + errors + degraded)
            "fallback_requests": 0,  # requests that got fallback estimates
            "late_results": 0,  # late calls that finished in the background (discarded)
            "degraded": 0,  # answered in time by LearnedLengths' own heuristic (after a raise/NaN)
        }
        self.max_wait_ms = 0.0  # longest a caller waited for the predictor

    # -- the LearnedLengths surface --------------------------------------------------------
    @property
    def failed(self) -> str | None:
        return self.inner.failed

    @property
    def has_drift(self) -> bool:
        return self.inner.has_drift

    @property
    def heuristic(self) -> Any:
        return self.fallback

    def featurize(self, requests: Sequence[SchedRequest]) -> None:
        self._sync(lambda: self.inner.featurize(requests))

    def admission(self, requests: Sequence[SchedRequest]) -> np.ndarray:
        return self._guarded(
            lambda: self.inner.admission(requests),
            lambda: self.fallback.admission(requests),
            len(requests),
        )

    def remaining(self, requests: Sequence[SchedRequest], admission: np.ndarray) -> np.ndarray:
        def call() -> np.ndarray:
            # a request whose admission estimate came from the fallback was never featurised
            self.inner.featurize(requests)
            return self.inner.remaining(requests, admission)

        gen = np.array([r.num_output_tokens for r in requests], dtype=np.float64)
        return self._guarded(call, lambda: self.fallback.remaining(requests, gen), len(requests))

    def observe(self, requests: Sequence[SchedRequest]) -> None:
        self.fallback.observe(requests)
        reqs = list(requests)
        self._pool.submit(self._quiet, lambda: self.inner.observe(reqs))  # never waited for

    def observe_running(self, requests: Sequence[SchedRequest]) -> None:
        """Running requests' attained service, for the inner online learner (background)."""
        fn = getattr(self.inner, "observe_running", None)
        if fn is not None:
            # the token counts are read now: the engine keeps advancing them
            reqs = list(requests)
            got = [r.num_output_tokens for r in reqs]
            self._pool.submit(self._quiet, lambda: fn(reqs, got))

    def recent_error(self) -> float:
        """The inner estimator's recent admission error (NaN when it has none)."""
        fn = getattr(self.inner, "recent_error", None)
        return math.nan if fn is None else float(fn())

    def forget(self, requests: Sequence[SchedRequest]) -> None:
        """Drop per-request predictor state (aborted requests), when the inner one can."""
        fn = getattr(self.inner, "forget", None)
        if fn is not None:
            reqs = list(requests)
            self._pool.submit(self._quiet, lambda: fn(reqs))

    # -- machinery --------------------------------------------------------------------------
    @staticmethod
    def _quiet(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:  # background bookkeeping; LearnedLengths logs its own
            log.exception("driftsched: predictor bookkeeping failed in the background")

    def _sync(self, fn: Callable[[], Any]) -> Any:
        return self._pool.submit(fn).result()

    def _guarded(self, call: Callable[[], Any], fallback: Callable[[], Any], n: int) -> Any:
        c = self.counts
        c["calls"] += 1
        now = self._clock()
        reason = None
        if self._inflight is not None and not self._inflight.done():
            reason = "skipped_busy"
        elif now < self._open_until:
            reason = "skipped_backoff"
        if reason is None:
            fut = self._pool.submit(call)
            t = time.monotonic()
            try:
                out = fut.result(timeout=self.config.deadline_ms / 1000.0)
            except cf.TimeoutError:
                self._inflight = fut
                fut.add_done_callback(self._late)
                self._misses += 1
                back = min(
                    self.config.backoff_s * 2 ** (self._misses - 1), self.config.max_backoff_s
                )
                self._open_until = self._clock() + back
                reason = "timeouts"
                if c["timeouts"] == 0:
                    log.warning(
                        "driftsched: predictor missed its %.0f ms deadline; serving fallback "
                        "estimates and backing off %.1f s (doubling per consecutive miss). "
                        "Further misses are counted, not logged.",
                        self.config.deadline_ms,
                        back,
                    )
            except Exception as e:  # any failure degrades to the fallback
                reason = "errors"
                if c["errors"] == 0:
                    log.warning("driftsched: guarded predictor call raised %r; fallback", e)
            else:
                self._misses = 0
                if self.inner.failed is None:
                    c["predictor"] += 1
                else:  # LearnedLengths caught a raise/NaN and answered with its heuristic
                    c["degraded"] += 1
                    c["fallback_calls"] += 1
                    c["fallback_requests"] += n
                return out
            finally:
                self.max_wait_ms = max(self.max_wait_ms, (time.monotonic() - t) * 1e3)
        c[reason] += 1
        c["fallback_calls"] += 1
        c["fallback_requests"] += n
        return fallback()

    def _late(self, fut: cf.Future) -> None:
        self.counts["late_results"] += 1

    def stats(self) -> dict[str, Any]:
        return {
            **self.counts,
            "deadline_ms": self.config.deadline_ms,
            "max_wait_ms": round(self.max_wait_ms, 3),
            "predictor_failed": self.inner.failed,
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------- client and engine
@dataclass
class ClientFaults:
    """What the live replay client does wrong (seeded; docs/RELIABILITY.md)."""

    abort_fraction: float = 0.0  # share of requests the client aborts (engine abort API)
    disconnect_fraction: float = 0.0  # share whose consumer walks away mid-stream
    max_delay_s: float = 2.0  # time-triggered aborts: uniform in [0, max_delay_s] after submit
    time_share: float = 0.5  # share of aborts triggered by time (the rest: after k tokens)
    seed: int = 0

    def validate(self) -> None:
        w = "faults.client"
        for name in ("abort_fraction", "disconnect_fraction", "time_share"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
                raise _bad(w, name, v, "a fraction in [0, 1]")
        if self.abort_fraction + self.disconnect_fraction > 1:
            raise _bad(
                w,
                "abort_fraction + disconnect_fraction",
                self.abort_fraction + self.disconnect_fraction,
                "at most 1",
            )
        if not (isinstance(self.max_delay_s, int | float) and 0 <= self.max_delay_s < math.inf):
            raise _bad(w, "max_delay_s", self.max_delay_s, "seconds >= 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise _bad(w, "seed", self.seed, "an integer >= 0")


@dataclass
class ClientAction:
    """One request's scheduled misbehaviour: abort (or disconnect) at a token count or time."""

    kind: str  # "abort" | "disconnect"
    after_tokens: int | None = None  # once this many tokens have arrived
    after_s: float | None = None  # or this long after submission (s)


def plan_client_faults(
    faults: ClientFaults | None, request_ids: Sequence[str], target_tokens: Sequence[int]
) -> dict[str, ClientAction]:
    """Seeded per-request actions (request id -> action); requests not listed behave."""
    if faults is None or not request_ids:
        return {}
    n = len(request_ids)
    rng = np.random.default_rng(faults.seed)
    n_ab = round(faults.abort_fraction * n)
    n_dc = min(n - n_ab, round(faults.disconnect_fraction * n))
    pick = rng.permutation(n)
    out: dict[str, ClientAction] = {}
    for j, i in enumerate(pick[: n_ab + n_dc]):
        kind = "abort" if j < n_ab else "disconnect"
        tgt = max(1, int(target_tokens[i]))
        if kind == "abort" and rng.random() < faults.time_share:
            out[request_ids[i]] = ClientAction(
                kind, after_s=float(rng.uniform(0, faults.max_delay_s))
            )
        else:  # mid-stream: after 1..target-1 tokens (at the first token when target is 1)
            out[request_ids[i]] = ClientAction(kind, after_tokens=int(rng.integers(1, max(tgt, 2))))
    return out


@dataclass
class EngineFaults:
    """The live engine dies: the scheduler raises inside step ``die_at_step`` (0-based)."""

    die_at_step: int | None = None

    def validate(self) -> None:
        v = self.die_at_step
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise _bad("faults.engine", "die_at_step", v, "null or an integer >= 0")

    def check(self, step: int) -> None:
        """Called by the live scheduler at the start of every step."""
        if self.die_at_step is not None and step == self.die_at_step:
            raise InjectedEngineFault(
                f"injected engine failure: the scheduler died in engine step {step} "
                "(faults.engine.die_at_step)"
            )


# ------------------------------------------------------------------------- the plan
@dataclass
class FaultPlan:
    """Everything ``+faults=<name>`` asks for; validated before any engine starts."""

    predictor: PredictorFaults | None = None
    client: ClientFaults | None = None
    engine: EngineFaults | None = None
    name: str = ""  # for summaries

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> FaultPlan | None:
        if cfg is None:
            return None
        if not isinstance(cfg, Mapping):
            raise ValueError(f"faults: expected a mapping, got {cfg!r} (conf/faults/*.yaml)")
        known = {"predictor", "client", "engine", "name"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(
                f"faults: unknown key(s) {unknown}; expected some of {sorted(known)} "
                "(conf/faults/*.yaml)"
            )
        plan = cls(
            predictor=_from_mapping(PredictorFaults, cfg.get("predictor"), "faults.predictor"),
            client=_from_mapping(ClientFaults, cfg.get("client"), "faults.client"),
            engine=_from_mapping(EngineFaults, cfg.get("engine"), "faults.engine"),
            name=str(cfg.get("name") or ""),
        )
        return plan

    @property
    def live_only(self) -> bool:
        return self.client is not None or self.engine is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)
            for k, v in (
                ("name", self.name),
                ("predictor", self.predictor),
                ("client", self.client),
                ("engine", self.engine),
            )
            if v is not None
        }


def inject_predictor_faults(policy: Any, faults: PredictorFaults) -> FaultyPredictor:
    """Wrap the serving predictor of a learned policy (``policy.lengths.predictor``)."""
    lengths = getattr(policy, "lengths", None)
    inner = getattr(lengths, "inner", lengths)  # through a GuardedLengths
    if inner is None or not hasattr(inner, "predictor"):
        raise ValueError(
            f"faults.predictor: policy {getattr(policy, 'name', policy)!r} has no learned "
            "predictor to inject faults into; use a learned policy (+policy=drift or sjf)"
        )
    fp = FaultyPredictor(inner.predictor, faults)
    inner.predictor = fp
    return fp


def guard_policy(policy: Any, config: GuardConfig) -> GuardedLengths | None:
    """Put a learned policy's predictor behind the deadline guard; None for other policies."""
    lengths = getattr(policy, "lengths", None)
    if lengths is None or not hasattr(lengths, "admission"):
        return None
    if isinstance(lengths, GuardedLengths):
        return lengths
    g = GuardedLengths(lengths, config)
    policy.lengths = g
    return g


def predictor_health(policy: Any) -> dict[str, Any] | None:
    """Fault and fallback counts of a policy's predictor (guard, injected faults, failure)."""
    lengths = getattr(policy, "lengths", None)
    if lengths is None:
        return None
    out: dict[str, Any] = {"predictor_failed": getattr(lengths, "failed", None)}
    if isinstance(lengths, GuardedLengths):
        out["guard"] = lengths.stats()
    inner = getattr(lengths, "inner", lengths)
    fp = getattr(inner, "predictor", None)
    if isinstance(fp, FaultyPredictor):
        out["injected"] = fp.stats()
    return out


def guard_config(cfg: Mapping[str, Any] | None) -> GuardConfig | None:
    return _from_mapping(GuardConfig, cfg, "predictor_guard")


__all__ = [
    "ClientAction",
    "ClientFaults",
    "EngineFaults",
    "FaultPlan",
    "FaultyPredictor",
    "GuardConfig",
    "GuardedLengths",
    "InjectedEngineFault",
    "InjectedFault",
    "PredictorFaults",
    "guard_config",
    "guard_policy",
    "inject_predictor_faults",
    "plan_client_faults",
    "predictor_health",
]
