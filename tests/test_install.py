"""Installs anywhere: declared dependencies match the imports, and the wheel installs in a fresh venv without
TensorFlow (latest and lowest allowed versions of the runtime's dependencies) and classifies a scan there.

The venv tests build the wheel (`pip wheel --no-deps .`) and install it from the package registry, as a user
would (CI has the registry); they are marked slow (a minute or two each).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

from tumor_edge.envcmd.extras import COMMAND_NEEDS, all_extras

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="tomllib (Python 3.11+) or tomli is needed to read pyproject")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
INSTALL_TIMEOUT_S = 600


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0])


def declared(pyproject: dict = PYPROJECT) -> dict[str, set[str]]:
    """group ('core' or an extra) -> normalised distribution names."""
    groups = {"core": {_requirement_name(r) for r in pyproject["project"]["dependencies"]}}
    for extra, reqs in pyproject["project"]["optional-dependencies"].items():
        groups[extra] = {_requirement_name(r) for r in reqs if not r.startswith("tumor-edge")}
    return groups


def third_party_imports() -> dict[str, list[str]]:
    """top-level module -> the package files importing it (function-level imports included)."""
    found: dict[str, list[str]] = {}
    stdlib = set(sys.stdlib_module_names)
    for path in sorted((REPO / "tumor_edge").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "tumor_edge":
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_declared():
    """Each imported package's distribution is a dependency or in an extra (e.g. the demo's scipy)."""
    dists = metadata.packages_distributions()
    everything = set().union(*declared().values())
    undeclared = {}
    for module, files in third_party_imports().items():
        names = {_norm(d) for d in dists.get(module, [module])}
        if not names & everything:
            undeclared[module] = sorted(set(files))[:3]
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"


def extras_not_declared(pyproject: dict = PYPROJECT) -> list[str]:
    """What the extras table (its own rows, engines' and readers') says that pyproject does not: an extra it does
    not declare, or a module no distribution of the extra provides (among the installed distributions)."""
    dists = metadata.packages_distributions()
    groups = declared(pyproject)
    problems = []
    for extra, modules in all_extras().items():
        if extra not in groups:
            problems.append(f"extra {extra} is not in pyproject")
            continue
        problems += [f"{module} is not provided by the {extra} extra" for module in modules
                     if not {_norm(d) for d in dists.get(module, [module])} & groups[extra]]
    return problems


def test_extras_registry_matches_pyproject():
    """`tumor-edge env` and the missing-extra message name the extra that really provides each module."""
    assert extras_not_declared() == []
    assert {extra for extra, _ in COMMAND_NEEDS.values()} <= set(declared())


def test_lower_bounds_cover_the_apis_used():
    """An API newer than a declared lower bound: `data check` calls np.bitwise_count (NumPy 2.0)."""
    uses_bitwise_count = any("bitwise_count" in p.read_text() for p in (REPO / "tumor_edge").rglob("*.py"))
    bounds = {_requirement_name(r): r for r in PYPROJECT["project"]["dependencies"]}
    if uses_bitwise_count:
        floor = re.search(r">=\s*([\d.]+)", bounds["numpy"]).group(1)
        assert int(floor.split(".")[0]) >= 2, f"np.bitwise_count needs NumPy 2, but pyproject allows {bounds['numpy']}"


# ------------------------------------------------------------------------------------------ fresh venvs (slow)


def lowest_pins() -> list[str]:
    """`name==X` for every `name>=X` runtime dependency: the oldest install pyproject allows."""
    pins = []
    for req in PYPROJECT["project"]["dependencies"]:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([\w.]+)\s*$", req)
        assert match, f"runtime dependency without a plain lower bound: {req}"
        pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


def _run(cmd: list[str], timeout: float = INSTALL_TIMEOUT_S, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TUMOR_EDGE_MODEL")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)])
    assert build.returncode == 0, build.stderr[-2000:]
    (found,) = out.glob("tumor_edge-*.whl")
    return found


@pytest.fixture(scope="module")
def scan_and_bundle(tmp_path_factory) -> tuple[Path, Path, Path]:
    from tests.runtime.models import make_bundle, save_quadrant

    root = tmp_path_factory.mktemp("install-data")
    dataset = root / "dataset"
    for offset, split in ((0, "Training"), (4, "Testing")):  # no byte-identical pair: near-duplicate search runs
        for quadrant, name in enumerate(("glioma", "meningioma")):
            for i in range(2):
                save_quadrant(dataset / split / name / f"{i}.png", quadrant, size=48 + 8 * i + offset)
    return save_quadrant(root / "scan.png", 3), make_bundle(root / "bundle"), dataset


@pytest.mark.slow
@pytest.mark.parametrize("versions", ["latest", "lowest"])
def test_wheel_in_a_fresh_venv_without_tensorflow(wheel, scan_and_bundle, exported_bundle, tmp_path, versions):
    scan, bundle, dataset = scan_and_bundle
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py, cli = env_dir / "bin" / "python", env_dir / "bin" / "tumor-edge"
    pins = lowest_pins() if versions == "lowest" else []
    install = _run([str(py), "-m", "pip", "install", "-q", "--only-binary", ":all:", str(wheel), *pins])
    assert install.returncode == 0, install.stderr[-3000:]
    assert _run([str(py), "-c", "import tensorflow"]).returncode != 0, "TensorFlow is visible in the runtime venv"

    classify = _run([str(cli), "classify", "--json", "--model", str(bundle), str(scan)], cwd=tmp_path)
    assert classify.returncode == 0, classify.stderr
    assert json.loads(classify.stdout)["label"] == "pituitary"

    check = _run([str(cli), "data", "check", str(dataset)], cwd=tmp_path)
    assert check.returncode == 0 and "Traceback" not in check.stderr, check.stderr[-2000:]

    train = _run([str(cli), "train", str(dataset)], cwd=tmp_path)
    assert train.returncode == 1
    assert train.stderr.strip().splitlines() == [
        "error: `tumor-edge train` needs the `train` extra (tensorflow, keras are not installed): "
        "pip install 'tumor-edge[train]'"]

    env = _run([str(cli), "env", "--json"], cwd=tmp_path)
    assert env.returncode == 0, env.stderr
    assert json.loads(env.stdout)["extras"]["train"] is False
    if versions == "latest":
        _verify_on_the_device_install(cli, exported_bundle, tmp_path)
        _signed_bundle_on_the_device_install(py, cli, wheel, exported_bundle, tmp_path)


def _verify_on_the_device_install(cli: Path, exported_bundle: Path, tmp_path: Path) -> None:
    """Issue 19: README step 4 (`pip install tumor-edge`, then `tumor-edge verify BUNDLE`) failed an intact export
    bundle (its TFLite files: 4 problems, each printed twice) and a copy sent without the TFLite files. On the
    runtime-only install: both pass, the TFLite files listed once as not checked here; a tampered one fails."""
    import shutil

    def verify(bundle: Path, *args: str) -> subprocess.CompletedProcess:
        result = _run([str(cli), "verify", str(bundle), *args], cwd=tmp_path)
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        lines = result.stdout.splitlines() + result.stderr.splitlines()
        assert len(lines) == len(set(lines)), f"a line printed twice:\n{result.stdout}{result.stderr}"
        return result

    assert _run([str(cli.parent / "python"), "-c", "import ai_edge_litert"]).returncode != 0
    whole = verify(exported_bundle)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    tflite = sorted(p.name for p in exported_bundle.glob("*.tflite"))
    for name in tflite:
        assert f"integrity: ok  {name}" in whole.stdout, "a file is hashed whatever its engine"
        (line,) = [line for line in whole.stdout.splitlines() if line.startswith(f"not checked here: {name}:")]
        assert "tumor-edge[tflite]" in line, line
    assert all(f"reproduce: ok  {p.name}" in whole.stdout for p in exported_bundle.glob("*.onnx"))
    assert verify(exported_bundle, "--strict").returncode == 1

    onnx_only = tmp_path / "onnx-only"
    shutil.copytree(exported_bundle, onnx_only, ignore=shutil.ignore_patterns("*.tflite"))
    sent = verify(onnx_only)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert all(f"not checked here: {name}: not in this copy of the bundle" in sent.stdout for name in tflite)

    model = onnx_only / "model_int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    tampered = verify(onnx_only)
    errors = [line for line in tampered.stderr.splitlines() if line.startswith("error:")]
    assert tampered.returncode == 1 and len(errors) == 1 and str(model) in errors[0] and "sha256" in errors[0]


@pytest.mark.slow
def test_wheel_carries_the_license(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    license_files = [n for n in names if n.endswith("LICENSE")]
    assert license_files, names
    text = zipfile.ZipFile(wheel).read(license_files[0]).decode()
    assert "Apache License" in text and "Version 2.0" in text
    assert PYPROJECT["project"]["license"] == "Apache-2.0"


def _signed_bundle_on_the_device_install(py: Path, cli: Path, wheel: Path, exported_bundle: Path,
                                         tmp_path: Path) -> None:
    """Issue 22: a signed export bundle verifies on the device install (runtime + the `sign` extra) under
    --trust; a changed byte in any signed file fails verify --trust and classify --trust with one line naming it."""
    import shutil

    pytest.importorskip("model_signing", reason="model-signing (the `sign` extra) signs the bundle here")
    from tests.signing.conftest import write_key_pair
    from tumor_edge.signing.sign import sign_bundle

    install = _run([str(py), "-m", "pip", "install", "-q", "--only-binary", ":all:", f"{wheel}[sign]"])
    assert install.returncode == 0, install.stderr[-3000:]
    private, public = write_key_pair(tmp_path / "keys", "signer")
    signed = tmp_path / "signed"
    shutil.copytree(exported_bundle, signed)
    sign_bundle(signed, private)
    result = _run([str(cli), "verify", "--trust", str(public), str(signed)], cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr

    scan = next(Path(json.loads((signed / "metadata.json").read_text())["provenance"]["data_root"])
                .glob("Testing/*/*.jpg"))
    ok = _run([str(cli), "classify", "--json", "--trust", str(public), "--model", str(signed), str(scan)],
              cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    for name in ("metadata.json", "model_int8.onnx", "parity.md"):
        changed = tmp_path / f"changed-{name}"
        shutil.copytree(signed, changed)
        data = bytearray((changed / name).read_bytes())
        data[len(data) // 3] ^= 0x01
        (changed / name).write_bytes(bytes(data))
        for command in (["verify", "--trust", str(public), str(changed)],
                        ["classify", "--trust", str(public), "--model", str(changed), str(scan)]):
            refused = _run([str(cli), *command], cwd=tmp_path)
            errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
            assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
            assert len(errors) == 1 and name in errors[0], (command[0], name, refused.stderr)
