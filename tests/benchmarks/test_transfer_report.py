"""benchmarks.transfer_report: the ceilings on a table with known structure, and the section
rewrite of docs/PREDICTORS.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.transfer_report import BEGIN, END, ceilings, write_section


def _table(noise: float) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    p_eff = rng.normal(5.0, 0.8, 200)
    g_eff = {"a": 0.6, "b": 0.0, "c": -0.6}
    rows = []
    for i, pe in enumerate(p_eff):
        for g, ge in g_eff.items():
            rows.append(
                {
                    "request_id": f"{i}{g}",
                    "prompt_id": f"p{i}",
                    "prompt": f"prompt number {i}",
                    "source": "s",
                    "model": g,
                    "output_tokens": max(1, round(np.exp(pe + ge + rng.normal(0, noise)))),
                }
            )
    return pd.DataFrame(rows)


def test_ceilings_follow_the_structure() -> None:
    exact, noisy = ceilings(_table(0.0)), ceilings(_table(0.8))
    assert exact.pop("mask").all() and exact["generators"] == 3
    assert exact["combined_tau"] > 0.95  # additive and noiseless: the ceiling is ~perfect
    assert exact["prompt_tau_within"] > 0.95
    assert 0.1 < exact["generator_tau"] < 0.5  # the generator alone ranks a little
    assert noisy["combined_tau"] < exact["combined_tau"] - 0.2  # noise lowers every ceiling


def test_write_section_replaces_only_its_part(tmp_path: Path) -> None:
    doc = tmp_path / "P.md"
    doc.write_text("# Title\n\nhand text\n")
    write_section(doc, f"{BEGIN}\none\n{END}")
    write_section(doc, f"{BEGIN}\ntwo\n{END}")
    text = doc.read_text()
    assert text.count(BEGIN) == 1 and "two" in text and "one" not in text
    assert text.startswith("# Title\n\nhand text\n")


def test_the_report_names_the_online_learners_default_levels() -> None:
    """The targets row marked "the default" is the level set the online learner uses."""
    import benchmarks.transfer_report as tr
    from predictor.online import LEVELS

    assert "+".join(LEVELS) == tr.DEFAULT_LEVELS
    assert "prompt" in LEVELS and "prompt" not in tr.LEVELS[0]  # the other row: without it
