#!/usr/bin/python3
"""Store semantics as a real Python client sees them (Debian's python3-grpcio), beyond BuffDB's examples.

Transactions (own writes visible, isolation, a unique-index violation failing alone inside one, rollback,
NOT_FOUND after the end), the buffdb.index service (create, find, a FindRange paged with the returned
cursor) and the Query service's google.protobuf.Any mapping of every SQLite storage class (NULL, INTEGER
at the int64 extremes, REAL, TEXT, BLOB) with column_names. Uses keys under a per-run prefix, so it can run
against a daemon other clients use. Usage: semantics.py HOST:PORT. Exits non-zero on mismatch.
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
PROTOS = ("kv.proto", "index.proto", "query.proto")


def generate(out):
    """Generates message modules with Debian's protoc and stubs with grpc_tools (see compat.py)."""
    subprocess.run(["protoc", "-I", PROTO_DIR, "-I", "/usr/include", "--python_out", out, *PROTOS], check=True)
    plain = os.path.join(out, "plain")
    os.mkdir(plain)
    for name in PROTOS:
        with open(os.path.join(PROTO_DIR, name)) as src, open(os.path.join(plain, name), "w") as dst:
            dst.write(re.sub(r"\boptional\s+", "", src.read()))
    wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    if protoc.main(["protoc", "-I", plain, "-I", wkt, "--grpc_python_out", out, *PROTOS]) != 0:
        sys.exit("grpc_tools protoc failed")
    sys.path.insert(0, out)


def expect_code(code, fn):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        return e.details()
    raise AssertionError("expected %s, the call succeeded" % code)


def main():
    addr = sys.argv[1] if len(sys.argv) > 1 else "[::1]:9313"
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        import kv_pb2, kv_pb2_grpc, index_pb2, index_pb2_grpc, query_pb2, query_pb2_grpc  # noqa: E401
        from google.protobuf import struct_pb2, wrappers_pb2

        p = "py-sem-%d-%s/" % (os.getpid(), re.sub(r"[^0-9a-z]", "", addr))
        with grpc.insecure_channel(addr) as channel:
            kv = kv_pb2_grpc.KvStub(channel)
            ix = index_pb2_grpc.IndexStub(channel)

            def set_(key, value, tx=None):
                return list(kv.Set(iter([kv_pb2.SetRequest(key=key, value=value, transaction_id=tx)])))

            def get(key, tx=None):
                return [r.value for r in kv.Get(iter([kv_pb2.GetRequest(key=key, transaction_id=tx)]))]

            # A unique index over $.serial for this run's keys.
            ix.CreateIndex(index_pb2.CreateIndexRequest(index=index_pb2.IndexDefinition(
                name=p + "serial", type=index_pb2.BTREE, unique=True, json_path="$.serial", key_prefix=p,
                value_kind=index_pb2.NUMBER)))
            set_(p + "a", '{"serial": 1}')

            # Transactions: own writes visible inside, invisible outside until commit; a violation of
            # the unique index fails that Set with ALREADY_EXISTS and the transaction goes on.
            tx = kv.BeginTransaction(kv_pb2.BeginTransactionRequest(timeout_ms=10000)).transaction_id
            set_(p + "b", '{"serial": 2}', tx)
            assert get(p + "b", tx) == ['{"serial": 2}']
            expect_code(grpc.StatusCode.NOT_FOUND, lambda: get(p + "b"))
            d = expect_code(grpc.StatusCode.ALREADY_EXISTS, lambda: set_(p + "c", '{"serial": 1}', tx))
            assert "serial" in d, d
            set_(p + "c", '{"serial": 3}', tx)
            assert kv.CommitTransaction(kv_pb2.CommitTransactionRequest(transaction_id=tx)).success
            assert get(p + "c") == ['{"serial": 3}']
            expect_code(grpc.StatusCode.NOT_FOUND,
                        lambda: kv.CommitTransaction(kv_pb2.CommitTransactionRequest(transaction_id=tx)))

            # Rollback discards; a read-only transaction refuses writes.
            tx = kv.BeginTransaction(kv_pb2.BeginTransactionRequest()).transaction_id
            set_(p + "d", '{"serial": 4}', tx)
            assert kv.RollbackTransaction(kv_pb2.RollbackTransactionRequest(transaction_id=tx)).success
            expect_code(grpc.StatusCode.NOT_FOUND, lambda: get(p + "d"))
            ro = kv.BeginTransaction(kv_pb2.BeginTransactionRequest(read_only=True)).transaction_id
            expect_code(grpc.StatusCode.FAILED_PRECONDITION, lambda: set_(p + "e", "x", ro))
            kv.RollbackTransaction(kv_pb2.RollbackTransactionRequest(transaction_id=ro))

            # Eq/NotEq: true for no keys.
            assert kv.Eq(iter([])).value and kv.NotEq(iter([])).value

            # FindRange paged two at a time with the returned cursor, keys sharing no value.
            for i in range(5, 10):
                set_(p + "k%d" % i, '{"serial": %d}' % i)
            seen, after = [], None
            while True:
                page = list(ix.FindRange(index_pb2.FindRangeRequest(index=p + "serial", limit=2, after=after)))
                if not page:
                    break
                seen += [(r.indexed_value, r.key) for r in page]
                after = index_pb2.Cursor(indexed_value=page[-1].indexed_value, key=page[-1].key)
            assert [k for _, k in seen] == [p + x for x in ("a", "b", "c", "k5", "k6", "k7", "k8", "k9")], seen
            assert seen[0][0] == "1", seen
            found = list(ix.Find(index_pb2.FindRequest(index=p + "serial", value="3")))
            assert [(r.key, r.value) for r in found] == [(p + "c", '{"serial": 3}')], found
            ix.DropIndex(index_pb2.DropIndexRequest(name=p + "serial"))

            # Query: every SQLite storage class as an Any, and the column names.
            q = query_pb2_grpc.QueryStub(channel)
            rows = list(q.Query(iter([query_pb2.RawQuery(query=(
                "SELECT NULL AS n, 9223372036854775807 AS max, -9223372036854775808 AS min, 2.5 AS r, "
                "'tëxt' AS t, X'00ff' AS b"))])))
            assert len(rows) == 1, rows
            assert list(rows[0].column_names) == ["n", "max", "min", "r", "t", "b"], rows[0].column_names
            want = [(struct_pb2.Value, None), (wrappers_pb2.Int64Value, 2**63 - 1), (wrappers_pb2.Int64Value, -2**63),
                    (wrappers_pb2.DoubleValue, 2.5), (wrappers_pb2.StringValue, "tëxt"),
                    (wrappers_pb2.BytesValue, b"\x00\xff")]
            for field, (cls, value) in zip(rows[0].fields, want):
                m = cls()
                assert field.Unpack(m), (field.type_url, cls)
                if cls is struct_pb2.Value:
                    assert m.WhichOneof("kind") == "null_value", m
                else:
                    assert m.value == value, (m.value, value)
            expect_code(grpc.StatusCode.PERMISSION_DENIED,
                        lambda: list(q.Query(iter([query_pb2.RawQuery(query="DELETE FROM kv")]))))
    print("python semantics ok against %s" % addr)


if __name__ == "__main__":
    main()
