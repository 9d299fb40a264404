package huggingface

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Backoff is the retry policy for requests that failed transiently (network errors, 408, 429,
// 5xx, stalls, cut connections). The zero value takes the defaults documented per field.
type Backoff struct {
	// Base is the first delay; each retry doubles it, with full jitter. Default 500ms: long
	// enough for a restarting load balancer, short enough not to be noticed on a blip.
	Base time.Duration
	// Max caps one delay, and one Retry-After the server asks for. Default 60s: the Hub's rate
	// limit windows are 5 minutes, but a longer silent wait looks like a hang to users.
	Max time.Duration
	// Attempts is how many consecutive failures without progress are tolerated per request or
	// byte range before giving up. Default 8 (with the defaults, about 2 minutes of trying).
	Attempts int
}

func (b Backoff) withDefaults() Backoff {
	if b.Base <= 0 {
		b.Base = 500 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 60 * time.Second
	}
	if b.Attempts <= 0 {
		b.Attempts = 8
	}
	return b
}

// delay is how long to wait before retry number attempt (0-based): the server's Retry-After or
// RateLimit reset when it gave one, else exponential backoff with full jitter (so many devices
// behind one NAT that failed together do not retry together).
func (b Backoff) delay(attempt int, h http.Header) time.Duration {
	if d, ok := serverDelay(h, time.Now()); ok {
		return min(d, b.Max)
	}
	d := b.Base << min(attempt, 20)
	if d <= 0 || d > b.Max {
		d = b.Max
	}
	return d/2 + rand.N(d/2+1)
}

// serverDelay reads Retry-After (delta-seconds or an HTTP-date) and the IETF RateLimit header
// the Hub sends (`"api";r=0;t=55`: t seconds until the window resets). It returns the longer.
func serverDelay(h http.Header, now time.Time) (time.Duration, bool) {
	if h == nil {
		return 0, false
	}
	var d time.Duration
	ok := false
	if ra := strings.TrimSpace(h.Get("Retry-After")); ra != "" {
		if secs, err := strconv.ParseInt(ra, 10, 64); err == nil && secs >= 0 {
			d, ok = time.Duration(min(secs, 86400))*time.Second, true
		} else if t, err := http.ParseTime(ra); err == nil {
			d, ok = max(t.Sub(now), 0), true
		}
	}
	if rl := h.Get("RateLimit"); rl != "" {
		remaining, reset := int64(-1), int64(-1)
		for _, part := range strings.Split(rl, ";") {
			k, v, found := strings.Cut(strings.TrimSpace(part), "=")
			if !found {
				continue
			}
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				continue
			}
			switch strings.TrimSpace(k) {
			case "r":
				remaining = n
			case "t":
				reset = n
			}
		}
		// Only a spent quota (r=0) means waiting for the reset helps; r>0 with a 429 is a burst.
		if reset >= 0 && remaining == 0 {
			if rd := time.Duration(min(reset, 86400)) * time.Second; rd > d {
				d = rd
			}
			ok = true
		}
	}
	return d, ok
}

// retryableStatus reports whether a status is worth retrying: request timeout, rate limiting and
// server errors. 501 (not implemented) is permanent.
func retryableStatus(code int) bool {
	return code == http.StatusRequestTimeout || code == http.StatusTooManyRequests ||
		code >= 500 && code != http.StatusNotImplemented
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error { return sleepUntil(ctx, d, nil) }

// sleepUntil waits d, until ctx is done (returning its error) or until wake is closed (nil
// waits the whole d).
func sleepUntil(ctx context.Context, d time.Duration, wake <-chan struct{}) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	case <-wake:
		return nil
	}
}

// isCtxErr reports whether err is the caller's cancellation rather than a network failure.
func isCtxErr(ctx context.Context, err error) bool {
	return ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}
