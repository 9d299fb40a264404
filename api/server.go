package api

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/grpc/keepalive"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	indexpb "github.com/buffdb/buffdbd/api/proto/indexpb"
	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
	querypb "github.com/buffdb/buffdbd/api/proto/querypb"
	"github.com/buffdb/buffdbd/store"
)

// DefaultMaxMessageBytes is the default largest gRPC message in either direction: BuffDB clients
// store a whole blob in one message, so 64 MiB blobs plus 1 MiB for protobuf framing and metadata.
const DefaultMaxMessageBytes = 65 << 20

// Options configure NewServer. The zero value is usable.
type Options struct {
	// MaxMessageBytes caps one message in either direction; 0 means DefaultMaxMessageBytes.
	MaxMessageBytes int
	// Logger receives internal errors and recovered panics; nil discards them.
	Logger *slog.Logger
	// UnaryInterceptors and StreamInterceptors run outermost first, before buffdbd's own panic
	// recovery, so metrics see the final status codes.
	UnaryInterceptors  []grpc.UnaryServerInterceptor
	StreamInterceptors []grpc.StreamServerInterceptor
	// ServerOptions are appended to the server's options (e.g. keepalive settings).
	ServerOptions []grpc.ServerOption
	// Keepalive sets when the server pings a silent client and how long it waits for the answer
	// before closing the connection; zero fields take DefaultKeepalive's.
	Keepalive keepalive.ServerParameters
}

// DefaultKeepalive is the server's keepalive: a connection silent for a minute is pinged, and
// closed if the answer takes over 20 s. Without it, a client gone behind a link that went silent
// (a NAT that forgot the connection, a stalled middlebox: no FIN, no RST, and TCP keepalive
// answered by the middlebox) kept its push, pull or watch running on the server for grpc-go's
// default of two hours: an upload session never collected, chunks pinned against GC and
// eviction, flow-controlled bytes held in memory. Every gRPC client answers pings on its own.
var DefaultKeepalive = keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}

// Server is buffdbd's gRPC server: the store's services, health and reflection on one *grpc.Server.
// Register more services with Register before Serve.
type Server struct {
	grpc   *grpc.Server
	health *health.Server
	log    *slog.Logger

	mu      sync.Mutex
	serving bool
}

// NewServer builds a server for db with buffdb.kv.Kv, buffdb.blob.Blob, buffdb.query.Query,
// buffdb.index.Index, grpc.health.v1.Health (NOT_SERVING until SetServing) and reflection registered.
func NewServer(db *store.DB, opts Options) *Server {
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ka := opts.Keepalive
	if ka.Time <= 0 {
		ka.Time = DefaultKeepalive.Time
	}
	if ka.Timeout <= 0 {
		ka.Timeout = DefaultKeepalive.Timeout
	}
	unary := append(append([]grpc.UnaryServerInterceptor{}, opts.UnaryInterceptors...), recoverUnary(log))
	streams := append(append([]grpc.StreamServerInterceptor{}, opts.StreamInterceptors...), recoverStream(log))
	sopts := append([]grpc.ServerOption{
		// An oversized request fails with grpc-go's own RESOURCE_EXHAUSTED "received message larger
		// than max (N vs. LIMIT)", which states the limit; grpc-go writes that status itself, so a
		// handler or interceptor cannot reword it.
		grpc.MaxRecvMsgSize(opts.MaxMessageBytes),
		grpc.MaxSendMsgSize(opts.MaxMessageBytes),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(streams...),
		grpc.ForceServerCodecV2(Codec{}),
		// Clients keep long-lived streams alive with pings (grpc-js and grpcio let users set 10 s or
		// even 1 s). grpc-go's default policy allows one per 5 minutes, and none without an active
		// stream, and answers more with GOAWAY too_many_pings, killing every stream of the
		// connection. Pings are cheap; allow them up to twice a second, idle or not.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 500 * time.Millisecond, PermitWithoutStream: true}),
		grpc.KeepaliveParams(ka),
	}, opts.ServerOptions...)

	s := &Server{grpc: grpc.NewServer(sopts...), health: health.NewServer(), log: log}
	svc := &service{db: db, log: log}
	kvpb.RegisterKvServer(s.grpc, &kvService{service: svc})
	blobpb.RegisterBlobServer(s.grpc, &blobService{service: svc})
	querypb.RegisterQueryServer(s.grpc, &queryService{service: svc})
	indexpb.RegisterIndexServer(s.grpc, &indexService{service: svc})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.setHealth(healthpb.HealthCheckResponse_NOT_SERVING)
	return s
}

// Register adds another service (e.g. the model registry) to the server. It must be called before
// Serve; the service is reported by health checks like the built-in ones.
func (s *Server) Register(desc *grpc.ServiceDesc, impl any) {
	s.grpc.RegisterService(desc, impl)
	s.mu.Lock()
	defer s.mu.Unlock()
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if s.serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus(desc.ServiceName, st)
}

// Serve accepts connections on l until Shutdown; it returns nil after a Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.grpc.Serve(l)
	if err == grpc.ErrServerStopped {
		return nil
	}
	return err
}

// SetServing marks the server and every registered service SERVING for health checks. Call it once
// the listeners are bound.
func (s *Server) SetServing() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.serving = true
	s.setHealth(healthpb.HealthCheckResponse_SERVING)
}

// Shutdown marks the server NOT_SERVING, stops accepting, and lets in-flight RPCs finish until ctx
// is done, after which it cancels them. It returns when every RPC has ended.
func (s *Server) Shutdown(ctx context.Context) {
	s.mu.Lock()
	s.serving = false
	s.mu.Unlock()
	// Shutdown (unlike SetServingStatus) also makes later status changes no-ops, so a late Register
	// cannot flip health back to SERVING while the server drains.
	s.health.Shutdown()
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
	}
}

func (s *Server) setHealth(st healthpb.HealthCheckResponse_ServingStatus) {
	s.health.SetServingStatus("", st)
	for name := range s.grpc.GetServiceInfo() {
		s.health.SetServingStatus(name, st)
	}
}

// service holds what every service implementation shares.
type service struct {
	db  *store.DB
	log *slog.Logger
}

// status converts err for a handler's return (see Status).
func (s *service) status(method string, err error) error { return Status(s.log, method, err) }

func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = panicStatus(log, info.FullMethod, r)
			}
		}()
		return h(ctx, req)
	}
}

func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = panicStatus(log, info.FullMethod, r)
			}
		}()
		return h(srv, ss)
	}
}

// panicStatus keeps one bad request from taking the daemon (and every other client) down.
func panicStatus(log *slog.Logger, method string, r any) error {
	log.Error("panic in handler", "method", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error; the server log has the details")
}
