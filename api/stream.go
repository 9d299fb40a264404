package api

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/buffdb/buffdbd/store"
)

// Pipelining limits for one bidirectional stream. The receiving goroutine runs ahead of the sending
// loop by at most pipelineDepth requests and pipelineBytes of payload, so a fast client cannot make
// the server buffer without bound while it waits for group commits.
const (
	// pipelineDepth: enough small writes in flight to fill several group commits (which is what
	// makes one stream reach 100k durable Set/s), small enough that the queue costs little memory.
	pipelineDepth = 4096
	// pipelineBytes bounds the payload bytes (blob data) held by queued requests and responses; a
	// larger message takes the whole budget alone. 32 MiB is half the default memory_limit: a
	// stream of 1 MiB blobs ran as fast with it as with 128 MiB (600-760 MB/s, two processes on
	// the 2-core VM) — payload files take milliseconds, so a few dozen in flight cover them.
	pipelineBytes = 32 << 20
)

// pending is one request's outcome, produced in order by the receiving goroutine.
type pending[Resp any] struct {
	wait   func(ctx context.Context) (*Resp, error) // blocks until the response (or error) is ready
	weight int64                                    // bytes reserved from the pipeline budget
	err    error                                    // a receive error; ends the stream
}

// serveBidi answers a bidirectional stream one response per request, in request order, as each
// request arrives. A receiving goroutine reads requests and starts each one with start, which does
// it at once (KV reads), hands it to a read worker (blob reads, readAsync) or submits it to the
// store's group committer (writes), and returns a wait function; the calling goroutine waits for
// each result in order and sends it. weight
// reports the payload bytes a request holds while in flight. When the client half-closes, queued
// requests are answered and the stream ends OK. On the first error the responses already sent stay
// delivered, headers are sent, and the stream ends with err's status; done (if non-nil) runs when
// the receiving goroutine exits, after the last start.
func serveBidi[Req, Resp any](s *service, method string, stream grpc.BidiStreamingServer[Req, Resp],
	start func(ctx context.Context, req *Req) func(ctx context.Context) (*Resp, error), weight func(req *Req) int64, done func()) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	budget := semaphore.NewWeighted(pipelineBytes)
	queue := make(chan pending[Resp], pipelineDepth)

	go func() {
		defer close(queue)
		if done != nil {
			defer done()
		}
		// A panic here is outside the handler's goroutine, where the recovery interceptor cannot
		// see it; it ends this stream with INTERNAL instead of the daemon.
		defer func() {
			if r := recover(); r != nil {
				select {
				case queue <- pending[Resp]{err: panicStatus(s.log, method, r)}:
				case <-ctx.Done():
				}
			}
		}()
		for {
			req, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			var p pending[Resp]
			if err != nil {
				p.err = err
			} else {
				if weight != nil {
					// A request larger than the whole budget takes all of it rather than waiting forever.
					p.weight = min(weight(req), pipelineBytes)
					if budget.Acquire(ctx, p.weight) != nil {
						return
					}
				}
				p.wait = start(ctx, req)
			}
			select {
			case queue <- p:
			case <-ctx.Done():
				return
			}
			if p.err != nil {
				return
			}
		}
	}()

	for p := range queue {
		if p.err != nil {
			return streamError(s, method, stream, p.err)
		}
		resp, err := p.wait(ctx)
		if err != nil {
			return streamError(s, method, stream, err)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		budget.Release(p.weight)
	}
	return nil
}

// streamError sends (empty) response headers if none were sent yet, so the error arrives after
// headers rather than as a trailers-only response — BuffDB's Rust (tonic) clients expect that — and
// returns err's status.
func streamError(s *service, method string, stream grpc.ServerStream, err error) error {
	_ = stream.SendHeader(metadata.MD{}) // fails harmlessly when headers already went out
	return s.status(method, err)
}

// committed returns a wait function that waits for the pipelined write f and answers mk(id), id
// being what the write reports (a blob id; 0 for KV writes).
func committed[Resp any](f *store.Future, mk func(id uint64) *Resp) func(context.Context) (*Resp, error) {
	return func(ctx context.Context) (*Resp, error) {
		id, err := f.Wait(ctx)
		if err != nil {
			return nil, err
		}
		return mk(id), nil
	}
}

// ready returns a wait function for a result computed already.
func ready[Resp any](resp *Resp, err error) func(context.Context) (*Resp, error) {
	return func(context.Context) (*Resp, error) { return resp, err }
}

// readParallelism is how many blob reads of one stream run at once: reading payload files
// overlaps with sending earlier blobs while responses still leave in request order; more than a
// few only adds scheduling overhead.
const readParallelism = 4

// reader runs a stream's reads on a few long-lived goroutines. Long-lived matters: the SQLite
// driver runs deep call stacks, and a fresh goroutine per read spent a fifth of the CPU growing
// its stack.
type reader struct {
	jobs   chan func()
	log    *slog.Logger
	method string
}

func newReader(s *service, method string) *reader {
	r := &reader{jobs: make(chan func()), log: s.log, method: method}
	for range readParallelism {
		go func() {
			for job := range r.jobs {
				job()
			}
		}()
	}
	return r
}

// close stops the workers once the jobs already submitted have run.
func (r *reader) close() { close(r.jobs) }

// readAsync runs fn on one of r's workers and returns a wait function for its result.
func readAsync[Resp any](r *reader, fn func() (*Resp, error)) func(context.Context) (*Resp, error) {
	type result struct {
		resp *Resp
		err  error
	}
	ch := make(chan result, 1)
	r.jobs <- func() {
		defer func() {
			if p := recover(); p != nil { // as in serveBidi: fail the request, not the daemon
				ch <- result{nil, panicStatus(r.log, r.method, p)}
			}
		}()
		resp, err := fn()
		ch <- result{resp, err}
	}
	return func(ctx context.Context) (*Resp, error) {
		select {
		case res := <-ch:
			return res.resp, res.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
