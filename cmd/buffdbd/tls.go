package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	"google.golang.org/grpc/credentials"
)

// TLS for the gRPC TCP listeners. A daemon that listens beyond loopback — a registry that build
// servers push to, a device that is pushed to — is otherwise open to anyone who can reach the
// port. The unix socket stays plaintext: only users the file permissions admit can reach it.
//
// TLS is terminated on the listener (tls.NewListener), not through grpc credentials, because one
// gRPC server serves both the TCP listeners and the socket, and credentials are per server.

// serverTLS loads the daemon's certificate and, with a client CA, requires client certificates.
// Every handshake checks whether the files changed (a stat of each), so a renewed certificate
// (certbot, cert-manager, a fleet's own rotation) is served without a restart; until a change
// loads cleanly (a certificate replaced before its key, say), the previous one is kept.
type serverTLS struct {
	certFile, keyFile, clientCAFile string
	log                             *slog.Logger

	mu     sync.Mutex
	stamp  string
	config *tls.Config
}

// newServerTLS loads the files once, so a daemon with a bad certificate fails at start; nil when
// no certificate is configured.
func newServerTLS(c GRPCConfig, log *slog.Logger) (*serverTLS, error) {
	if c.TLSCertFile == "" {
		return nil, nil
	}
	s := &serverTLS{certFile: c.TLSCertFile, keyFile: c.TLSKeyFile, clientCAFile: c.TLSClientCAFile, log: log}
	stamp, err := s.fileStamp()
	if err != nil {
		return nil, keyErrorf("grpc.tls_cert_file", "%v", err)
	}
	if s.config, err = s.load(); err != nil {
		return nil, err
	}
	s.stamp = stamp
	return s, nil
}

// listener wraps l so each connection speaks TLS.
func (s *serverTLS) listener(l net.Listener) net.Listener {
	return tls.NewListener(l, &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return s.current(), nil
	}})
}

// current is the configuration for a new handshake, reloaded first if a file changed.
func (s *serverTLS) current() *tls.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	stamp, err := s.fileStamp()
	if err != nil || stamp == s.stamp {
		return s.config // a file briefly missing mid-rotation: keep serving the last good one
	}
	s.stamp = stamp
	cfg, err := s.load()
	if err != nil {
		s.log.Warn("TLS files changed but do not load; serving the previous certificate", "err", err)
		return s.config
	}
	s.log.Info("TLS certificate reloaded", "cert_file", s.certFile)
	s.config = cfg
	return cfg
}

// fileStamp identifies the files' current versions.
func (s *serverTLS) fileStamp() (string, error) {
	stamp := ""
	for _, f := range []string{s.certFile, s.keyFile, s.clientCAFile} {
		if f == "" {
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		// Size and modification time: a renewal writes or renames a new file. (Not the whole
		// stat, whose access time changes as every handshake reads nothing but this.)
		stamp += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return stamp, nil
}

func (s *serverTLS) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
	if err != nil {
		return nil, keyErrorf("grpc.tls_cert_file", "%s with grpc.tls_key_file %s: %v", s.certFile, s.keyFile, err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		// gRPC clients (grpc-go since 1.67 among them) insist on negotiating HTTP/2 by ALPN.
		NextProtos: []string{"h2"},
		MinVersion: tls.VersionTLS12,
	}
	if s.clientCAFile != "" {
		pool, err := loadCertPool(s.clientCAFile)
		if err != nil {
			return nil, keyErrorf("grpc.tls_client_ca_file", "%v", err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// loadCertPool reads a PEM bundle of CA certificates.
func loadCertPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return pool, nil
}

// clientTLS is the transport credentials the CLI dials a TCP --addr with; nil means plaintext.
func clientTLS(c ClientConfig) (credentials.TransportCredentials, error) {
	if !c.TLS && c.TLSCAFile == "" && c.TLSCertFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{ServerName: c.TLSServerName, MinVersion: tls.VersionTLS12}
	if c.TLSCAFile != "" {
		pool, err := loadCertPool(c.TLSCAFile)
		if err != nil {
			return nil, keyErrorf("client.tls_ca_file", "%v", err)
		}
		cfg.RootCAs = pool
	}
	var cert *tls.Certificate
	if c.TLSCertFile != "" {
		kp, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			return nil, keyErrorf("client.tls_cert_file", "%s with client.tls_key_file %s: %v", c.TLSCertFile, c.TLSKeyFile, err)
		}
		cert = &kp
	}
	// Under TLS 1.3 a server rejects a missing client certificate only after the client's
	// handshake is done, and the client then sees a broken pipe or a reset. Refusing here, when
	// the server asks for a certificate we do not have, gives the reason instead.
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if cert == nil {
			return nil, errClientCertRequired
		}
		return cert, nil
	}
	return credentials.NewTLS(cfg), nil
}

// isLoopback reports whether a listen address (host:port) only accepts local connections.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// errClientCertRequired fails a handshake with a daemon that asks for a client certificate when
// none is configured.
var errClientCertRequired = errors.New("the daemon requires a client certificate (certificate required)")
