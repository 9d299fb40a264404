#!/usr/bin/python3
"""Registry compatibility check with a real Python client (Debian's python3-grpcio, grpc_tools).

Does what BuffDB's Python model example does: lists models from the KV key model:global:index and
model:{name}:index, deserializes model:{name}:{version}:metadata strictly with ModelInfo(**json) (an
unknown or missing field fails), and loads a single-file model by concatenating the blobs in
blob_ids. Usage: registry.py HOST:PORT NAME VERSION SHA256 SIZE. Exits non-zero on mismatch.
"""
import dataclasses
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "..", "api", "proto"))


@dataclasses.dataclass
class ModelInfo:
    """BuffDB's ModelInfo: exactly these fields."""
    name: str
    version: str
    framework: str
    description: str
    input_shape: List[int]
    output_shape: List[int]
    blob_ids: List[int]
    created_at: str
    parameters: Dict[str, str]


def generate(out):
    """Generates kv/blob modules; see compat.py for why protoc and grpc_tools split the work."""
    subprocess.run(["protoc", "-I", PROTO_DIR, "--python_out", out, "kv.proto", "blob.proto"], check=True)
    plain = os.path.join(out, "plain")
    os.mkdir(plain)
    for name in ("kv.proto", "blob.proto"):
        with open(os.path.join(PROTO_DIR, name)) as src, open(os.path.join(plain, name), "w") as dst:
            dst.write(re.sub(r"\boptional\s+", "", src.read()))
    wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    if protoc.main(["protoc", "-I", plain, "-I", wkt, "--grpc_python_out", out, "kv.proto", "blob.proto"]) != 0:
        sys.exit("grpc_tools protoc failed")
    sys.path.insert(0, out)


def main():
    addr, name, version, want_sha, want_size = sys.argv[1:6]
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        import kv_pb2, kv_pb2_grpc, blob_pb2, blob_pb2_grpc  # noqa: E401 (generated above)

        with grpc.insecure_channel(addr) as channel:
            kv = kv_pb2_grpc.KvStub(channel)
            blob = blob_pb2_grpc.BlobStub(channel)

            def get(key):
                return list(kv.Get(iter([kv_pb2.GetRequest(key=key)])))[0].value

            models = json.loads(get("model:global:index"))
            assert name in models, models
            versions = json.loads(get("model:%s:index" % name))
            assert version in versions, versions
            info = ModelInfo(**json.loads(get("model:%s:%s:metadata" % (name, version))))
            assert (info.name, info.version) == (name, version), info
            datetime.datetime.fromisoformat(info.created_at.replace("Z", "+00:00"))
            assert info.blob_ids, info

            h = hashlib.sha256()
            size = 0
            for resp in blob.Get(iter([blob_pb2.GetRequest(id=i) for i in info.blob_ids])):
                h.update(resp.bytes)
                size += len(resp.bytes)
            assert size == int(want_size), (size, want_size)
            assert h.hexdigest() == want_sha, "concatenated blob_ids do not hash to the pushed file"
            print("python registry compat: ok (%s:%s, %d blobs, %d bytes, models %s)"
                  % (name, version, len(info.blob_ids), size, ",".join(models)))


if __name__ == "__main__":
    main()
