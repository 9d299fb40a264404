// Package registry turns the store into a model registry for edge devices: versioned models made of
// files, split into content-defined chunks that are stored once across every version and model,
// pushed and pulled in resumable, delta-aware streams, published atomically, with aliases, pins, a
// disk budget with LRU eviction, garbage collection and scrubbing.
//
// Guarantees:
//   - A version becomes visible (metadata, indexes, manifest, aliases) in exactly one store
//     transaction, only after every chunk it references is durable and every file's sha256 has been
//     verified. A crash or disconnect at any earlier moment leaves no trace a reader can see.
//   - BuffDB's conventions hold: ModelInfo JSON at model:{name}:{version}:metadata, the model's
//     versions at model:{name}:index, model names at model:global:index, and for a single-file model
//     the blobs in blob_ids concatenate to the file.
//   - Chunks uploaded by an interrupted push stay durable and pinned for Options.SessionTTL, so the
//     push resumes by sending only what is missing, down to the rest of the chunk it was cut in
//     (whose received part is kept in the data directory's uploads/ and verified again before use;
//     no chunk is stored without matching its sha256).
//
// See DESIGN.md for the storage layout, the push/pull protocols and the crash-safety argument.
package registry
