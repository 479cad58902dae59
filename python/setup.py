"""Build hook: gemmad_client/gemma_pb2.py is generated from ../proto/gemma.proto at build time
(never committed), with grpcio-tools' protoc when installed, else the `protoc` on PATH (Debian:
protobuf-compiler). GEMMAD_PROTO_DIR overrides where gemma.proto is looked for."""
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def find_proto_dir():
    for d in [os.environ.get("GEMMAD_PROTO_DIR"), os.path.join(HERE, "..", "proto"), os.path.join(HERE, "proto")]:
        if d and os.path.isfile(os.path.join(d, "gemma.proto")):
            return os.path.abspath(d)
    sys.exit("gemmad-client: gemma.proto not found (build from the gemmad repository, or set GEMMAD_PROTO_DIR)")


def generate(out_dir):
    proto_dir = find_proto_dir()
    args = ["-I" + proto_dir, "--python_out=" + out_dir, os.path.join(proto_dir, "gemma.proto")]
    try:
        from grpc_tools import protoc  # same protoc as the protobuf runtime it pins

        if protoc.main(["protoc"] + args) != 0:
            sys.exit("gemmad-client: grpc_tools.protoc failed on gemma.proto")
        return
    except ImportError:
        pass
    exe = shutil.which("protoc")
    if not exe:
        sys.exit("gemmad-client: need protoc (apt-get install protobuf-compiler, or pip install grpcio-tools)")
    subprocess.check_call([exe] + args)


class BuildPy(build_py):
    def run(self):
        super().run()
        out = os.path.join(self.build_lib, "gemmad_client")
        os.makedirs(out, exist_ok=True)
        generate(out)


setup(cmdclass={"build_py": BuildPy})
