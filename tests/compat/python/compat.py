#!/usr/bin/python3
"""BuffDB compatibility check with a real Python client (Debian's python3-grpcio and grpc_tools).

Generates Python code from buffdbd's api/proto/*.proto into a temporary directory at run time (as
BuffDB's Python example does with its own protos), then: KvStub Set then Get; blob Store with and without
metadata and Get, checking metadata presence. Usage: compat.py HOST:PORT. Exits non-zero on mismatch.
"""
import os
import re
import subprocess
import sys
import tempfile

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "..", "api", "proto"))


def generate(out):
    """Generates kv/blob message modules and gRPC stubs into out.

    Debian's grpc_tools bundles libprotoc 3.5, which predates proto3 `optional` (BuffDB's protos use
    it for presence, e.g. blob metadata). So the message modules come from Debian's protoc 3.21
    (protobuf-compiler, matching python3-protobuf), and grpc_tools generates only the *_pb2_grpc
    stubs, from a copy with `optional` removed: stubs name services, methods and message classes,
    never fields, so they are identical either way.
    """
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
    addr = sys.argv[1] if len(sys.argv) > 1 else "[::1]:9313"
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        import kv_pb2, kv_pb2_grpc, blob_pb2, blob_pb2_grpc  # noqa: E401 (generated above)

        with grpc.insecure_channel(addr) as channel:
            kv = kv_pb2_grpc.KvStub(channel)
            key = "python-compat-%d-%s" % (os.getpid(), addr)
            set_resp = list(kv.Set(iter([kv_pb2.SetRequest(key=key, value="value from python")])))
            assert [r.key for r in set_resp] == [key], set_resp
            got = list(kv.Get(iter([kv_pb2.GetRequest(key=key)])))
            assert [r.value for r in got] == ["value from python"], got

            try:
                list(kv.Get(iter([kv_pb2.GetRequest(key=key + "-missing")])))
                raise AssertionError("Get of a missing key succeeded")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()
                assert "-missing" in e.details(), e.details()

            blob = blob_pb2_grpc.BlobStub(channel)
            stored = list(blob.Store(iter([
                blob_pb2.StoreRequest(bytes=b"abcdef", metadata="{ offset: 6 }"),
                blob_pb2.StoreRequest(bytes=b"ghijkl"),
                blob_pb2.StoreRequest(bytes=b"", metadata=""),
            ])))
            ids = [r.id for r in stored]
            assert len(ids) == 3 and ids[0] < ids[1] < ids[2], ids
            got = list(blob.Get(iter([blob_pb2.GetRequest(id=i) for i in ids])))
            assert [g.bytes for g in got] == [b"abcdef", b"ghijkl", b""], got
            assert got[0].HasField("metadata") and got[0].metadata == "{ offset: 6 }"
            assert not got[1].HasField("metadata"), "absent metadata must stay absent"
            assert got[2].HasField("metadata") and got[2].metadata == "", '"" metadata must stay ""'
    print("python compat ok against %s (blob ids %s)" % (addr, ids))


if __name__ == "__main__":
    main()
