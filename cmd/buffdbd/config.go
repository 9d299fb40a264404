package main

import (
	"errors"
	"fmt"
	"time"
)

// Config is buffdbd's typed configuration. DefaultConfig gives every field its default; Validate
// checks it. (The operations work extends this with a config file, BUFFDBD_* environment variables,
// HTTP/metrics, registry and logging sections.)
type Config struct {
	// DataDir holds the SQLite database, payload files and the unix socket. Empty means the
	// embedded default (see resolveDataDir): $STATE_DIRECTORY, else $XDG_DATA_HOME/buffdbd, else
	// ~/.local/share/buffdbd.
	DataDir string
	// ShutdownTimeout bounds how long in-flight RPCs may run after SIGTERM before they are cancelled.
	ShutdownTimeout time.Duration

	GRPC  GRPCConfig
	Store StoreConfig
}

// GRPCConfig configures the gRPC listeners.
type GRPCConfig struct {
	// Listen are TCP addresses (host:port). BuffDB clients use both 127.0.0.1 and [::1].
	Listen []string
	// Socket is the unix socket local CLI calls use. Empty means <data_dir>/buffdbd.sock; "none"
	// disables it.
	Socket string
	// MaxMessageBytes caps one gRPC message in either direction.
	MaxMessageBytes ByteSize
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
}

// ByteSize is a size in bytes.
type ByteSize int64

// Binary size units.
const (
	KiB ByteSize = 1 << 10
	MiB ByteSize = 1 << 20
	GiB ByteSize = 1 << 30
)

func (b ByteSize) String() string { return fmt.Sprintf("%dB", int64(b)) }

const (
	// defaultGRPCPort is BuffDB's port, so its clients connect unchanged.
	defaultGRPCPort = "9313"
	// socketNone disables the unix socket.
	socketNone = "none"
)

// DefaultConfig returns the configuration used when nothing overrides it.
func DefaultConfig() Config {
	return Config{
		// 10s lets a typical in-flight stream finish without stalling a systemd stop for long.
		ShutdownTimeout: 10 * time.Second,
		GRPC: GRPCConfig{
			Listen: []string{"127.0.0.1:" + defaultGRPCPort, "[::1]:" + defaultGRPCPort},
			// BuffDB clients store whole blobs in one message; 64 MiB blobs plus protobuf framing.
			MaxMessageBytes: 65 * MiB,
		},
		Store: StoreConfig{
			Durability:       "sync",
			MaxOpenTx:        64,
			DefaultTxTimeout: 30 * time.Second,
			MaxTxTimeout:     5 * time.Minute,
		},
	}
}

// ErrConfig marks an invalid configuration value.
var ErrConfig = errors.New("invalid configuration")

// Validate reports the first invalid field as an ErrConfig naming its key.
func (c Config) Validate() error {
	if len(c.GRPC.Listen) == 0 && c.GRPC.Socket == socketNone {
		return fmt.Errorf("%w: grpc.listen: empty and grpc.socket is %q: nothing to serve on", ErrConfig, socketNone)
	}
	if c.GRPC.MaxMessageBytes < 4*KiB || c.GRPC.MaxMessageBytes > 2*GiB-1 {
		return fmt.Errorf("%w: grpc.max_message_bytes: must be between 4KiB and 2GiB, got %s", ErrConfig, c.GRPC.MaxMessageBytes)
	}
	if c.Store.Durability != "sync" && c.Store.Durability != "process" {
		return fmt.Errorf("%w: store.durability: must be \"sync\" or \"process\", got %q", ErrConfig, c.Store.Durability)
	}
	return nil
}
