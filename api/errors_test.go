package api_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/api"
	"github.com/buffdb/buffdbd/store"
)

func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		{store.ErrNotFound, codes.NotFound},
		{fmt.Errorf("key %q: %w", "k", store.ErrNotFound), codes.NotFound},
		{store.ErrExists, codes.AlreadyExists},
		{store.ErrInvalid, codes.InvalidArgument},
		{store.ErrReadOnly, codes.FailedPrecondition},
		{store.ErrTooLarge, codes.ResourceExhausted},
		{store.ErrNoSpace, codes.ResourceExhausted},
		{store.ErrInUse, codes.FailedPrecondition},
		{store.ErrAborted, codes.Aborted},
		{store.ErrCorrupt, codes.DataLoss},
		{store.ErrClosed, codes.Unavailable},
		{context.Canceled, codes.Canceled},
		{fmt.Errorf("read: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied},
		{errors.New("disk I/O error at /secret/path"), codes.Internal},
	} {
		t.Run(fmt.Sprint(tc.want), func(t *testing.T) {
			if got := api.Code(tc.err); got != tc.want {
				t.Fatalf("Code(%v) = %v, want %v", tc.err, got, tc.want)
			}
			got := status.Code(api.Status(nil, "test", tc.err))
			if got != tc.want {
				t.Fatalf("Status(%v) code = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
	t.Run("InternalHidesDetail", func(t *testing.T) {
		s, _ := status.FromError(api.Status(nil, "test", errors.New("disk I/O error at /secret/path")))
		if strings.Contains(s.Message(), "/secret/path") {
			t.Fatalf("internal detail leaked to the client: %q", s.Message())
		}
	})
	t.Run("KeepsMessage", func(t *testing.T) {
		s, _ := status.FromError(api.Status(nil, "test", fmt.Errorf("key %q: %w", "model:x", store.ErrNotFound)))
		if !strings.Contains(s.Message(), `"model:x"`) {
			t.Fatalf("message %q does not name the key", s.Message())
		}
	})
}
