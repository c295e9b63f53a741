"""One definition per knob: policy/engine parameters come from their classes (report.config_schema)."""

from __future__ import annotations

import pydoc
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from report.config_schema import CONF_DIR, GROUPS, parameters
from report.jobs import compose


def _presets() -> list[tuple[str, Path]]:
    return [(g, p) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,path", _presets(), ids=lambda x: getattr(x, "stem", x))
def test_every_preset_composes_and_lists_every_knob(group: str, path: Path) -> None:
    over = [f"+policy={path.stem}"] if group == "policy" else [f"engine={path.stem}"]
    node = compose(over)[group]
    cls = pydoc.locate(str(node._target_))
    assert {n for n, _, _ in parameters(cls)} <= set(node), "every knob shows in --cfg job"


@pytest.mark.parametrize("group,path", _presets(), ids=lambda x: getattr(x, "stem", x))
def test_presets_hold_only_what_differs_from_the_class(group: str, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    target = doc.get("_target_")
    if target is None:
        return  # a preset over another preset (its defaults list): deltas by construction
    assert doc["defaults"][0] == f"/schema/{group}/{path.stem}@_here_"
    defaults = {n: d for n, _, d in parameters(pydoc.locate(target))}
    for key, value in doc.items():
        if key in ("_target_", "defaults"):
            continue
        assert key in defaults, f"{path.name}: {key!r} is not a parameter of {target}"
        d = list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]
        assert value != d, f"{path.name}: {key}={value!r} repeats the class default"


def test_unknown_and_mistyped_knobs_are_rejected() -> None:
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match="nonsense"):
        compose(["+policy=drift", "policy.nonsense=1"])
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match="fast_forwrd"):
        compose(["engine.fast_forwrd=false"])
    with pytest.raises((ConfigCompositionException, ValidationError), match="recalibrate"):
        compose(["+policy=drift", "policy.recalibrate=maybe"])


def test_a_knob_keeps_the_type_it_is_given() -> None:
    # numbers are untyped in the schema: an int stays an int (run configs compare equal)
    cfg = compose(["+policy=drift", "policy.reclassify={min_delta_tokens:16}", "policy.risk=1"])
    n = cfg.policy.reclassify.min_delta_tokens
    assert n == 16 and isinstance(n, int) and isinstance(cfg.policy.risk, int)
    assert cfg.policy.recalibrate is False  # the class default, defined once
