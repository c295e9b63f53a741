"""``python -m predictor.score --online``: prequential online numbers beside the cold ones,
on good trace files (CSV with arrivals, JSONL without, records.parquet) and clear errors on
bad ones; plus the prequential protocol itself (no request learns from its own outcome)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictor.online import OnlineLevels
from predictor.prequential import group_taus, level_table, prequential, timeline
from predictor.score import main
from tests.predictor.conftest import make_trace
from tests.predictor.test_train import _records
from tests.tiny_predictor import save_tiny_predictor


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LightGBM that never saw the verbose generator (trained on m-mid only)."""
    rows = make_trace(n_prompts=200, seed=5)
    rows = rows[rows["model"] == "m-mid"].reset_index(drop=True)
    return save_tiny_predictor(tmp_path_factory.mktemp("score_online"), rows, length_trees=30)


def _unseen_trace(n_prompts: int = 150) -> pd.DataFrame:
    t = make_trace(n_prompts=n_prompts, seed=9)
    t = t[t["model"] == "m-verbose"].reset_index(drop=True)  # runs e^0.5 = 1.65x longer
    return t.drop(columns=["output_samples"])


def _run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict | None, str]:
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc == 0 else None), cap.err


def test_online_learns_an_unseen_generators_scale(
    art: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    t = _unseen_trace()
    t["arrival_s"] = np.arange(len(t)) * 0.5
    t.to_csv(tmp_path / "t.csv", index=False)
    rc, out, _ = _run(capsys, "--online", str(art), str(tmp_path / "t.csv"))
    assert rc == 0 and out is not None
    assert out["n"] == len(t) and out["protocol"]["arrivals"] == "arrival_s"
    cold, online = out["cold"], out["online"]
    assert {"kendall_tau", "mae", "tau_within_generator", "mae_after_warmup"} <= set(cold)
    # the scale is learned: the late requests' error drops well below the cold model's
    assert online["mae_after_warmup"] < 0.9 * cold["mae_after_warmup"]
    assert online["mae_log"] < cold["mae_log"]
    # one generator: within-generator tau is the pooled tau
    assert cold["tau_within_generator"] == pytest.approx(cold["kendall_tau"])
    # the plain command is unchanged
    rc, plain, _ = _run(capsys, str(art), str(tmp_path / "t.csv"))
    assert rc == 0 and plain["kendall_tau"] == pytest.approx(cold["kendall_tau"])


def test_online_on_jsonl_without_arrivals_and_on_records(
    art: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    t = _unseen_trace(40)[["prompt", "output_tokens", "model"]]
    t.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    rc, out, _ = _run(
        capsys,
        "--online",
        "--rate",
        "2",
        "--levels",
        "model,prompt",
        str(art),
        str(tmp_path / "t.jsonl"),
    )
    assert rc == 0 and out["protocol"]["arrivals"] == "row order at 2.0 rps"
    assert out["protocol"]["levels"] == ["model", "prompt"]
    rec = _records(tmp_path / "records.parquet")
    rc, out, _ = _run(capsys, "--online", str(art), str(rec))
    assert rc == 0 and out["protocol"]["completions"] == "finish_s" and out["n"] == 441


@pytest.mark.parametrize(
    ("name", "body", "needle"),
    [
        ("missing.csv", None, "not found"),
        ("no_length.csv", "prompt,tenant\nhello,a\n", "output_tokens"),
        ("bad.jsonl", '{"prompt": "a", "output_tokens": 3}\n{"prompt": \n', "line 2"),
        ("zero.csv", "prompt,output_tokens\nhi,0\n", "output_tokens"),
        ("empty.csv", "", "empty"),
    ],
)
def test_bad_files_are_clear_errors(
    art: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    name: str,
    body: str | None,
    needle: str,
) -> None:
    p = tmp_path / name
    if body is not None:
        p.write_text(body)
    rc, _, err = _run(capsys, "--online", str(art), str(p))
    assert rc == 2 and err.startswith("error:") and needle in err and str(p.name) in err


def test_bad_options_are_refused(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--online", "--levels", "model,colour", str(art), "x.csv"])
    assert e.value.code == 2 and "colour" in capsys.readouterr().err
    _unseen_trace(5).to_csv(tmp_path / "t.csv", index=False)
    rc, _, err = _run(capsys, "--online", "--tpot", "-1", str(art), str(tmp_path / "t.csv"))
    assert rc == 2 and "tpot_s" in err


class _Spy(OnlineLevels):
    """Records, at each prediction, which requests had already taught the learner."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.learned: list[int] = []
        self.seen_at_predict: list[set[int]] = []

    def update_one(self, values, actual, raw, key=None) -> None:  # type: ignore[override]
        self.learned.append(key)
        super().update_one(values, actual, raw, key)

    def adjust(self, values, raw):  # type: ignore[override]
        self.seen_at_predict.append(set(self.learned))
        return super().adjust(values, raw)


def test_prequential_never_learns_from_a_request_before_it_completes() -> None:
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame(
        {
            "arrival_s": np.sort(rng.uniform(0, 50, n)),
            "output_tokens": rng.integers(1, 400, n),
            "model": rng.choice(["a", "b"], n),
        }
    )
    arr, fin = timeline(df, tpot_s=0.05)
    raw = np.c_[np.full(n, 100.0), np.full(n, 300.0)]
    spy = _Spy(levels=("model",))
    pred = prequential(
        raw, level_table(df, ("model",)), df["output_tokens"].to_numpy(), arr, fin, spy
    )
    assert pred.shape == (n, 2) and (pred[:, 1] >= pred[:, 0]).all()
    order = np.argsort(arr, kind="stable")
    for k, i in enumerate(order):
        learned = spy.seen_at_predict[k]
        assert i not in learned
        assert all(fin[j] <= arr[i] for j in learned)  # only what completed before it arrived
    assert group_taus(np.arange(10.0), np.arange(10.0), ["g"] * 10, min_n=20) != group_taus(
        np.arange(30.0), np.arange(30.0), ["g"] * 30
    )
