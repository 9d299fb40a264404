// Registry compatibility check with a real Node client, the way BuffDB's example clients use models:
// list model names from the KV key model:global:index, a model's versions from model:{name}:index,
// read ModelInfo JSON from model:{name}:{version}:metadata (exactly BuffDB's fields), and load the
// weights of a single-file model by fetching the blobs in blob_ids and concatenating them.
// Usage: node registry.js HOST:PORT NAME VERSION SHA256 SIZE. Exits non-zero on mismatch.
'use strict';
const path = require('path');
const crypto = require('crypto');
const assert = require('assert/strict');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [addr, name, version, wantSha, wantSize] = process.argv.slice(2);
const protoDir = path.join(__dirname, '..', '..', '..', 'api', 'proto');
const load = (file) => grpc.loadPackageDefinition(protoLoader.loadSync(path.join(protoDir, file)));

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
  const kv = new (load('kv.proto').buffdb.kv.Kv)(addr, grpc.credentials.createInsecure());
  const blob = new (load('blob.proto').buffdb.blob.Blob)(addr, grpc.credentials.createInsecure());
  const get = async (key) => (await bidi(kv.Get(), [{ key }]))[0].value;

  const models = JSON.parse(await get('model:global:index'));
  assert.ok(Array.isArray(models) && models.includes(name), `model:global:index lists ${name}: ${models}`);
  const versions = JSON.parse(await get(`model:${name}:index`));
  assert.ok(versions.includes(version), `model:${name}:index lists ${version}: ${versions}`);

  const info = JSON.parse(await get(`model:${name}:${version}:metadata`));
  assert.deepEqual(Object.keys(info).sort(), ['blob_ids', 'created_at', 'description', 'framework',
    'input_shape', 'name', 'output_shape', 'parameters', 'version']);
  assert.equal(info.name, name);
  assert.equal(info.version, version);
  assert.ok(!Number.isNaN(Date.parse(info.created_at)), `created_at is RFC 3339: ${info.created_at}`);
  assert.ok(Array.isArray(info.input_shape) && Array.isArray(info.output_shape));
  assert.ok(info.blob_ids.length > 0);

  // Load the weights: one Get stream for every blob id, concatenated in order.
  const parts = await bidi(blob.Get(), info.blob_ids.map((id) => ({ id })));
  assert.equal(parts.length, info.blob_ids.length);
  const h = crypto.createHash('sha256');
  let size = 0;
  for (const p of parts) {
    h.update(p.bytes);
    size += p.bytes.length;
  }
  assert.equal(size, Number(wantSize), 'concatenated blob_ids have the file size');
  assert.equal(h.digest('hex'), wantSha, 'concatenated blob_ids hash to the pushed file');
  console.log(`node registry compat: ok (${name}:${version}, ${info.blob_ids.length} blobs, ${size} bytes, models ${models.join(',')})`);
}

main().catch((e) => {
  console.error('node registry compat FAILED:', e);
  process.exit(1);
});
