// Package api serves buffdbd's gRPC services over the store: buffdb.kv.Kv, buffdb.blob.Blob and
// buffdb.query.Query (wire-compatible with BuffDB 0.5), buffdb.index.Index, plus grpc.health.v1 and
// server reflection. Other packages' services (the model registry) register on the same *grpc.Server.
//
// Guarantees: bidirectional streams answer one response per request, in request order, as each
// request arrives; a write is acknowledged only after the store reports it durable; on an error the
// responses already sent stay delivered, response headers are sent, and the stream ends with the
// error's status. Every error leaves through one table (errors.go) that maps the store's sentinels to
// gRPC codes; anything unrecognised becomes INTERNAL with a generic message and is logged.
package api
