"""The harder suite presets keep their promise: what each serves is absent from the training
split its own predictor is trained with (``predictor.train``), and each builds alone."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from data.loaders import load_sources
from data.splits import split_by_config
from report.generalisation import Entry, preset_predictor
from report.presets import compose_workload_config

PRESETS = ("cross_shift", "long_generators", "mixed_generators")


def _split_of(name: str) -> dict:
    """The data.split a preset's predictor is trained with (its train.py overrides)."""
    _, overrides = preset_predictor(Entry(name, name))
    base = OmegaConf.create({"data": {"split": OmegaConf.load("conf/data/default.yaml").split}})
    base.merge_with_dotlist(overrides)
    return OmegaConf.to_container(base.data.split, resolve=True)


@pytest.fixture(scope="module")
def table():
    return load_sources(["castillo", "alpaca_eval", "sharegpt"])


@pytest.mark.parametrize("name", PRESETS)
def test_what_a_preset_serves_is_absent_from_its_training_split(table, name: str) -> None:
    wl = compose_workload_config(name, ["unseen_by=null"])
    sp = split_by_config(table, _split_of(name))
    trained = set(sp.train["model"]) | set(sp.val["model"])
    served_unseen = set()
    for t in wl["tenants"].values():
        for item in t["mix"]:
            served_unseen |= {m for m in (item.get("models") or []) if m not in trained}
    if name == "cross_shift":
        seen_rows = sp.train if len(sp.train) else sp.val
        assert not seen_rows["model"].str.contains("Qwen").any()
        assert "sharegpt" not in set(sp.train["source"]) | set(sp.val["source"])
        assert not (sp.train.get("dataset") == "ShareGPT").any()
        chat = wl["tenants"]["chat"]["mix"][0]
        assert chat["categories"] == ["chat"] and all("Qwen" in m for m in chat["models"])
    if name == "long_generators":
        # every served chat generator is held out, and each is longer than any trained one
        chat = set(wl["tenants"]["chat"]["mix"][0]["models"])
        assert chat <= served_unseen
        a = table[table["source"] == "alpaca_eval"]
        gm = np.log(a["output_tokens"].astype(float)).groupby(a["model"]).mean()
        longest_trained = gm[[m for m in gm.index if m in trained]].max()
        assert gm[list(chat)].min() > longest_trained
    if name == "mixed_generators":
        models = set()
        for t in wl["tenants"].values():
            for item in t["mix"]:
                models |= set(item["models"])
        assert len(models) == 22 and len(served_unseen) == 15
