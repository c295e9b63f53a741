"""Config errors in ``conf/workload`` are rejected before any work starts, naming the fix.

Each case edits the real composed preset (``conf/workload/default.yaml`` or ``paper.yaml``)
the way a user would on the command line, and checks that ``workload_from_config`` raises a
``ValueError`` whose message names the field and the valid choices or range, and that no data
file was read (the source caches saw neither a hit nor a miss): the error comes first.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest

from data import loaders
from data.arrivals import ARRIVAL_KINDS, REPLAY_TRACES
from data.loaders import servegen as sg
from data.presets import check_load, workload_from_config
from report.presets import compose_workload_config, load_workload
from tests.campaign import record

pytestmark = pytest.mark.reliability  # the campaign of docs/RELIABILITY.md


@pytest.fixture(scope="module")
def default_cfg() -> dict[str, Any]:
    return compose_workload_config("default")


@pytest.fixture(scope="module")
def paper_cfg() -> dict[str, Any]:
    return compose_workload_config("paper")


def _reads() -> int:
    """Calls into the source caches so far (a hit still means work on the data started)."""
    c = loaders._cached.cache_info()
    w = sg._windows.cache_info()
    return c.hits + c.misses + w.hits + w.misses


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        if isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value

    return edit


def _del(path: str) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        del d[last]

    return edit


def _all(*edits: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        for e in edits:
            e(d)

    return edit


POISSON = _set("arrival", {"kind": "poisson", "rate_rps": 4.0})

# (case id, edit of the default preset, regex the message must contain)
DEFAULT_CASES: list[tuple[str, Callable[[dict], None], str]] = [
    ("unknown preset", _set("preset", "tenantz"), r"preset 'tenantz'.*\['tenants', 'paper', 'trace'\]"),
    ("unknown field", _set("n_request", 10), r"unknown field\(s\) \['n_request'\].*n_requests"),
    ("no tenants", _set("tenants", {}), r"'tenants' is missing or empty"),
    ("n_requests 0", _set("n_requests", 0), r"n_requests = 0: expected an integer >= 1"),
    ("n_requests < 0", _set("n_requests", -5), r"n_requests = -5"),
    ("n_requests 2.5", _set("n_requests", 2.5), r"n_requests = 2.5: expected an integer"),
    ("n_requests text", _set("n_requests", "many"), r"n_requests = 'many'"),
    ("max_tokens 0", _set("max_tokens", 0), r"max_tokens = 0: expected an integer >= 1"),
    ("max_prompt_tokens < 0", _set("max_prompt_tokens", -1), r"max_prompt_tokens = -1"),
    ("unknown arrival kind", _set("arrival.kind", "uniform"),
     rf"unknown arrival kind 'uniform'.*{ARRIVAL_KINDS[0]}"),
    ("unknown arrival field", _set("arrival.rate", 4), r"workload.arrival: unknown field.*rate_rps"),
    ("poisson without rate", _all(POISSON, _set("arrival.rate_rps", None)), r"need rate_rps > 0"),
    ("negative rate", _all(POISSON, _set("arrival.rate_rps", -1.0)),
     r"rate_rps = -1.0: expected a number > 0"),
    ("zero rate", _all(POISSON, _set("arrival.rate_rps", 0)), r"rate_rps = 0: expected"),
    ("nan rate", _all(POISSON, _set("arrival.rate_rps", math.nan)), r"rate_rps = nan"),
    ("inf rate", _all(POISSON, _set("arrival.rate_rps", math.inf)), r"rate_rps = inf"),
    ("text rate", _all(POISSON, _set("arrival.rate_rps", "fast")), r"rate_rps = 'fast'"),
    ("bool rate", _all(POISSON, _set("arrival.rate_rps", True)), r"rate_rps = True"),
    ("negative replay rescale", _set("arrival.rate_rps", -2.0), r"rate_rps = -2.0"),
    ("gamma cv 0", _set("arrival", {"kind": "gamma", "rate_rps": 4.0, "cv": 0}), r"cv = 0"),
    ("unknown replay trace", _set("arrival.trace", "azure_chat"),
     rf"replay trace 'azure_chat'.*{REPLAY_TRACES[0]}"),
    ("negative start", _set("arrival.start_s", -10.0), r"start_s = -10.0: expected a number >= 0"),
    ("unknown servegen model", _set("arrival", {"kind": "servegen", "servegen_model": "m-huge"}),
     r"servegen_model 'm-huge'.*m-large"),
    ("servegen window 0", _set("arrival", {"kind": "servegen", "window_s": 0}), r"window_s = 0"),
    ("servegen rate_scale < 0", _set("arrival", {"kind": "servegen", "rate_scale": -1}),
     r"rate_scale = -1"),
    ("weights sum to 0", _all(*(_set(f"tenants.{t}.weight", 0) for t in ("chat", "code", "batch"))),
     r"tenant weights sum to 0"),
    ("negative weight", _set("tenants.chat.weight", -0.5), r"tenant 'chat': weight = -0.5"),
    ("nan weight", _set("tenants.chat.weight", math.nan), r"tenant 'chat': weight = nan"),
    ("zero ttft slo", _set("tenants.chat.slo_ttft_s", 0), r"'chat': slo_ttft_s = 0: expected a number > 0"),
    ("negative e2e slo", _set("tenants.code.slo_e2e_s", -1.0), r"'code': slo_e2e_s = -1.0"),
    ("nan slo", _set("tenants.batch.slo_ttft_s", math.nan), r"'batch': slo_ttft_s = nan"),
    ("text slo", _set("tenants.batch.slo_e2e_s", "1m"), r"'batch': slo_e2e_s = '1m'"),
    ("unknown tier", _set("tenants.chat.tier", "gold"), r"unknown tier 'gold'.*premium"),
    ("unknown tenant field", _set("tenants.chat.slo", 1.0), r"tenant 'chat': unknown field.*slo_ttft_s"),
    ("tenant max_tokens 0", _set("tenants.chat.max_tokens", 0), r"'chat': max_tokens = 0"),
    ("empty mix", _set("tenants.chat.mix", []), r"'chat': 'mix' is missing or empty"),
    ("unknown source", _set("tenants.code.mix.0.source", "castilo"),
     r"unknown source 'castilo' in mix.*castillo"),
    ("unknown source shorthand", _set("tenants.code.mix", {"sharegtp": 1.0}),
     r"unknown source 'sharegtp'"),
    ("negative mix weight", _set("tenants.chat.mix.0.weight", -1.0), r"weight = -1.0: expected a number >= 0"),
    ("mix weights sum to 0", _all(_set("tenants.chat.mix.0.weight", 0), _set("tenants.chat.mix.1.weight", 0)),
     r"'chat': mix weights sum to 0"),
    ("unknown mix field", _set("tenants.chat.mix.0.weigth", 2.0), r"unknown field.*\['weigth'\]"),
    ("mix item without source", _del("tenants.chat.mix.0.source"), r"with a 'source'"),
]  # fmt: skip

PAPER_CASES: list[tuple[str, Callable[[dict], None], str]] = [
    ("unknown field", _set("prefx", False), r"unknown field\(s\) \['prefx'\].*prefix"),
    ("no phases", _set("phases", {}), r"workload.phases is empty"),
    ("phase n 0", _set("phases.learning.n_requests", 0), r"phases.learning.n_requests = 0"),
    ("phase gap order", _set("phases.stress.gap_s", [0.2, 0.1]), r"stress.gap_s = \[0.2, 0.1\]: expected low <= high"),
    ("phase gap < 0", _set("phases.stress.gap_s", [-1, 0.1]), r"stress.gap_s = -1: expected a number >= 0"),
    ("phase gap shape", _set("phases.stress.gap_s", [0.1]), r"expected \[low, high\]"),
    ("phase mix len", _set("phases.learning.mix", [0.5, 0.5]), r"learning.mix.*expected 4 shares"),
    ("phase mix sum", _set("phases.learning.mix", [0.5, 0.2, 0.2, 0.0]), r"summing to 1"),
    ("phase mix < 0", _set("phases.learning.mix", [1.2, -0.2, 0.0, 0.0]), r"mix = -0.2"),
    ("phase unknown field", _set("phases.learning.gap", [0, 1]), r"phases.learning: unknown field"),
    ("phase missing field", _del("phases.learning.mix"), r"expected a mapping with"),
]  # fmt: skip


def _rejects(cfg: dict, edit: Callable[[dict], None], match: str, tag: str) -> None:
    d = copy.deepcopy(cfg)
    edit(d)
    before = _reads()
    with pytest.raises(ValueError, match=match) as e:
        workload_from_config(d, seed=0)
    assert _reads() == before, "a data file was read before the config error was raised"
    assert type(e.value) is ValueError  # not a TypeError/KeyError from deep inside
    record(tag, "ValueError")


@pytest.mark.parametrize("name,edit,match", DEFAULT_CASES, ids=[c[0] for c in DEFAULT_CASES])
def test_default_workload_config_errors(default_cfg, name, edit, match):
    _rejects(default_cfg, edit, match, "workload config[tenants]")


@pytest.mark.parametrize("name,edit,match", PAPER_CASES, ids=[c[0] for c in PAPER_CASES])
def test_paper_workload_config_errors(paper_cfg, name, edit, match):
    _rejects(paper_cfg, edit, match, "workload config[paper]")


def test_negative_seed_rejected_before_loading(default_cfg):
    before = _reads()
    with pytest.raises(ValueError, match=r"workload seed -1: expected an integer >= 0"):
        workload_from_config(default_cfg, seed=-1)
    assert _reads() == before
    record("workload config[seed]", "ValueError")


def test_unknown_workload_name_lists_presets():
    with pytest.raises(ValueError, match=r"unknown workload preset 'defualt'.*'default'.*'paper'"):
        load_workload("defualt")
    record("workload name", "ValueError")


@pytest.mark.parametrize("group,name", [("workload", "defualt"), ("engine", "simm")])
def test_hydra_lists_valid_group_options(group, name):
    """``python evaluate.py workload=defualt`` fails in composition with the valid options."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    from report.presets import CONF_DIR

    with (
        initialize_config_dir(config_dir=str(CONF_DIR), version_base=None),
        pytest.raises(MissingConfigException) as e,
    ):
        compose(config_name="evaluate", overrides=[f"{group}={name}"])
    msg = str(e.value)
    assert f"'{group}/{name}'" in msg and "Available options" in msg
    known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    assert all(k in msg for k in known)
    record("hydra group option", "MissingConfigException")


@pytest.mark.parametrize(
    "utilisation,rate,match",
    [
        (0, None, r"utilisation = 0: expected a number > 0"),
        (-0.5, None, r"utilisation = -0.5"),
        (math.nan, None, r"utilisation = nan"),
        (math.inf, None, r"utilisation = inf"),
        ("high", None, r"utilisation = 'high'"),
        (None, None, r"set one of them"),
        (0.9, 0, r"rate_rps = 0: expected a number > 0"),
        (0.9, -3.0, r"rate_rps = -3.0"),
    ],
)
def test_offered_load_errors(utilisation, rate, match):
    with pytest.raises(ValueError, match=match):
        check_load(utilisation, rate)
    record("offered load", "ValueError")


def test_valid_loads_pass():
    check_load(0.95)
    check_load(1.5)  # overload on purpose is allowed
    check_load(None, 4.0)
    check_load(-1, 4.0)  # rate_rps overrides utilisation


def test_servegen_model_list_matches_the_shipped_file():
    assert set(sg.SERVEGEN_MODELS) == set(sg.load_servegen_windows()["model"].unique())


def test_default_config_still_builds(default_cfg):
    """The validation accepts every shipped preset (guards against over-strict checks)."""
    from data.workload_spec import WorkloadSpec

    for name in ("default", "gamma", "poisson", "mooncake", "servegen"):
        WorkloadSpec.from_config(compose_workload_config(name))
    from data.paper import PaperSpec

    PaperSpec.from_config(compose_workload_config("paper"))
