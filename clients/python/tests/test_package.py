"""The package installs from a plain checkout with no network and no build
tools: the gRPC stubs are checked in (kvgate/v1) and build_backend.py builds
the wheel with the standard library. Each test installs into a fresh virtual
environment with pip's --no-index, a PATH without protoc, and no PYTHONPATH.
"""

import os
import subprocess
import sys
import zipfile

import pytest

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _venv(path, *options):
    subprocess.run([sys.executable, "-m", "venv", *options, path], check=True,
                   timeout=120)
    return os.path.join(path, "bin", "python")


def _run(python, *args, cwd=None):
    """Runs `python args` with nothing of this environment but HOME: PATH
    holds the virtual environment's bin alone (no protoc there)."""
    env = {"PATH": os.path.dirname(python), "HOME": os.path.dirname(python),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    return subprocess.run([python, *args], env=env, cwd=cwd, timeout=180,
                          capture_output=True, text=True)


def test_installs_with_neither_setuptools_nor_wheel_nor_protoc(tmp_path):
    python = _venv(str(tmp_path / "venv"))
    removed = _run(python, "-m", "pip", "uninstall", "-y", "setuptools")
    assert removed.returncode == 0, removed.stderr
    for module in ("setuptools", "wheel"):
        assert _run(python, "-c", f"import {module}").returncode != 0, module
    # With build isolation (pip's default): nothing to fetch for the build.
    installed = _run(python, "-m", "pip", "install", "--no-index", "--no-deps",
                     PACKAGE_DIR)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    files = _run(python, "-m", "pip", "show", "-f", "kvgate")
    assert files.returncode == 0, files.stderr
    for name in ("kvgate/v1/admission_pb2.py", "kvgate/v1/admission_pb2_grpc.py",
                 "kvgate/v1/__init__.py", "kvgate/vllm.py", "kvgate/client.py"):
        assert name in files.stdout, files.stdout


def test_installed_package_imports_outside_the_checkout(tmp_path):
    # System site packages give grpcio and protobuf (Debian's), as a vLLM
    # image gives its own.
    python = _venv(str(tmp_path / "venv"), "--system-site-packages")
    installed = _run(python, "-m", "pip", "install", "--no-index", "--no-deps",
                     "--no-build-isolation", PACKAGE_DIR)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    check = _run(python, "-c",
                 "import kvgate, kvgate.client, kvgate.vllm\n"
                 "from kvgate.v1 import admission_pb2, admission_pb2_grpc\n"
                 "assert admission_pb2.AdmitRequest(model='m').model == 'm'\n"
                 "assert admission_pb2_grpc.AdmissionStub\n"
                 "print(kvgate.__file__)", cwd=str(tmp_path))
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(str(tmp_path / "venv")), check.stdout
    assert PACKAGE_DIR not in check.stdout


def test_wheel_holds_the_package_and_its_metadata(tmp_path):
    sys.path.insert(0, PACKAGE_DIR)
    try:
        import build_backend
    finally:
        sys.path.remove(PACKAGE_DIR)
    assert build_backend.get_requires_for_build_wheel() == []
    name = build_backend.build_wheel(str(tmp_path))
    with zipfile.ZipFile(tmp_path / name) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read("kvgate-0.1.0.dist-info/METADATA").decode()
        record = wheel.read("kvgate-0.1.0.dist-info/RECORD").decode()
    assert {"kvgate/__init__.py", "kvgate/v1/admission_pb2.py",
            "kvgate/v1/admission_pb2_grpc.py"} <= names
    assert not any("__pycache__" in n for n in names)
    assert "Requires-Dist: grpcio>=1.51" in metadata
    assert "Requires-Dist: protobuf>=4.21" in metadata
    assert all(n in record for n in names)


@pytest.mark.parametrize("name", ["admission_pb2.py", "admission_pb2_grpc.py"])
def test_stubs_are_checked_in(name):
    # Their drift from the proto is ctest's python_stubs_current.
    assert os.path.exists(os.path.join(PACKAGE_DIR, "kvgate", "v1", name))
