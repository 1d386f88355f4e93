"""Build hook: generates kvgate/v1 from proto/ into the wheel.

Runs the same command as clients/python/CMakeLists.txt:

    protoc -I<proto> --python_out=<out> --grpc_python_out=<out> \\
      --plugin=protoc-gen-grpc_python=<grpc_python_plugin> \\
      <proto>/kvgate/v1/admission.proto

PROTOC, GRPC_PYTHON_PLUGIN and KVGATE_PROTO_DIR override the tools and the
proto directory (default: ../../proto of this checkout).
"""

import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        proto_dir = os.environ.get("KVGATE_PROTO_DIR",
                                   os.path.join(HERE, "..", "..", "proto"))
        proto = os.path.join(proto_dir, "kvgate", "v1", "admission.proto")
        if not os.path.exists(proto):
            raise SystemExit(f"kvgate: {proto} not found; build from a kvgate "
                             "checkout or set KVGATE_PROTO_DIR")
        protoc = os.environ.get("PROTOC") or shutil.which("protoc")
        plugin = os.environ.get("GRPC_PYTHON_PLUGIN") or shutil.which("grpc_python_plugin")
        if not protoc or not plugin:
            raise SystemExit("kvgate: protoc and grpc_python_plugin are needed "
                             "(Debian: protobuf-compiler protobuf-compiler-grpc)")
        out = self.build_lib
        os.makedirs(os.path.join(out, "kvgate", "v1"), exist_ok=True)
        subprocess.check_call([
            protoc, f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
            f"--plugin=protoc-gen-grpc_python={plugin}", proto])
        with open(os.path.join(out, "kvgate", "v1", "__init__.py"), "w") as f:
            f.write("# Generated at build time from proto/kvgate/v1/admission.proto.\n")


setup(cmdclass={"build_py": BuildPyWithStubs})
