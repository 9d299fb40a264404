// Package proto holds buffdbd's .proto files; the generated Go code lives in its subpackages
// (kvpb, blobpb, querypb, indexpb, registrypb) and is committed so users need no protoc.
// Regenerate with `go generate ./api/proto` (needs protoc, protoc-gen-go and protoc-gen-go-grpc at the
// versions pinned in scripts/protoc-versions); CI checks the committed code is current.
package proto

//go:generate sh -c "protoc -I . --go_out=. --go_opt=module=github.com/buffdb/buffdbd/api/proto --go-grpc_out=. --go-grpc_opt=module=github.com/buffdb/buffdbd/api/proto *.proto"
