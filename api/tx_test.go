package api_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/api"
	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
	"github.com/buffdb/buffdbd/store"
)

func begin(t testing.TB, c kvpb.KvClient, req *kvpb.BeginTransactionRequest) string {
	t.Helper()
	r, err := c.BeginTransaction(context.Background(), req)
	if err != nil {
		t.Fatalf("BeginTransaction: %v", err)
	}
	if r.GetTransactionId() == "" {
		t.Fatal("BeginTransaction returned an empty id")
	}
	return r.GetTransactionId()
}

func TestKv_Transactions(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := kvpb.NewKvClient(ts.conn)
	ctx := context.Background()

	t.Run("CommitIsolation", func(t *testing.T) {
		tx := begin(t, c, &kvpb.BeginTransactionRequest{})
		if _, err := bidi(t, c.Set, &kvpb.SetRequest{Key: "t1", Value: "in-tx", TransactionId: &tx}); err != nil {
			t.Fatal(err)
		}
		// The transaction sees its own write; others do not until it commits.
		got, err := bidi(t, c.Get, &kvpb.GetRequest{Key: "t1", TransactionId: &tx})
		if err != nil || got[0].GetValue() != "in-tx" {
			t.Fatalf("Get in tx = %v, %v", got, err)
		}
		_, err = bidi(t, c.Get, &kvpb.GetRequest{Key: "t1"})
		wantCode(t, err, codes.NotFound, "t1")
		r, err := c.CommitTransaction(ctx, &kvpb.CommitTransactionRequest{TransactionId: tx})
		if err != nil || !r.GetSuccess() {
			t.Fatalf("Commit = %v, %v", r, err)
		}
		got, err = bidi(t, c.Get, &kvpb.GetRequest{Key: "t1"})
		if err != nil || got[0].GetValue() != "in-tx" {
			t.Fatalf("Get after commit = %v, %v", got, err)
		}
		_, err = c.CommitTransaction(ctx, &kvpb.CommitTransactionRequest{TransactionId: tx})
		wantCode(t, err, codes.NotFound, tx)
	})

	t.Run("TimedOutWriteNotApplied", func(t *testing.T) {
		// A plain Set waits behind a read-write transaction (SQLite has one writer) until its
		// deadline: the client sees DEADLINE_EXCEEDED, so the write must not be applied once the
		// transaction commits and the queue moves on.
		tx := begin(t, c, &kvpb.BeginTransactionRequest{})
		if _, err := bidi(t, c.Set, &kvpb.SetRequest{Key: "late", Value: "from-tx", TransactionId: &tx}); err != nil {
			t.Fatal(err)
		}
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		s, err := c.Set(dctx)
		if err != nil {
			t.Fatal(err)
		}
		s.Send(&kvpb.SetRequest{Key: "late", Value: "timed-out"})
		if _, err := s.Recv(); status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("blocked Set: %v, want DEADLINE_EXCEEDED", err)
		}
		if r, err := c.CommitTransaction(ctx, &kvpb.CommitTransactionRequest{TransactionId: tx}); err != nil || !r.GetSuccess() {
			t.Fatalf("Commit = %v, %v", r, err)
		}
		// Anything still queued has run once another write on its heels completes.
		if _, err := bidi(t, c.Set, &kvpb.SetRequest{Key: "after", Value: "1"}); err != nil {
			t.Fatal(err)
		}
		got, err := bidi(t, c.Get, &kvpb.GetRequest{Key: "late"})
		if err != nil || got[0].GetValue() != "from-tx" {
			t.Fatalf("late = %v, %v; want the committed from-tx, not the write the client saw fail", got, err)
		}
	})

	t.Run("Rollback", func(t *testing.T) {
		tx := begin(t, c, &kvpb.BeginTransactionRequest{})
		if _, err := bidi(t, c.Set, &kvpb.SetRequest{Key: "t2", Value: "gone", TransactionId: &tx}); err != nil {
			t.Fatal(err)
		}
		bc := blobpb.NewBlobClient(ts.conn)
		st, err := bidi(t, bc.Store, &blobpb.StoreRequest{Bytes: []byte("tx blob"), TransactionId: &tx})
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.RollbackTransaction(ctx, &kvpb.RollbackTransactionRequest{TransactionId: tx})
		if err != nil || !r.GetSuccess() {
			t.Fatalf("Rollback = %v, %v", r, err)
		}
		_, err = bidi(t, c.Get, &kvpb.GetRequest{Key: "t2"})
		wantCode(t, err, codes.NotFound, "t2")
		_, err = bidi(t, bc.Get, &blobpb.GetRequest{Id: st[0].GetId()})
		wantCode(t, err, codes.NotFound)
	})

	t.Run("ReadOnly", func(t *testing.T) {
		ro := true
		tx := begin(t, c, &kvpb.BeginTransactionRequest{ReadOnly: &ro})
		_, err := bidi(t, c.Set, &kvpb.SetRequest{Key: "t3", Value: "x", TransactionId: &tx})
		wantCode(t, err, codes.FailedPrecondition)
		c.RollbackTransaction(ctx, &kvpb.RollbackTransactionRequest{TransactionId: tx})
	})

	t.Run("ErrNotFoundUnknownID", func(t *testing.T) {
		bogus := "no-such-tx"
		_, err := bidi(t, c.Set, &kvpb.SetRequest{Key: "t4", Value: "x", TransactionId: &bogus})
		wantCode(t, err, codes.NotFound)
		_, err = c.RollbackTransaction(ctx, &kvpb.RollbackTransactionRequest{TransactionId: bogus})
		wantCode(t, err, codes.NotFound, bogus)
	})

	t.Run("ErrInvalidTimeout", func(t *testing.T) {
		neg := int32(-1)
		_, err := c.BeginTransaction(ctx, &kvpb.BeginTransactionRequest{TimeoutMs: &neg})
		wantCode(t, err, codes.InvalidArgument, "timeout_ms")
	})

	t.Run("Timeout", func(t *testing.T) {
		ms := int32(50)
		tx := begin(t, c, &kvpb.BeginTransactionRequest{TimeoutMs: &ms})
		if _, err := bidi(t, c.Set, &kvpb.SetRequest{Key: "t5", Value: "abandoned", TransactionId: &tx}); err != nil {
			t.Fatal(err)
		}
		// Poll (no timing assertion) until the server expires the abandoned transaction: then its
		// id is unknown and its write was rolled back.
		for {
			_, err := bidi(t, c.Get, &kvpb.GetRequest{Key: "t5", TransactionId: &tx})
			if err != nil {
				wantCode(t, err, codes.NotFound)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		_, err := c.CommitTransaction(ctx, &kvpb.CommitTransactionRequest{TransactionId: tx})
		if c := status.Code(err); c != codes.NotFound && c != codes.Aborted {
			t.Fatalf("Commit after timeout: %v, want NOT_FOUND or ABORTED", err)
		}
		_, err = bidi(t, c.Get, &kvpb.GetRequest{Key: "t5"})
		wantCode(t, err, codes.NotFound, "t5")
	})
}
