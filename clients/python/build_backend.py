"""kvgate's PEP 517 build backend: pure Python, no build requirements.

The package is pure Python and its gRPC stubs are checked in (kvgate/v1,
refreshed by tools/generate_stubs.py), so building it only zips files. Doing
that here, with the standard library alone, is what lets

    pip install --no-index --no-deps ./clients/python

work offline on a machine without protoc, setuptools or the `wheel` package
(a vLLM image, an air-gapped node): pip has no build requirement to fetch.

Implements build_wheel, build_sdist and build_editable (PEP 660: a .pth file
pointing at this directory).
"""

import base64
import hashlib
import io
import os
import tarfile
import zipfile

NAME = "kvgate"
VERSION = "0.1.0"
SUMMARY = ("kvgate client: grpc.aio stubs and an ASGI admission middleware "
           "for vLLM's OpenAI server")
REQUIRES_PYTHON = ">=3.9"
DEPENDENCIES = ("grpcio>=1.51", "protobuf>=4.21")
TEST_EXTRA = ("fastapi", "uvicorn", "httpx", "pytest")

HERE = os.path.dirname(os.path.abspath(__file__))
DIST_INFO = f"{NAME}-{VERSION}.dist-info"
TAG = "py3-none-any"


def _metadata() -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {NAME}", f"Version: {VERSION}",
             f"Summary: {SUMMARY}", f"Requires-Python: {REQUIRES_PYTHON}"]
    lines += [f"Requires-Dist: {d}" for d in DEPENDENCIES]
    lines.append("Provides-Extra: test")
    lines += [f'Requires-Dist: {d}; extra == "test"' for d in TEST_EXTRA]
    lines.append("Description-Content-Type: text/markdown")
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return "\n".join(lines) + "\n\n" + f.read()


def _wheel_file() -> str:
    return ("Wheel-Version: 1.0\nGenerator: kvgate build_backend\n"
            f"Root-Is-Purelib: true\nTag: {TAG}\n")


def _package_files():
    """(archive name, path) of every .py file of the kvgate package, sorted."""
    found = []
    for root, dirs, files in os.walk(os.path.join(HERE, NAME)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                found.append((os.path.relpath(path, HERE).replace(os.sep, "/"),
                              path))
    return found


def _write_wheel(wheel_directory, contents) -> str:
    """Writes a wheel of `contents` (archive name -> bytes) plus RECORD."""
    filename = f"{NAME}-{VERSION}-{TAG}.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w",
                         zipfile.ZIP_DEFLATED) as wheel:
        for arcname, data in contents.items():
            wheel.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(
                hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")
        record.append(f"{DIST_INFO}/RECORD,,")
        wheel.writestr(f"{DIST_INFO}/RECORD", "\n".join(record) + "\n")
    return filename


def _dist_info():
    return {f"{DIST_INFO}/METADATA": _metadata().encode(),
            f"{DIST_INFO}/WHEEL": _wheel_file().encode(),
            f"{DIST_INFO}/top_level.txt": f"{NAME}\n".encode()}


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    contents = {}
    for arcname, path in _package_files():
        with open(path, "rb") as f:
            contents[arcname] = f.read()
    contents.update(_dist_info())
    return _write_wheel(wheel_directory, contents)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    contents = {f"__editable__.{NAME}.pth": (HERE + "\n").encode()}
    contents.update(_dist_info())
    return _write_wheel(wheel_directory, contents)


def build_sdist(sdist_directory, config_settings=None):
    base = f"{NAME}-{VERSION}"
    filename = f"{base}.tar.gz"
    names = ["pyproject.toml", "build_backend.py", "README.md"]
    names += [arcname for arcname, _ in _package_files()]
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz") as sdist:
        for name in names:
            sdist.add(os.path.join(HERE, name), arcname=f"{base}/{name}")
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        data = _metadata().encode()
        info.size = len(data)
        sdist.addfile(info, io.BytesIO(data))
    return filename
