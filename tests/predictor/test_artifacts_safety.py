"""Issue 9 part 3: damaged artifacts fail clearly, and nothing in the toolkit can execute code
from an artifact or model directory.

Every damage case is applied to a fresh copy of a tiny real artifact root (LightGBM length +
drift, trained in a module fixture through the predictor package's API) and must raise
``ArtifactError`` whose message names the damaged file (or directory) -- through the model
class's ``load`` and through the serving entry point ``load_predictor`` the policies use.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from predictor.artifacts import (
    META,
    ArtifactError,
    ArtifactNotFoundError,
    file_sha256,
)
from predictor.lgbm import LightGBMDrift, LightGBMLength
from predictor.serving import load_predictor
from scheduler.sim.synthetic import synthetic_frame
from tests.tiny_predictor import save_tiny_predictor

pytestmark = pytest.mark.reliability  # the campaign of docs/RELIABILITY.md

REPO = Path(__file__).resolve().parents[2]
# the toolkit's own code (tests excluded: they may mention the forbidden names on purpose)
PACKAGES = ("data", "predictor", "scheduler", "report", "scripts", "benchmarks")

WORDS = np.array(["explain", "summarize", "what", "list", "code", "report", "brief", "why"])


def train_tiny_artifacts(root: Path, n: int = 400, seed: int = 3) -> Path:
    """A real length + drift artifact root (LightGBM, a few hundred rows, ~1 s on one core)."""
    rng = np.random.default_rng(seed)
    df = synthetic_frame(n, seed=seed)
    long = df["output_tokens"].to_numpy() > np.median(df["output_tokens"])
    df["prompt"] = [
        " ".join(rng.choice(WORDS, size=3)) + (" report detail" if lg else " brief what")
        for lg in long
    ]
    df["prompt_id"] = [f"p{i}" for i in range(n)]
    return save_tiny_predictor(root, df, length_trees=15, drift_trees=10, min_count=3)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_artifacts(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy to damage."""
    dst = tmp_path / "artifacts"
    shutil.copytree(pristine, dst)
    return dst


def _meta(d: Path) -> dict:
    return json.loads((d / META).read_text())


def _write_meta(d: Path, meta: dict) -> None:
    (d / META).write_text(json.dumps(meta))


def _resign(d: Path, name: str) -> None:
    """Update the sha256 of ``name`` in meta.json (an attacker who also edits the meta)."""
    meta = _meta(d)
    meta["files"][name] = file_sha256(d / name)
    _write_meta(d, meta)


def _flip_byte(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01
    p.write_bytes(bytes(b))


def _truncate(p: Path) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


# (case id, which artifact, damage, substring the error must contain)
Damage = Callable[[Path], None]
CASES: list[tuple[str, str, Damage, str]] = [
    ("tampered_model_txt", "length", lambda d: _flip_byte(d / "model_q50.txt"), "model_q50.txt"),
    ("truncated_model_txt", "length", lambda d: _truncate(d / "model_q90.txt"), "model_q90.txt"),
    (
        "tampered_safetensors",
        "length",
        lambda d: _flip_byte(d / "featurizer.safetensors"),
        "featurizer.safetensors",
    ),
    (
        "truncated_safetensors",
        "length",
        lambda d: _truncate(d / "featurizer.safetensors"),
        "featurizer.safetensors",
    ),
    (
        "tampered_featurizer_json",
        "length",
        lambda d: _flip_byte(d / "featurizer.json"),
        "featurizer.json",
    ),
    ("tampered_drift_model", "drift", lambda d: _flip_byte(d / "model_q50.txt"), "model_q50.txt"),
    ("missing_model_file", "length", lambda d: (d / "model_q50.txt").unlink(), "model_q50.txt"),
    (
        "missing_safetensors",
        "length",
        lambda d: (d / "featurizer.safetensors").unlink(),
        "featurizer.safetensors",
    ),
    (
        "empty_model_file",
        "drift",
        lambda d: (d / "model_q90.txt").write_bytes(b""),
        "model_q90.txt",
    ),
    ("meta_not_json", "length", lambda d: (d / META).write_text("{not json"), META),
    ("meta_truncated", "drift", lambda d: _truncate(d / META), META),
    ("meta_not_object", "length", lambda d: (d / META).write_text("[1, 2]"), META),
    ("meta_binary", "length", lambda d: (d / META).write_bytes(b"\xff\xfe\x00garbage"), META),
    (
        "wrong_artifact_format",
        "length",
        lambda d: _write_meta(d, {**_meta(d), "artifact_format": 99}),
        "artifact format",
    ),
    (
        "wrong_feature_schema",
        "drift",
        lambda d: _write_meta(d, {**_meta(d), "feature_schema_version": -1}),
        "feature schema version",
    ),
    (
        "wrong_kind",
        "length",
        lambda d: _write_meta(d, {**_meta(d), "kind": "lgbm_drift"}),
        "kind",
    ),
    (
        "files_not_a_mapping",
        "length",
        lambda d: _write_meta(d, {**_meta(d), "files": ["model_q50.txt"]}),
        "files",
    ),
    (
        "path_traversal_in_files",
        "length",
        lambda d: _write_meta(d, {**_meta(d), "files": {**_meta(d)["files"], "../x.txt": "0"}}),
        "../x.txt",
    ),
    (
        "extra_unexpected_file",
        "length",
        lambda d: (d / "evil.pkl").write_bytes(b"\x80\x04N."),
        "evil.pkl",
    ),
    (
        "extra_file_in_drift",
        "drift",
        lambda d: (d / "model_q75.txt").write_text("tree\n"),
        "model_q75.txt",
    ),
    # the attacker also re-signs meta.json: the format readers must still refuse the content
    (
        "resigned_garbage_model_txt",
        "length",
        lambda d: ((d / "model_q50.txt").write_text("garbage"), _resign(d, "model_q50.txt")),
        "model_q50.txt",
    ),
    (
        "resigned_garbage_safetensors",
        "length",
        lambda d: (
            (d / "featurizer.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad"),
            _resign(d, "featurizer.safetensors"),
        ),
        "featurizer.safetensors",
    ),
    (
        "resigned_garbage_featurizer_json",
        "length",
        lambda d: ((d / "featurizer.json").write_text("{oops"), _resign(d, "featurizer.json")),
        "featurizer.json",
    ),
    (
        "resigned_garbage_drift_model",
        "drift",
        lambda d: ((d / "model_q90.txt").write_text("not a model"), _resign(d, "model_q90.txt")),
        "model_q90.txt",
    ),
]


def test_pristine_artifacts_load(pristine: Path) -> None:
    pred = load_predictor(pristine)
    assert pred.has_drift
    LightGBMLength.load(pristine / "length")
    LightGBMDrift.load(pristine / "drift")


@pytest.mark.parametrize(("case", "which", "damage", "needle"), CASES, ids=[c[0] for c in CASES])
def test_damaged_artifact_is_refused_naming_the_file(
    root: Path, case: str, which: str, damage: Damage, needle: str
) -> None:
    d = root / which
    damage(d)
    cls = LightGBMLength if which == "length" else LightGBMDrift
    with pytest.raises(ArtifactError) as e:
        cls.load(d)
    msg = str(e.value)
    assert needle in msg, msg
    assert str(d) in msg, msg
    # the serving entry point the policies use reports the same problem
    with pytest.raises(ArtifactError) as e2:
        load_predictor(root)
    assert needle in str(e2.value), str(e2.value)


def test_missing_meta_names_the_train_command(root: Path) -> None:
    (root / "length" / META).unlink()
    with pytest.raises(ArtifactNotFoundError, match=r"python train\.py"):
        load_predictor(root)
    with pytest.raises(ArtifactNotFoundError, match=re.escape(str(root / "length"))):
        LightGBMLength.load(root / "length")


def test_drift_of_another_length_model_is_refused(root: Path, tmp_path: Path) -> None:
    other = train_tiny_artifacts(tmp_path / "other", n=300, seed=9)
    shutil.rmtree(root / "drift")
    shutil.copytree(other / "drift", root / "drift")
    with pytest.raises(ArtifactError, match="another length model"):
        load_predictor(root)


def test_hidden_files_are_tolerated(root: Path) -> None:
    # editor/OS droppings (.DS_Store, .nfs*) are not model files and must not block loading
    (root / "length" / ".DS_Store").write_bytes(b"\x00\x01")
    assert load_predictor(root).has_drift


# ------------------------------------------------------------------ static safety
def _py_files() -> list[Path]:
    files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
    files += sorted(REPO.glob("*.py"))
    return [p for p in files if ".venv" not in p.parts]


UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unsafe_calls(source: str, filename: str) -> list[str]:
    """Code that can execute what an artifact or model directory contains."""
    out: list[str] = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [
                f"{where} import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in UNSAFE_MODULES
            ]
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES
        ):
            out.append(f"{where} from {node.module} import ...")
        elif isinstance(node, ast.Call):
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            owner = (
                f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            )
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            if isinstance(f, ast.Name) and name in ("eval", "exec", "compile"):
                out.append(f"{where} {name}(...)")
            if name == "__import__" and not (node.args and isinstance(node.args[0], ast.Constant)):
                out.append(f"{where} __import__ of a computed name")  # a literal is a plain import
            if name in ("read_pickle", "to_pickle") or (
                owner in UNSAFE_MODULES and name in ("load", "loads")
            ):
                out.append(f"{where} {owner}.{name}(...)")
            if name == "load" and owner == "torch":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    out.append(f"{where} torch.load without weights_only=True")
            if name == "load" and owner in ("np", "numpy"):
                ap = kw.get("allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    out.append(f"{where} np.load(allow_pickle=...)")
            if name == "load" and owner == "yaml":
                out.append(f"{where} yaml.load (use yaml.safe_load)")
            tr = kw.get("trust_remote_code")
            if tr is not None and not (isinstance(tr, ast.Constant) and tr.value is False):
                out.append(f"{where} trust_remote_code not literally False")
    return out


def test_detector_catches_every_pattern() -> None:
    # the scanner must be able to fail: each forbidden pattern, and the allowed forms
    bad = {
        "import pickle": 1,
        "from joblib import load": 1,
        "import joblib\njoblib.load('m')": 2,
        "eval('1')": 1,
        "exec('x=1')": 1,
        "__import__(name)": 1,
        "import torch\ntorch.load('m.pt')": 1,
        "import torch\ntorch.load('m.pt', weights_only=False)": 1,
        "AutoModel.from_pretrained('x', trust_remote_code=True)": 1,
        "AutoModel.from_pretrained('x', trust_remote_code=flag)": 1,
        "import pandas as pd\npd.read_pickle('x')": 1,
        "import numpy as np\nnp.load('x', allow_pickle=True)": 1,
        "import yaml\nyaml.load(s)": 1,
    }
    for src, n in bad.items():
        assert len(unsafe_calls(src, "<t>")) == n, src
    ok = [
        "model.eval()",
        "import torch\ntorch.load('m.pt', weights_only=True)",
        "AutoModel.from_pretrained('x', trust_remote_code=False)",
        "import numpy as np\nnp.load('x.npy')",
        "df.eval('a - b')",
        "__import__('data.loaders')",
    ]
    for src in ok:
        assert unsafe_calls(src, "<t>") == [], src


def test_no_code_executing_loaders_in_the_toolkit() -> None:
    files = _py_files()
    assert len(files) > 50, "the scan found too few source files: wrong repository root?"
    found: list[str] = []
    for p in files:
        found += unsafe_calls(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))
    assert not found, "code that can execute artifact contents:\n" + "\n".join(found)


def test_artifacts_hold_only_safe_formats(pristine: Path) -> None:
    # what training writes: LightGBM text, safetensors, JSON -- no pickles or torch archives
    allowed = {".txt", ".safetensors", ".json"}
    for p in pristine.rglob("*"):
        if p.is_file():
            assert p.suffix in allowed, p
            assert not p.read_bytes().startswith(b"\x80"), f"{p} looks like a pickle"
    for module in sorted((REPO / "predictor").glob("transformer*.py")):
        src = module.read_text()
        assert "trust_remote_code" not in src or "trust_remote_code=False" in src, module
