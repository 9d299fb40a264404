// BuffDB compatibility check with a real Node client: does what BuffDB's TypeScript README example
// does (blob Store of two payloads, one with metadata, then Get them back; KV Set then Get), against
// buffdbd's api/proto/*.proto loaded with @grpc/proto-loader exactly as BuffDB's clients load theirs.
// Usage: node compat.js HOST:PORT   (e.g. [::1]:9313 or 127.0.0.1:9313). Exits non-zero on mismatch.
'use strict';
const path = require('path');
const assert = require('assert/strict');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const addr = process.argv[2] || '[::1]:9313';
const protoDir = path.join(__dirname, '..', '..', '..', 'api', 'proto');
const load = (file) => grpc.loadPackageDefinition(protoLoader.loadSync(path.join(protoDir, file)));

// Collects every response of a bidi stream after writing reqs and ending it.
function bidi(call, reqs) {
  return new Promise((resolve, reject) => {
    const out = [];
    call.on('data', (r) => out.push(r));
    call.on('error', reject);
    call.on('end', () => resolve(out));
    for (const r of reqs) call.write(r);
    call.end();
  });
}

async function main() {
  const proto = load('blob.proto');
  const blobClient = new proto.buffdb.blob.Blob(addr, grpc.credentials.createInsecure());

  // BuffDB's README: store "abcdef" with metadata "{ offset: 6 }" and "ghijkl" without.
  const stored = await bidi(blobClient.Store(), [
    { bytes: Buffer.from('abcdef'), metadata: '{ offset: 6 }' },
    { bytes: Buffer.from('ghijkl') },
  ]);
  assert.equal(stored.length, 2, 'one StoreResponse per request');
  const ids = stored.map((r) => Number(r.id));
  assert.ok(ids[0] > 0 && ids[1] > ids[0], `ids increase: ${ids}`);

  const got = await bidi(blobClient.Get(), ids.map((id) => ({ id })));
  assert.equal(got.length, 2);
  assert.equal(Buffer.from(got[0].bytes).toString(), 'abcdef');
  assert.equal(got[0].metadata, '{ offset: 6 }');
  assert.equal(Buffer.from(got[1].bytes).toString(), 'ghijkl');
  assert.equal(got[1].metadata, undefined, 'absent metadata stays absent');

  const kvProto = load('kv.proto');
  const kvClient = new kvProto.buffdb.kv.Kv(addr, grpc.credentials.createInsecure());
  const key = `node-compat-${process.pid}-${addr}`;
  const set = await bidi(kvClient.Set(), [{ key, value: 'value from node' }]);
  assert.deepEqual(set.map((r) => r.key), [key]);
  const values = await bidi(kvClient.Get(), [{ key }]);
  assert.deepEqual(values.map((r) => r.value), ['value from node']);

  // A missing key is NOT_FOUND naming the key.
  await assert.rejects(bidi(kvClient.Get(), [{ key: key + '-missing' }]), (err) => {
    assert.equal(err.code, grpc.status.NOT_FOUND);
    assert.match(err.details, /-missing/);
    return true;
  });

  blobClient.close();
  kvClient.close();
  console.log(`node compat ok against ${addr} (blob ids ${ids.join(', ')})`);
}

main().catch((err) => {
  console.error(`node compat FAILED against ${addr}:`, err);
  process.exit(1);
});
