"""A length model built to transfer: log length = prompt effect + generator effect + noise.

Why: a request's output length is mostly two things that transfer separately. How long *this
prompt* makes answers (the same across generators: ranking a request by the mean log length
other generators gave its prompt reaches Kendall tau ~0.5) and how verbose *this generator* is
(a per-generator scale; an unseen generator's is learned online in a few dozen completions,
``predictor.online``). A single model over prompt features and generator ids learns their
interactions on the generators it saw and degrades on new ones; here they are kept apart:

* **prompt effect** ``f(prompt)``: a :class:`predictor.lgbm.LightGBMLength` fitted on one row
  per training prompt whose target is the prompt's multi-generator effect, the mean over all its
  rows (every generator, every sampled length) of ``log(length) - a[generator]`` from a two-way
  additive decomposition (alternating means, ``sweeps`` passes). Its identity columns (tenant,
  tier, source, model) are blanked in training, so it reads only the prompt (text, lexical cues,
  length, category);
* **generator effect** ``a[g]``: the mean residual ``log(length) - f(prompt)`` of generator
  ``g``'s training rows, shrunk toward the mean over generators with ``prior_count``
  pseudo-rows; ``s[g]``: its residual ``upper`` quantile (the p90 spread), shrunk the same way.
  An unseen generator gets its family's mean (``predictor.features.generator_descriptors``,
  families with >= 2 trained generators), else the mean over generators; the online learner
  then learns its own level;
* quantiles: ``p50 = exp(f + a[g])``, ``p90 = exp(f + a[g] + s[g] + shift)``, ``shift`` the
  split-conformal correction that gives the validation split ``upper`` coverage.

``featurize`` returns the prompt model's features plus two columns (``gen_level``,
``gen_spread``) resolved from the request's model name, so ``predict_features`` costs one
forest walk. Artifacts: ``prompt/`` (the LightGBM length artifact) + ``generators.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from predictor.artifacts import TRAIN_COMMAND, ArtifactError, file_sha256, read_meta, write_meta
from predictor.base import QUANTILES, LengthEstimator, check_frame, check_lengths, finish_quantiles
from predictor.features import generator_descriptors

BLANKED = ("tenant", "tier", "source", "model")  # identity columns the prompt model never reads
UNKNOWN = "unknown"


def _sample_logs(df: pd.DataFrame, y: np.ndarray) -> np.ndarray:
    """Per row: mean log of its sampled lengths (``output_samples``) where it has several,
    else ``log(y)`` (n,)."""
    out = np.log(y)
    if "output_samples" in df.columns:
        for i, s in enumerate(df["output_samples"].tolist()):
            if isinstance(s, tuple) and len(s) > 1:
                out[i] = float(np.mean(np.log(np.maximum(np.asarray(s, dtype=np.float64), 1.0))))
    return out


def prompt_groups(df: pd.DataFrame) -> np.ndarray:
    """Group id of each row's prompt: its normalised text, else ``source/prompt_id``."""
    from data.holdout import prompt_keys

    return prompt_keys(df)


def additive_effects(
    ly: np.ndarray, prompts: np.ndarray, gens: np.ndarray, sweeps: int = 5
) -> tuple[pd.Series, pd.Series]:
    """Two-way decomposition ``ly ~ p[prompt] + a[generator]`` by alternating means.

    Returns (prompt effects, generator effects) as Series indexed by prompt / generator; the
    generator effects have mean 0 over generators (the level is in the prompt effects).
    """
    a = pd.Series(0.0, index=pd.unique(gens))
    p = pd.Series(dtype=np.float64)
    for _ in range(max(1, sweeps)):
        p = pd.Series(ly - a.reindex(gens).to_numpy()).groupby(prompts).mean()
        a = pd.Series(ly - p.reindex(prompts).to_numpy()).groupby(gens).mean()
        a -= a.mean()
    return p, a


class FactorisedLength(LengthEstimator):
    """Prompt effect (LightGBM on multi-generator targets) + generator effect (a table)."""

    kind: ClassVar[str] = "factorised_length"

    def __init__(
        self,
        *,
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 20,
        text_dim: int = 48,
        max_vocab: int = 20000,
        sweeps: int = 5,
        prior_count: float = 20.0,
        upper: float = QUANTILES[1],
        calibrate: bool = True,
        num_threads: int = 1,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.text_dim = text_dim
        self.max_vocab = max_vocab
        self.sweeps = sweeps
        self.prior_count = prior_count  # pseudo-rows at the mean pulling small generators in
        self.upper = upper
        self.calibrate = calibrate
        self.num_threads = num_threads
        self.random_state = random_state

    # --- fitting -------------------------------------------------------------------------
    def _prompt_model(self) -> Any:
        from predictor.lgbm import LightGBMLength

        return LightGBMLength(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            text_dim=self.text_dim,
            max_vocab=self.max_vocab,
            min_count=1,
            calibrate=False,
            num_threads=self.num_threads,
            random_state=self.random_state,
        )

    def _prompt_table(self, X: pd.DataFrame, ly: np.ndarray, gens: np.ndarray) -> pd.DataFrame:
        """One row per prompt: its first row's text and category, target = exp(prompt effect)."""
        keys = prompt_groups(X)
        p, _ = additive_effects(ly, keys, gens, self.sweeps)
        first = pd.Series(np.arange(len(X))).groupby(keys).first()
        rows = X.iloc[first.to_numpy()].copy().reset_index(drop=True)
        rows["output_tokens"] = np.exp(p.reindex(first.index).to_numpy())
        for c in BLANKED:
            rows[c] = UNKNOWN
        return rows

    def fit(
        self, X: pd.DataFrame, y: Any, eval_set: tuple[pd.DataFrame, Any] | None = None
    ) -> FactorisedLength:
        """Fit on a training trace (several generators per prompt make the prompt effect a
        multi-generator target); ``eval_set`` early-stops the prompt model and sets the
        conformal p90 shift."""
        X = check_frame(X).reset_index(drop=True)
        yv = check_lengths(y, len(X))
        gens = X["model"].astype("string").fillna(UNKNOWN).to_numpy(dtype=object)
        ly = _sample_logs(X, yv)
        table = self._prompt_table(X, ly, gens)
        ev = None
        if eval_set is not None:
            Xe = check_frame(eval_set[0], "eval X").reset_index(drop=True)
            ye = check_lengths(eval_set[1], len(Xe), "eval y")
            ge = Xe["model"].astype("string").fillna(UNKNOWN).to_numpy(dtype=object)
            et = self._prompt_table(Xe, _sample_logs(Xe, ye), ge)
            ev = (et, et["output_tokens"].to_numpy(np.float64))
        self.prompt_ = self._prompt_model().fit(
            table, table["output_tokens"].to_numpy(np.float64), eval_set=ev
        )
        f = np.log(self.prompt_.predict_quantiles(X)[:, 0])
        self._fit_generators(ly - f, np.log(yv) - f, gens)
        self.p90_shift_ = 0.0
        self.fitted_ = True
        if eval_set is not None and self.calibrate:
            q = self.predict_quantiles(Xe)
            self.p90_shift_ = float(np.quantile(np.log(ye) - np.log(q[:, 1]), self.upper))
        self.fitted_ = True
        return self

    def _fit_generators(self, r_mean: np.ndarray, r_row: np.ndarray, gens: np.ndarray) -> None:
        """Generator levels (shrunk mean of ``r_mean``) and spreads (shrunk ``upper``
        quantile of the single-sample residual around the level), plus family means."""
        k = self.prior_count
        df = pd.DataFrame({"g": gens, "m": r_mean, "r": r_row})
        stats = df.groupby("g").agg(n=("m", "size"), mean=("m", "mean"))
        center = float(stats["mean"].mean())
        level = (stats["mean"] * stats["n"] + center * k) / (stats["n"] + k)
        dev = df["r"].to_numpy() - level.reindex(df["g"]).to_numpy()
        spread_all = float(np.quantile(dev, self.upper))
        sp = pd.Series(dev).groupby(df["g"].to_numpy()).quantile(self.upper)
        spread = (sp * stats["n"] + spread_all * k) / (stats["n"] + k)
        self.generators_ = {
            str(g): (float(level[g]), float(spread[g])) for g in stats.index if g != UNKNOWN
        }
        self.default_ = (center, spread_all)
        fams: dict[float, list[tuple[float, float]]] = {}
        for g, v in self.generators_.items():
            fam = generator_descriptors(g)[1]
            if fam > 0:
                fams.setdefault(fam, []).append(v)
        self.families_ = {
            str(int(f)): (float(np.mean([a for a, _ in v])), float(np.mean([s for _, s in v])))
            for f, v in fams.items()
            if len(v) >= 2
        }

    # --- predicting ----------------------------------------------------------------------
    def generator_table(self, models: list[Any]) -> np.ndarray:
        """(n, 2) float32 (level, spread) of each model name: its own, its family's, or the
        mean over generators."""
        memo: dict[Any, tuple[float, float]] = {}
        out = np.empty((len(models), 2), dtype=np.float32)
        for i, m in enumerate(models):
            v = memo.get(m)
            if v is None:
                v = self.generators_.get(m) if isinstance(m, str) else None
                if v is None:
                    fam = generator_descriptors(m if isinstance(m, str) else None)[1]
                    v = self.families_.get(str(int(fam)), self.default_)
                memo[m] = v
            out[i] = v
        return out

    def featurize(self, X: pd.DataFrame) -> np.ndarray:
        """(n, d + 2) float32: the prompt model's features, generator level and spread."""
        self._check_fitted()
        X = check_frame(X)
        models = X["model"].tolist() if "model" in X.columns else [None] * len(X)
        return np.hstack([self.prompt_.featurize(X), self.generator_table(models)])

    def predict_features(self, F: np.ndarray) -> np.ndarray:
        """(p50, p90) tokens (n, 2)."""
        self._check_fitted()
        F = np.asarray(F, dtype=np.float32)
        if F.ndim != 2 or F.shape[1] < 3:
            raise ValueError(f"features must have shape (n, d + 2), got {F.shape}")
        if F.shape[0] == 0:
            return np.zeros((0, 2))
        f = np.log(self.prompt_.predict_features(F[:, :-2])[:, 0])
        lvl, spr = F[:, -2].astype(np.float64), F[:, -1].astype(np.float64)
        lq = np.c_[f + lvl, f + lvl + spr + self.p90_shift_]
        return finish_quantiles(lq)

    def predict_quantiles(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_features(self.featurize(X))

    # --- artifacts -----------------------------------------------------------------------
    def save(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.prompt_.save(d / "prompt")
        table = {
            "generators": self.generators_,
            "families": self.families_,
            "default": list(self.default_),
        }
        (d / "generators.json").write_text(json.dumps(table, sort_keys=True))
        write_meta(
            d,
            self.kind,
            {
                "hyperparameters": self.get_params(),
                "p90_shift": self.p90_shift_,
                "n_generators": len(self.generators_),
                # the prompt model's own meta.json pins its files; this pins that meta.json
                "prompt_meta_sha256": file_sha256(d / "prompt" / "meta.json"),
                **(extra_meta or {}),
            },
        )
        return d

    @classmethod
    def load(cls, directory: str | Path) -> FactorisedLength:
        from predictor.lgbm import LightGBMLength

        d = Path(directory)
        meta = read_meta(d, (cls.kind,))
        est = cls(**meta["hyperparameters"])
        try:
            table = json.loads((d / "generators.json").read_text())
            est.generators_ = {
                str(g): (float(a), float(s)) for g, (a, s) in table["generators"].items()
            }
            est.families_ = {
                str(f): (float(a), float(s)) for f, (a, s) in table["families"].items()
            }
            est.default_ = (float(table["default"][0]), float(table["default"][1]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ArtifactError(
                f"{d / 'generators.json'}: unreadable generator table ({e}); retrain with "
                f"`{TRAIN_COMMAND} predictor=factorised`"
            ) from e
        pm = d / "prompt" / "meta.json"
        if not pm.is_file() or file_sha256(pm) != meta.get("prompt_meta_sha256"):
            raise ArtifactError(
                f"{pm}: missing or not the prompt model this artifact was saved with (sha256 "
                f"mismatch); retrain with `{TRAIN_COMMAND} predictor=factorised`"
            )
        est.prompt_ = LightGBMLength.load(d / "prompt")
        est.p90_shift_ = float(meta["p90_shift"])
        est.meta_ = meta
        est.fitted_ = True
        return est
