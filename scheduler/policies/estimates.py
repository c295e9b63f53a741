"""Output-length estimates for the learned policies (``sjf``, ``drift``).

:class:`LearnedLengths` wraps ``predictor.serving`` (admission p50/p90, remaining p50/p90 given
the tokens generated so far) with an online recalibration (``predictor.online``) and a safety
net: if the predictor raises or returns NaN/inf, it logs once and every later call uses
:class:`CalibratedHeuristic`, an online empirical model of the lengths of finished requests.
Missing artifacts are not a runtime failure but a setup error: they raise at construction with
the command that trains them (``python train.py``).

``LearnedLengths(online=...)`` (off by default: then every result is what it was before)
turns on :class:`predictor.online.OnlineLevels`, additive log-length corrections per
generator, tenant and category learned while serving, from completions (``observe``) and from
running requests' attained service (``observe_running``: censored, "length > g"). It replaces
the per-(tenant, category) recalibration. ``recent_error()`` is the median absolute log error
of the admission p50 over recent completions, for a policy that wants to know how far to trust
the estimates (with or without the online learner).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scheduler.request import SchedRequest

log = logging.getLogger(__name__)


class CalibratedHeuristic:
    """Quantiles of output length from finished requests of the same category (else all).

    Admission: (p50, p90) of the last ``window`` finished lengths of the category. Remaining
    given ``g`` tokens generated: (p50, p90) of ``L - g`` over history lengths ``L > g``
    (conditioning on survival, which is what makes long-running requests look longer). Before
    enough history exists, a prior (``prior_p50``, ``prior_p90``) and, past it, a Lindy rule
    (remaining ~ generated) are used.
    """

    def __init__(
        self,
        prior_p50: float = 256.0,
        prior_p90: float = 1024.0,
        window: int = 512,
        min_count: int = 16,
    ) -> None:
        self.prior = (float(prior_p50), float(prior_p90))
        self.window = int(window)
        self.min_count = int(min_count)
        self._hist: dict[str, deque[int]] = {}
        self._all: deque[int] = deque(maxlen=self.window)

    def _lengths(self, category: str) -> np.ndarray | None:
        h = self._hist.get(category)
        if h is not None and len(h) >= self.min_count:
            return np.fromiter(h, dtype=np.float64, count=len(h))
        if len(self._all) >= self.min_count:
            return np.fromiter(self._all, dtype=np.float64, count=len(self._all))
        return None

    def admission(self, requests: Sequence[SchedRequest]) -> np.ndarray:
        out = np.empty((len(requests), 2))
        for i, r in enumerate(requests):
            lens = self._lengths(r.category)
            out[i] = self.prior if lens is None else np.quantile(lens, [0.5, 0.9])
        return out

    def remaining(self, requests: Sequence[SchedRequest], generated: np.ndarray) -> np.ndarray:
        out = np.empty((len(requests), 2))
        for i, (r, g) in enumerate(zip(requests, generated)):
            lens = self._lengths(r.category)
            alive = None if lens is None else lens[lens > g] - g
            if alive is not None and alive.size >= 4:
                out[i] = np.quantile(alive, [0.5, 0.9])
            elif g <= 0:
                out[i] = self.prior
            else:
                p50 = max(16.0, self.prior[0] - g, float(g))
                out[i] = (p50, 4.0 * p50)
        return out

    def observe(self, requests: Sequence[SchedRequest]) -> None:
        for r in requests:
            n = r.num_output_tokens
            if n > 0:
                self._hist.setdefault(r.category, deque(maxlen=self.window)).append(n)
                self._all.append(n)


class LearnedLengths:
    """The trained predictor behind the learned policies, with recalibration and fallback.

    Per request (by ``index``): features ``X`` (featurised once, in ``prepare`` for the whole
    trace or at arrival) and the raw admission prediction. ``admission`` returns recalibrated
    (p50, p90) of the total output; ``remaining`` the (p50, p90) of tokens still to come.
    """

    def __init__(
        self,
        predictor_dir: str | Path = "artifacts",
        require_drift: bool = False,
        recalibrate: bool = True,
        heuristic: CalibratedHeuristic | None = None,
        online: bool | Mapping[str, Any] | Any | None = None,
        error_window: int = 256,
        error_min_count: int = 20,
    ) -> None:
        from predictor.serving import load_predictor

        # Raises ArtifactNotFoundError naming `python train.py` when nothing is trained.
        self.predictor = load_predictor(Path(predictor_dir), require_drift=require_drift)
        drift = getattr(self.predictor, "drift", None)
        if drift is not None and hasattr(drift, "num_threads"):
            # re-predictions are small batches every few steps: a thread pool costs more than
            # it saves there (and the project pins one thread per process in tests)
            drift.num_threads = 1
        self.heuristic = heuristic or CalibratedHeuristic()
        # the online learner (predictor.online.OnlineLevels); None/False: off (the default)
        self.online = make_online(online)
        self.recal = None
        if recalibrate and self.online is None:
            from predictor.online import OnlineRecalibrator

            self.recal = OnlineRecalibrator()
        self.failed: str | None = None  # first predictor error; set -> heuristic from then on
        self._x: dict[int, np.ndarray] = {}
        self._raw: dict[int, np.ndarray] = {}
        self._text: dict[int, Any] = {}  # index -> PartialText (drift models that read text)
        # index -> admission p50 first served (tokens), for recent_error()
        self._served: dict[int, float] = {}
        self._lv: dict[int, tuple[Any, ...]] = {}  # index -> online level values
        # |log(actual / served p50)| of the last error_window completions
        self._errors: deque[float] = deque(maxlen=int(error_window))
        self.error_min_count = int(error_min_count)

    @property
    def has_drift(self) -> bool:
        return self.predictor.has_drift and self.failed is None

    def _fail(self, what: str, err: object) -> None:
        if self.failed is None:
            self.failed = f"{what}: {err}"
            log.warning(
                "predictor %s failed (%s); falling back to the calibrated heuristic for "
                "the rest of the run",
                what,
                err,
            )

    def featurize(self, requests: Sequence[SchedRequest]) -> None:
        """Features and raw admission predictions for requests not seen yet (batched)."""
        todo = [r for r in requests if r.index not in self._raw]
        if not todo or self.failed is not None:
            return
        from predictor.serving import frame_from_requests

        try:
            X = self.predictor.featurize(frame_from_requests(todo))
            raw = np.asarray(self.predictor.predict_admission(X), dtype=np.float64)
            if raw.shape != (len(todo), 2) or not np.isfinite(raw).all():
                raise ValueError(f"admission prediction has shape {raw.shape} or non-finite values")
        except Exception as e:  # any predictor failure degrades to the heuristic, once
            self._fail("predict_admission", e)
            return
        for i, r in enumerate(todo):
            self._x[r.index] = X[i]
            self._raw[r.index] = np.maximum(raw[i], 1.0)

    def _groups(self, requests: Sequence[SchedRequest]) -> list[tuple[str, str]]:
        return [(r.tenant, r.category) for r in requests]

    def _levels(self, requests: Sequence[SchedRequest]) -> list[tuple[Any, ...]]:
        """The online learner's level values of each request (``OnlineLevels.levels`` order)."""
        out = []
        for r in requests:
            v = self._lv.get(r.index)
            if v is None:  # once per request: a prompt level hashes the prompt text
                v = self._lv[r.index] = level_values(r, self.online.levels)
            out.append(v)
        return out

    def admission(self, requests: Sequence[SchedRequest]) -> np.ndarray:
        """(n, 2) recalibrated (p50, p90) of each request's total output tokens."""
        self.featurize(requests)
        if self.failed is not None:
            return self.heuristic.admission(requests)
        raw = np.stack([self._raw[r.index] for r in requests])
        if self.online is not None:
            out = self.online.adjust(self._levels(requests), raw)
        elif self.recal is not None:
            out = self.recal.adjust(self._groups(requests), raw)
        else:
            out = raw
        for r, p50 in zip(requests, out[:, 0].tolist()):
            self._served.setdefault(r.index, p50)
        return out

    def _partial_texts(self, requests: Sequence[SchedRequest]) -> list[str | None] | None:
        """Partial output text of each request (first ``num_output_tokens`` tokens of a
        replayed trace's ``output_text``), cached incrementally; None if the model reads none."""
        if not getattr(self.predictor, "reads_text", False):
            return None
        if not any(getattr(r, "output_text", None) for r in requests):
            return None
        from predictor.text_progress import PartialText

        out: list[str | None] = []
        for r in requests:
            p = self._text.get(r.index)
            if p is None:
                p = self._text[r.index] = PartialText(getattr(r, "output_text", None))
            out.append(p.at(r.num_output_tokens))
        return out

    def remaining(self, requests: Sequence[SchedRequest], admission: np.ndarray) -> np.ndarray:
        """(n, 2) (p50, p90) of tokens still to come given ``num_output_tokens`` generated."""
        gen = np.array([r.num_output_tokens for r in requests], dtype=np.float64)
        if self.has_drift:
            try:
                X = np.stack([self._x[r.index] for r in requests])
                texts = self._partial_texts(requests)
                rem = np.asarray(
                    self.predictor.predict_remaining(X, admission, gen)
                    if texts is None
                    else self.predictor.predict_remaining(X, admission, gen, texts),
                    dtype=np.float64,
                )
                if rem.shape != (len(requests), 2) or not np.isfinite(rem).all():
                    raise ValueError(
                        f"remaining prediction has shape {rem.shape} or non-finite values"
                    )
                return np.maximum(rem, 1.0)
            except Exception as e:
                self._fail("predict_remaining", e)
        if self.failed is None:
            # no drift model: the admission quantiles, conditioned on survival past g
            p50 = np.maximum(admission[:, 0] - gen, np.maximum(1.0, 0.5 * gen))
            p90 = np.maximum(admission[:, 1] - gen, 2.0 * p50)
            return np.c_[p50, p90]
        return self.heuristic.remaining(requests, gen)

    def observe(self, requests: Sequence[SchedRequest]) -> None:
        """Finished requests: update the recalibration (or the online learner), the
        heuristic's history and the recent error."""
        self.heuristic.observe(requests)
        for r in requests:
            served = self._served.get(r.index)
            if served is not None and r.num_output_tokens > 0:
                self._errors.append(abs(math.log(r.num_output_tokens / max(served, 1.0))))
        if self.failed is None and (self.recal is not None or self.online is not None):
            done = [r for r in requests if r.index in self._raw and r.num_output_tokens > 0]
            if done:
                raw = np.stack([self._raw[r.index] for r in done])
                actual = [r.num_output_tokens for r in done]
                if self.online is not None:
                    keys = [r.index for r in done]
                    self.online.update(self._levels(done), actual, raw, keys=keys)
                else:
                    self.recal.update(self._groups(done), actual, raw)
        # always: per-request state of finished requests must not outlive them (it leaked
        # without recalibration or after a predictor failure)
        self.forget(requests)

    def observe_running(
        self, requests: Sequence[SchedRequest], attained: Sequence[int] | None = None
    ) -> None:
        """Running requests' attained service (``num_output_tokens`` so far, or ``attained``
        read earlier): censored observations "length > g" for the online learner. Cheap
        (O(len(requests)), no model call); a policy may call it every few steps with the
        running batch. A no-op when the online learner is off, after a predictor failure, and
        for requests not featurised."""
        if self.online is None or self.failed is not None:
            return
        got = [r.num_output_tokens for r in requests] if attained is None else list(attained)
        if len(got) != len(requests):
            raise ValueError(f"{len(got)} attained counts for {len(requests)} requests")
        live = [(r, g) for r, g in zip(requests, got) if g > 0 and r.index in self._raw]
        if live:
            reqs = [r for r, _ in live]
            self.online.observe_running(
                [r.index for r in reqs],
                self._levels(reqs),
                [g for _, g in live],
                np.stack([self._raw[r.index] for r in reqs]),
            )

    def recent_error(self) -> float:
        """Median absolute log error ``|log(actual / p50)|`` of the admission p50 first
        served to each of the last ``error_window`` completed requests (0.69 = off by 2x for
        the typical request); NaN before ``error_min_count`` completions."""
        if len(self._errors) < self.error_min_count:
            return math.nan
        return float(np.median(np.fromiter(self._errors, dtype=np.float64)))

    def forget(self, requests: Sequence[SchedRequest]) -> None:
        """Aborted requests: drop their features and raw predictions (nothing to learn)."""
        for r in requests:
            self._raw.pop(r.index, None)
            self._x.pop(r.index, None)
            self._text.pop(r.index, None)
            self._served.pop(r.index, None)
            self._lv.pop(r.index, None)
        if self.online is not None:
            self.online.forget_running([r.index for r in requests])


def level_values(r: SchedRequest, levels: Sequence[str]) -> tuple[Any, ...]:
    """One request's value of each online level: a ``SchedRequest`` attribute (``model``,
    ``tenant``, ``category``, ``tier``, ``source``) or ``prompt`` (the near-duplicate prompt
    key of ``data.holdout``: completions of the same prompt by other generators)."""
    out = []
    for name in levels:
        if name == "prompt":
            from data.holdout import prompt_key

            out.append(prompt_key(r.prompt, r.source, r.request_id, prefix=True))
        else:
            out.append(getattr(r, name))
    return tuple(out)


def make_online(online: bool | Mapping[str, Any] | Any | None) -> Any:
    """``LearnedLengths``' ``online`` option -> an ``OnlineLevels`` or None.

    None/False: off. True: the default learner. A mapping: ``OnlineLevels`` keyword arguments
    (e.g. ``{levels: [model, tenant], prior_count: 8}``, as a policy config passes it). An
    object with ``adjust``/``update``/``observe_running``: used as is."""
    if online is None or online is False:
        return None
    from predictor.online import OnlineLevels

    if online is True:
        return OnlineLevels()
    if isinstance(online, Mapping):
        kw = dict(online)
        if "levels" in kw:
            kw["levels"] = tuple(kw["levels"])
        unknown = sorted(set(kw) - set(OnlineLevels.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"online: unknown option(s) {unknown}; expected some of levels, prior_count, "
                "max_count, sigma0, sigma_weight, target, lr, clip, censored, max_running"
            )
        return OnlineLevels(**kw)
    for m in ("adjust", "update", "observe_running", "forget_running", "levels"):
        if not hasattr(online, m):
            raise TypeError(f"online: {type(online).__name__} has no {m!r} (an OnlineLevels?)")
    return online
