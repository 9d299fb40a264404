package registry

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/api/proto/registrypb"
)

// WatchOptions configure Client.Watch.
type WatchOptions struct {
	// Name restricts the watch to one model; "" watches every model.
	Name string
	// Retries is how many transient failures in a row (daemon restarting, connection lost,
	// watcher fell behind) re-open the watch; a watch that was open again starts the count anew.
	// Negative: re-open forever, as a serving process that must follow its model wants.
	Retries int
	// Resync, if set, is called each time the watch is open again after a failure. Changes made
	// while it was down were not reported: the caller re-reads the state it depends on (the
	// alias it serves, say). An error from Resync ends the watch.
	Resync func() error
}

// Watch calls fn with each change the server reports (never its READY marker) until ctx ends
// (returning ctx.Err()), fn returns an error (returned), or the watch fails for good. A serving
// process can call it once and hot-swap on ALIAS_SET events and on Resync.
func (c *Client) Watch(ctx context.Context, opts WatchOptions, fn func(*registrypb.WatchEvent) error) error {
	failures := 0
	for opened := false; ; {
		wasOpen, err := c.watchOnce(ctx, opts, opened, fn)
		opened = opened || wasOpen
		if wasOpen {
			failures = 0
		}
		var fnErr *watchFnError
		switch {
		case errors.As(err, &fnErr):
			return fnErr.err
		case ctx.Err() != nil:
			return ctx.Err()
		case !retryable(ctx, err) || (opts.Retries >= 0 && failures >= opts.Retries):
			return err
		}
		if err := sleepBackoff(ctx, failures); err != nil {
			return err
		}
		failures++
	}
}

// watchFnError carries an error of the caller's fn or Resync, which ends the watch as it is.
type watchFnError struct{ err error }

func (e *watchFnError) Error() string { return e.err.Error() }

// watchOnce runs one Watch stream; open reports whether the server said READY.
func (c *Client) watchOnce(ctx context.Context, opts WatchOptions, resync bool, fn func(*registrypb.WatchEvent) error) (open bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.rpc.Watch(ctx, &registrypb.WatchRequest{Name: opts.Name})
	if err != nil {
		return false, err
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			// A server ends a watch only when it stops; treat it as the restart it is.
			return open, status.Error(codes.Unavailable, "the server ended the watch")
		}
		if err != nil {
			return open, err
		}
		if ev.Kind == registrypb.WatchEvent_READY {
			open = true
			if resync && opts.Resync != nil {
				if err := opts.Resync(); err != nil {
					return open, &watchFnError{err}
				}
			}
			continue
		}
		if err := fn(ev); err != nil {
			return open, &watchFnError{err}
		}
	}
}
