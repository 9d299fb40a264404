package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/store"
)

// ErrorCode pairs a sentinel error with the gRPC code every error wrapping it is reported as.
type ErrorCode struct {
	Err  error
	Code codes.Code
}

// errorCodes is buffdbd's one error→gRPC code table, checked in order with errors.Is (so a more
// specific sentinel must come before a more general one it wraps). Packages layered on the store add
// their sentinels with addErrorCodes in a var block of their own api file, e.g. in registry.go:
//
//	var _ = addErrorCodes(ErrorCode{registry.ErrChecksum, codes.DataLoss})
var errorCodes = []ErrorCode{
	{store.ErrNotFound, codes.NotFound},
	{store.ErrExists, codes.AlreadyExists},
	{store.ErrInvalid, codes.InvalidArgument},
	// A write in a read-only transaction: the request is valid but the transaction's state forbids
	// it. The Query service's read-only mode is reported differently (see query.go).
	{store.ErrReadOnly, codes.FailedPrecondition},
	{store.ErrTooLarge, codes.ResourceExhausted},
	{store.ErrNoSpace, codes.ResourceExhausted},
	{store.ErrInUse, codes.FailedPrecondition},
	{store.ErrAborted, codes.Aborted},
	{store.ErrCorrupt, codes.DataLoss},
	{store.ErrClosed, codes.Unavailable},
	// Stored text no proto3 string can carry; retrying will not help until it is rewritten.
	{errNotUTF8, codes.DataLoss},
}

// errNotUTF8: a stored key, value or blob metadata is not valid UTF-8, so it cannot be sent as the
// proto3 string the API promises (marshalling would fail the stream with an opaque INTERNAL). The
// store's own writes never make one from a request; raw SQL or an outside tool can
// (CAST(x'ff' AS TEXT), or a BLOB stored before the store refused them).
var errNotUTF8 = errors.New("stored text is not valid UTF-8")

// checkUTF8 returns errNotUTF8 naming what (e.g. `key "k"`) unless every s is valid UTF-8.
func checkUTF8(what string, s ...string) error {
	for _, v := range s {
		if !utf8.ValidString(v) {
			return fmt.Errorf("%s: %w (written by raw SQL?); write it again or delete it", what, errNotUTF8)
		}
	}
	return nil
}

// addErrorCodes puts entries in the table ahead of the store's. It exists so that other files of
// this package can extend the table from a package-level var declaration, which Go initialises
// before any RPC runs. Ahead, because a layered package's sentinel is the more specific
// classification of an error that may also wrap a store sentinel.
func addErrorCodes(entries ...ErrorCode) struct{} {
	errorCodes = append(append([]ErrorCode{}, entries...), errorCodes...)
	return struct{}{}
}

// Code returns the gRPC code err is reported as: the code of a status error it carries, Canceled or
// DeadlineExceeded for context errors, the table's code for a known sentinel, else codes.Internal.
// Code(nil) is codes.OK.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	for _, e := range errorCodes {
		if errors.Is(err, e.Err) {
			return e.Code
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	return codes.Internal
}

// Status converts err into the gRPC status error a handler returns. Errors that already are status
// errors pass through unchanged. Known sentinels keep their message (it names the key, id or index
// involved, and never a value). Anything else is logged with its detail on log (if non-nil) and
// reported as INTERNAL with a generic message, so internals (paths, SQL) do not leak to clients.
// Status(nil) is nil.
func Status(log *slog.Logger, method string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	c := Code(err)
	if c == codes.Internal {
		if log != nil {
			log.Error("internal error", "method", method, "err", err)
		}
		return status.Error(codes.Internal, "internal error; the server log has the details")
	}
	return status.Error(c, err.Error())
}
