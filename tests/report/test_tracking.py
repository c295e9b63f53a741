"""report.tracking: wandb offline without a key and without touching the network, always
finished (exit code 1 when the body raises, also for a failing sweep job), identities for W&B's
comparison views, and logger=none off."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from report.tracking import (
    Tracker,
    evaluate_identity,
    log_evaluation,
    predictor_label,
    start_run,
    sweep_group,
    tracking_run,
    train_identity,
    wandb_mode,
)
from tests.report.conftest import run_evaluate


def offline_runs(root: Path) -> list[Path]:
    return sorted(root.rglob("offline-run-*"))


def exit_code_logged(run_dir: Path) -> int | None:
    """The exit code wandb finished the run with, from the run's own debug log."""
    for line in (run_dir / "logs" / "debug.log").read_text().splitlines():
        if "got exitcode:" in line:
            return int(line.rsplit(":", 1)[1])
    return None


class Listener:
    """A local TCP server that counts every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list]]:
    """No API key; every internet socket connect or DNS lookup in this process fails and is
    recorded; wandb's own service process is pointed at a local listener (base URL and proxies)
    so that any request it made would be counted there.

    wandb caches its settings and its service process per Python process: ``wandb.teardown()``
    before and after makes the service start under this fixture's environment.
    """
    import wandb

    wandb.teardown()
    listener = Listener()
    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(k, raising=False)
    url = f"http://127.0.0.1:{listener.port}"
    for k in ("WANDB_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(k, url)
    seen: dict[str, list] = {"connect": [], "dns": [], "listener": [listener]}
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            seen["connect"].append(address)
            raise OSError(f"test: network access blocked ({address})")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            seen["connect"].append(address)
            return 111  # ECONNREFUSED
        return real_connect_ex(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        seen["dns"].append(host)
        raise socket.gaierror(f"test: DNS blocked ({host})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        yield seen
    finally:
        monkeypatch.setattr(socket, "getaddrinfo", real_getaddrinfo)
        monkeypatch.setattr(socket.socket, "connect", real_connect)
        wandb.teardown()
        listener.close()


def test_offline_without_key_never_touches_the_network(no_network: dict, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    png = tmp_path / "fig.png"
    plt.plot([0, 1], [0, 1])
    plt.savefig(png)
    plt.close("all")
    ident = evaluate_identity(
        policy="fifo", workload="default", seed=0, engine="sim", utilisation=0.9, group="g"
    )
    with start_run(
        {"enabled": True, "project": "driftsched", "mode": None}, ident, dir=tmp_path
    ) as tracker:
        assert tracker.enabled and tracker.mode == "offline"
        tracker.log_metrics({"a": {"b": 1.0}}, step=0)
        log_evaluation(
            tracker,
            {
                "latency": {"e2e_s": {"mean": 3.0}},
                "per_tier": {"premium": {"n": 2, "latency": {}, "slo": {}}},
            },
            figures={"fig": png},
        )
        tracker.log_table("t", pd.DataFrame({"x": [1, 2]}))
    assert tracker.exit_code == 0
    runs = offline_runs(tmp_path)
    assert len(runs) == 1 and exit_code_logged(runs[0]) == 0
    assert list(runs[0].glob("run-*.wandb"))
    assert no_network["connect"] == [] and no_network["dns"] == []
    assert no_network["listener"][0].connections == 0  # nor wandb's service process


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_the_network_guard_detects_an_online_run(
    no_network: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard can fail: an online start (fake key) reaches the listener, and the tracker
    falls back to offline instead of blocking."""
    monkeypatch.setenv("WANDB_API_KEY", "local-" + "0" * 40)
    monkeypatch.setattr("report.tracking.INIT_TIMEOUT_S", 5.0)
    with (
        pytest.warns(UserWarning, match="logging offline"),
        tracking_run(
            enabled=True, project="p", job_type="evaluate", name="n", config={}, dir=tmp_path
        ) as tracker,
    ):
        tracker.log_summary({"x": 1})
    assert tracker.mode == "offline" and tracker.exit_code == 0
    assert no_network["listener"][0].connections > 0


def test_failing_body_finishes_the_run_with_exit_code_1(no_network: dict, tmp_path: Path) -> None:
    import wandb

    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking_run(
            enabled=True,
            project="p",
            job_type="evaluate",
            name="fails",
            config={"seed": 0},
            dir=tmp_path,
        ) as tracker,
    ):
        tracker.log_summary({"partial": 1.0})
        raise RuntimeError("boom")
    assert tracker.exit_code == 1
    assert wandb.run is None  # finished, not dangling
    runs = offline_runs(tmp_path)
    assert len(runs) == 1 and exit_code_logged(runs[0]) == 1


def test_logger_none_is_off(tmp_path: Path) -> None:
    with start_run(
        {"enabled": False},
        train_identity(predictor="lightgbm", data="castillo", seed=0),
        dir=tmp_path,
    ) as tracker:
        assert type(tracker) is Tracker and not tracker.enabled
        tracker.log_summary({"x": 1})
    assert tracker.exit_code == 0
    assert not (tmp_path / "wandb").exists()
    with (
        pytest.raises(ValueError),
        tracking_run(enabled=False, project="p", job_type="train", name="n", config={}) as t2,
    ):
        raise ValueError("x")
    assert t2.exit_code == 1


def test_mode_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(None) == "offline"
    assert wandb_mode("online") == "offline"  # no key: never online (wandb would prompt)
    assert wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(None) == "online"
    assert wandb_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(None) == "offline"


def test_identity_is_flat_and_grouped_by_sweep() -> None:
    ident = evaluate_identity(
        policy="drift",
        workload="default",
        seed=2,
        engine="sim",
        utilisation=0.9,
        rate_rps=1.2,
        policy_params={
            "_target_": "scheduler.policies.drift.DriftPolicy",
            "predictor_dir": "artifacts",
            "risk": 0.25,
            "tier_weight": {"premium": 1.0},
        },
        engine_params={"profile": "l4-llama3-8b"},
        group=sweep_group("multirun/policies_x_load"),
    )
    assert ident.job_type == "evaluate" and ident.name == "drift-default-2"
    assert ident.group == "policies_x_load"
    assert "engine:sim" in ident.tags
    c = ident.config
    assert {
        k: c[k] for k in ("policy", "predictor", "workload", "utilisation", "engine", "seed")
    } == {
        "policy": "drift",
        "predictor": "lightgbm",
        "workload": "default",
        "utilisation": 0.9,
        "engine": "sim",
        "seed": 2,
    }
    assert c["policy_params.risk"] == 0.25 and c["policy_params.tier_weight.premium"] == 1.0
    assert c["engine_params.profile"] == "l4-llama3-8b"
    assert all(not isinstance(v, dict) for v in c.values())
    assert sweep_group("multirun/evaluate/2026-11-27/20-29-18") == "evaluate_2026-11-27_20-29-18"
    assert sweep_group("/scratch/me/sweeps/x") == "x"
    assert sweep_group(None) is None  # outside a Hydra multirun: a single run, no group
    assert (
        predictor_label({"_target_": "x.DriftSchedPolicy", "correction": False})
        == "paper_no_correction"
    )
    assert predictor_label({"predictor_dir": "artifacts/transformer"}) == "transformer"
    assert (
        train_identity(predictor="lightgbm", data="castillo", seed=0).name
        == "train-lightgbm-castillo-0"
    )


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_failing_sweep_job_still_finishes_wandb(tmp_path: Path) -> None:
    """A real evaluate.py multirun job that raises mid-simulation, logging to wandb (offline:
    no key): the job fails, its wandb run is finished with exit code 1, and compare.py sees an
    incomplete run."""
    import compare

    sweep = tmp_path / "sweep"
    proc = run_evaluate(
        [
            "-m",
            "+policy=fifo",
            "seed=0",
            "workload.n_requests=30",
            "policy._target_=tests.report.failing_policy.FailingPolicy",
            f"hydra.sweep.dir={sweep}",
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert "deliberate failure" in proc.stderr
    runs = offline_runs(sweep)
    assert len(runs) == 1, proc.stderr[-2000:]
    assert exit_code_logged(runs[0]) == 1
    assert compare.main([str(sweep), "--out", str(tmp_path / "cmp")]) == 2
