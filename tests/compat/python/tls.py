#!/usr/bin/python3
"""TLS check with a real Python client (Debian's python3-grpcio): a daemon serving mutual TLS.

Usage: tls.py HOST:PORT CA_CERT CLIENT_CERT CLIENT_KEY. With the CA and the client certificate, a
KV Set then Get works; without the client certificate, or in plaintext, the call fails UNAVAILABLE.
Exits non-zero on mismatch.
"""
import os
import sys
import tempfile

# The refused calls below make gRPC core log the TLS alerts it got, which are expected here.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
import grpc  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compat import generate  # noqa: E402


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    addr, ca, cert, key = sys.argv[1:5]
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        import kv_pb2, kv_pb2_grpc  # noqa: E401 (generated above)

        creds = grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))
        with grpc.secure_channel(addr, creds) as channel:
            kv = kv_pb2_grpc.KvStub(channel)
            list(kv.Set(iter([kv_pb2.SetRequest(key="python-tls", value="over mutual TLS")])))
            got = list(kv.Get(iter([kv_pb2.GetRequest(key="python-tls")])))
            assert [r.value for r in got] == ["over mutual TLS"], got

        for name, channel in (
            ("no client certificate", grpc.secure_channel(addr, grpc.ssl_channel_credentials(root_certificates=read(ca)))),
            ("plaintext", grpc.insecure_channel(addr)),
        ):
            with channel:
                try:
                    list(kv_pb2_grpc.KvStub(channel).Get(iter([kv_pb2.GetRequest(key="python-tls")]), timeout=10))
                    raise AssertionError("%s: Get succeeded" % name)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE, (name, e.code(), e.details())
    print("python tls ok against %s" % addr)


if __name__ == "__main__":
    main()
