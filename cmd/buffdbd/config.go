package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/buffdb/buffdbd/internal/gotune"
)

// Config is buffdbd's one typed configuration. DefaultConfig gives every field its default;
// LoadConfig layers the file, BUFFDBD_* environment variables and flags on top; Validate checks it.
// Each field's config key is listed in configKeys (configload.go), which drives loading, flags,
// environment bindings, `buffdbd config print` and the sample configs/buffdbd.yaml.
type Config struct {
	// DataDir holds the SQLite database and payload files. Empty means $STATE_DIRECTORY (set by
	// systemd's StateDirectory=), else $XDG_DATA_HOME/buffdbd, else ~/.local/share/buffdbd.
	DataDir string
	// CacheDir holds partial downloads. Empty means $CACHE_DIRECTORY or <data_dir>/cache.
	CacheDir string
	// ShutdownTimeout bounds how long in-flight RPCs may run after SIGTERM before they are cancelled.
	ShutdownTimeout time.Duration
	// MemoryLimit is the Go runtime's soft memory limit (as GOMEMLIMIT, which wins when set); 0
	// means none.
	MemoryLimit ByteSize

	GRPC        GRPCConfig
	HTTP        HTTPConfig
	Store       StoreConfig
	Registry    RegistryConfig
	HuggingFace HuggingFaceConfig
	Log         LogConfig
	Client      ClientConfig
}

// GRPCConfig configures the gRPC listeners.
type GRPCConfig struct {
	// Listen are TCP addresses (host:port). BuffDB clients use both 127.0.0.1 and [::1].
	Listen []string
	// Socket is the unix socket local CLI calls use. Empty means $RUNTIME_DIRECTORY/buffdbd.sock
	// under systemd, else <data_dir>/buffdbd.sock; "none" disables it.
	Socket string
	// MaxMessageBytes caps one gRPC message in either direction.
	MaxMessageBytes ByteSize
	// TLSCertFile and TLSKeyFile (PEM) make every TCP listener serve TLS only; the unix socket
	// stays plaintext. Both or neither.
	TLSCertFile, TLSKeyFile string
	// TLSClientCAFile (PEM bundle), with a certificate, requires clients to present a certificate
	// signed by one of these CAs (mutual TLS).
	TLSClientCAFile string
}

// ClientConfig configures how CLI commands dial a daemon given by --addr (host:port).
type ClientConfig struct {
	// TLS dials with TLS, verifying the daemon against the system's roots or TLSCAFile.
	TLS bool
	// TLSCAFile (PEM bundle) verifies the daemon's certificate; it implies TLS.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are the client's certificate for a daemon that requires one;
	// they imply TLS.
	TLSCertFile, TLSKeyFile string
	// TLSServerName is the name to verify the daemon's certificate against, when it is not the
	// host of --addr (an IP address, a tunnel).
	TLSServerName string
}

// HTTPConfig configures the HTTP listener serving /metrics, /healthz and /readyz.
type HTTPConfig struct {
	// Listen is host:port; empty disables the listener and the gRPC metrics interceptors.
	Listen string
}

// StoreConfig configures the embedded store.
type StoreConfig struct {
	// Durability is "sync" (acknowledged writes survive power loss) or "process" (survive a crash).
	Durability string
	// MaxOpenTx caps concurrently open client transactions.
	MaxOpenTx int
	// DefaultTxTimeout applies to transactions begun without a timeout.
	DefaultTxTimeout time.Duration
	// MaxTxTimeout caps every transaction's timeout.
	MaxTxTimeout time.Duration
	// QueryWrites lets the Query service write and enables Execute.
	QueryWrites bool
	// StalledReadWALBytes ends a streaming read (Query, index Find/FindRange outside a
	// transaction) whose client is not taking its rows once the write-ahead log has grown past
	// it: the open read keeps the log from being checkpointed. 0 disables.
	StalledReadWALBytes ByteSize
}

// RegistryConfig configures the model registry.
type RegistryConfig struct {
	// MaxBytes is the disk budget for model versions; least recently pulled versions are evicted
	// beyond it.
	MaxBytes ByteSize
	// GCInterval is how often unreferenced chunks and expired upload sessions are collected.
	GCInterval time.Duration
	// ScrubInterval is how often stored chunks are re-hashed; 0 disables scrubbing.
	ScrubInterval time.Duration
	// UploadSessionExpiry is how long an interrupted push stays resumable.
	UploadSessionExpiry time.Duration
}

// HuggingFaceConfig configures the Hugging Face fetcher.
type HuggingFaceConfig struct {
	// Endpoint is the Hub's base URL (HF_ENDPOINT overrides it for `buffdbd fetch`).
	Endpoint string
	// TokenFile is a file holding the access token; preferred over Token.
	TokenFile string
	// Token is an access token given inline or via BUFFDBD_HUGGINGFACE_TOKEN. It is a secret:
	// masked in `config print` and in logs.
	Token string
	// Concurrency is how many files download in parallel.
	Concurrency int
	// RateLimit caps download bandwidth in bytes per second; 0 means unlimited.
	RateLimit ByteSize
	// Offline resolves only from the local cache, never contacting the Hub.
	Offline bool
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info, warn or error.
	Level string
	// Format is auto (text on a terminal, journald-friendly text under systemd, else JSON), text,
	// json or journald.
	Format string
}

// Defaults. Each is chosen for an edge device on a slow link; the reason sits beside it.
const (
	// defaultGRPCPort is BuffDB's port, so its clients connect unchanged.
	defaultGRPCPort = "9313"
	// defaultHTTPListen is loopback only: metrics are scraped by a local agent or over a tunnel.
	defaultHTTPListen = "127.0.0.1:9314"
	// socketNone disables the unix socket.
	socketNone = "none"
)

// DefaultConfig returns the configuration used when nothing overrides it.
func DefaultConfig() Config {
	return Config{
		DataDir:  "",
		CacheDir: "",
		// 10s lets a typical chunk of a streaming pull finish on a slow link without stalling a
		// systemd stop (TimeoutStopSec=30s) for long.
		ShutdownTimeout: 10 * time.Second,
		MemoryLimit:     gotune.DefaultMemoryLimit, // why: see there
		GRPC: GRPCConfig{
			Listen: []string{"127.0.0.1:" + defaultGRPCPort, "[::1]:" + defaultGRPCPort},
			Socket: "",
			// BuffDB clients store whole blobs in one message; 64 MiB blobs plus protobuf framing.
			MaxMessageBytes: 65 * MiB,
		},
		HTTP: HTTPConfig{Listen: defaultHTTPListen},
		Store: StoreConfig{
			Durability:       "sync",
			MaxOpenTx:        64,
			DefaultTxTimeout: 30 * time.Second,
			MaxTxTimeout:     5 * time.Minute,
			QueryWrites:      false,
			// Four times the log's journal_size_limit: writes alone keep it near that (store/stream.go).
			StalledReadWALBytes: 256 * MiB,
		},
		Registry: RegistryConfig{
			// Fits on a 32 GB edge SD card next to the OS.
			MaxBytes:   20 * GiB,
			GCInterval: time.Hour,
			// Re-hashing every model reads the whole card; once a week keeps flash wear low.
			ScrubInterval:       7 * 24 * time.Hour,
			UploadSessionExpiry: 24 * time.Hour,
		},
		HuggingFace: HuggingFaceConfig{
			Endpoint: "https://huggingface.co",
			// 8 connections (files, and byte ranges of large files): CDNs throttle each connection, and
			// against one throttled to 50 MB/s per connection a fetch at 4 reached only 4x a single
			// curl; 8 is for the >=6x target while staying a small, polite number of connections per
			// device. A slow uplink saturates either way; huggingface.rate_limit caps bandwidth.
			Concurrency: 8,
			RateLimit:   0,
		},
		Log: LogConfig{Level: "info", Format: "auto"},
	}
}

// ErrConfig marks an invalid configuration: a bad file, value or key. The daemon exits with
// exitConfig (78, EX_CONFIG) on it.
var ErrConfig = errors.New("invalid configuration")

// exitConfig is sysexits.h's EX_CONFIG; systemd's RestartPreventExitStatus=78 stops restart loops.
const exitConfig = 78

// configError is an ErrConfig whose message is only the detail ("registry.max_bytes: must be > 0").
// key, when set, lets LoadConfig add where the bad value came from.
type configError struct {
	key string
	err error
}

func (e *configError) Error() string             { return e.err.Error() }
func (e *configError) Unwrap() []error           { return []error{ErrConfig, e.err} }
func configErrorf(format string, a ...any) error { return &configError{err: fmt.Errorf(format, a...)} }

// CheckFiles reports, as an ErrConfig naming the key, a configured file the daemon will need but
// cannot read. It is not part of Validate: every CLI command validates the configuration, and a
// user who may not read the daemon's token file must still be able to run them. run and
// config check call it.
func (c Config) CheckFiles() error {
	if f := c.HuggingFace.TokenFile; f != "" {
		if _, err := readTokenFile(f); err != nil {
			return keyErrorf("huggingface.token_file", "%v", err)
		}
	}
	_, err := newServerTLS(c.GRPC, slog.New(slog.DiscardHandler)) // errors name their key
	return err
}

// readTokenFile reads a token file: its content without surrounding whitespace, which must not be
// empty.
func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return tok, nil
}

// keyErrorf is a configError about key; the message starts with the key.
func keyErrorf(key, format string, a ...any) error {
	return &configError{key: key, err: fmt.Errorf(key+": "+format, a...)}
}

// Validate reports the first invalid field as an ErrConfig naming its key, e.g.
// "registry.max_bytes: must be > 0". It expects directories already resolved by LoadConfig but
// accepts empty ones (they resolve at startup).
func (c Config) Validate() error {
	for _, check := range []func() error{
		func() error {
			for _, a := range c.GRPC.Listen {
				if err := checkHostPort(a); err != nil {
					return keyErrorf("grpc.listen", "%q: %v", a, err)
				}
			}
			if len(c.GRPC.Listen) == 0 && c.GRPC.Socket == socketNone {
				return keyErrorf("grpc.listen", "empty and grpc.socket is %q: nothing to serve on", socketNone)
			}
			return nil
		},
		func() error {
			if (c.GRPC.TLSCertFile == "") != (c.GRPC.TLSKeyFile == "") {
				return keyErrorf("grpc.tls_cert_file", "set it and grpc.tls_key_file together, or neither")
			}
			if c.GRPC.TLSClientCAFile != "" && c.GRPC.TLSCertFile == "" {
				return keyErrorf("grpc.tls_client_ca_file", "needs grpc.tls_cert_file and grpc.tls_key_file: client certificates are checked over TLS")
			}
			if (c.Client.TLSCertFile == "") != (c.Client.TLSKeyFile == "") {
				return keyErrorf("client.tls_cert_file", "set it and client.tls_key_file together, or neither")
			}
			return nil
		},
		func() error {
			// gRPC frames carry a 32-bit length; 4 KiB is below any useful request.
			// Model push and pull send 1 MiB pieces, and a BuffDB client loading a model gets a whole
			// chunk (up to 4 MiB) in one Blob Get: below 4 MiB the registry would not work.
			if c.GRPC.MaxMessageBytes < 4*MiB || c.GRPC.MaxMessageBytes > 2*GiB-1 {
				return keyErrorf("grpc.max_message_bytes", "must be between 4MiB and 2GiB, got %s", c.GRPC.MaxMessageBytes)
			}
			return nil
		},
		func() error {
			if c.HTTP.Listen == "" {
				return nil
			}
			if err := checkHostPort(c.HTTP.Listen); err != nil {
				return keyErrorf("http.listen", "%q: %v", c.HTTP.Listen, err)
			}
			return nil
		},
		func() error { return positive("shutdown_timeout", c.ShutdownTimeout) },
		func() error { return notNegative("memory_limit", c.MemoryLimit) },
		func() error {
			switch c.Store.Durability {
			case "sync", "process":
				return nil
			}
			return keyErrorf("store.durability", "must be \"sync\" or \"process\", got %q", c.Store.Durability)
		},
		func() error { return positive("store.max_open_tx", c.Store.MaxOpenTx) },
		func() error { return notNegative("store.stalled_read_wal_bytes", c.Store.StalledReadWALBytes) },
		func() error { return positive("store.default_tx_timeout", c.Store.DefaultTxTimeout) },
		func() error {
			if c.Store.MaxTxTimeout < c.Store.DefaultTxTimeout {
				return keyErrorf("store.max_tx_timeout", "must be >= store.default_tx_timeout (%s), got %s",
					c.Store.DefaultTxTimeout, c.Store.MaxTxTimeout)
			}
			return nil
		},
		func() error { return positive("registry.max_bytes", c.Registry.MaxBytes) },
		func() error { return positive("registry.gc_interval", c.Registry.GCInterval) },
		func() error { return notNegative("registry.scrub_interval", c.Registry.ScrubInterval) },
		func() error { return positive("registry.upload_session_expiry", c.Registry.UploadSessionExpiry) },
		func() error {
			u, err := url.Parse(c.HuggingFace.Endpoint)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return keyErrorf("huggingface.endpoint", "must be an http(s) URL, got %q", c.HuggingFace.Endpoint)
			}
			return nil
		},
		func() error {
			// More parallel files than this only adds connection overhead on one uplink.
			if c.HuggingFace.Concurrency < 1 || c.HuggingFace.Concurrency > 64 {
				return keyErrorf("huggingface.concurrency", "must be between 1 and 64, got %d", c.HuggingFace.Concurrency)
			}
			return nil
		},
		func() error { return notNegative("huggingface.rate_limit", c.HuggingFace.RateLimit) },
		func() error {
			if _, err := parseLevel(c.Log.Level); err != nil {
				return keyErrorf("log.level", "%v", err)
			}
			return nil
		},
		func() error {
			switch c.Log.Format {
			case "auto", "text", "json", "journald":
				return nil
			}
			return keyErrorf("log.format", "must be auto, text, json or journald, got %q", c.Log.Format)
		},
	} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func positive[T int | ByteSize | time.Duration](key string, v T) error {
	if v <= 0 {
		return keyErrorf(key, "must be > 0, got %v", v)
	}
	return nil
}

func notNegative[T int | ByteSize | time.Duration](key string, v T) error {
	if v < 0 {
		return keyErrorf(key, "must be >= 0, got %v", v)
	}
	return nil
}

// checkHostPort accepts host:port with a numeric port; an empty host means all interfaces.
func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("must be host:port")
	}
	if port == "" || strings.Trim(port, "0123456789") != "" {
		return errors.New("port must be a number")
	}
	if n, err := strconv.Atoi(port); err != nil || n > 65535 {
		return errors.New("port must be at most 65535")
	}
	return nil
}
