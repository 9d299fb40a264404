package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA is a certificate authority for tests, issuing certificates as PEM files.
type testCA struct {
	t    testing.TB
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// File is the CA's certificate (PEM), for --tls-ca or grpc.tls_client_ca_file.
	File string
}

func newTestCA(t testing.TB, dir, name string) *testCA {
	t.Helper()
	ca := &testCA{t: t, dir: dir}
	ca.cert, ca.key, ca.File = ca.issue(name, true, nil, nil)
	return ca
}

// issue writes a certificate signed by ca (self-signed for the CA itself) and its key; it returns
// the certificate file's path (the key is beside it, .key for .crt).
func (ca *testCA) issue(name string, isCA bool, ips []net.IP, usage []x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey, string) {
	t := ca.t
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: isCA, BasicConstraintsValid: true, IPAddresses: ips, ExtKeyUsage: usage,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	parent, signer := tmpl, key
	if !isCA {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(ca.dir, name+".crt")
	writePEM(t, path, "CERTIFICATE", der)
	writePEM(t, strings.TrimSuffix(path, ".crt")+".key", "EC PRIVATE KEY", kb)
	cert, _ := x509.ParseCertificate(der)
	return cert, key, path
}

// server issues a certificate for 127.0.0.1, returning the certificate and key files.
func (ca *testCA) server(name string) (cert *x509.Certificate, certFile, keyFile string) {
	cert, _, certFile = ca.issue(name, false, []net.IP{net.IPv4(127, 0, 0, 1)}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
	return cert, certFile, strings.TrimSuffix(certFile, ".crt") + ".key"
}

// client issues a client certificate, returning the certificate and key files.
func (ca *testCA) client(name string) (certFile, keyFile string) {
	_, _, certFile = ca.issue(name, false, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	return certFile, strings.TrimSuffix(certFile, ".crt") + ".key"
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	// Write-and-rename, as a certificate renewal tool does: a reader never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startTLSDaemon starts a daemon on 127.0.0.1:0 serving TLS with the given files.
func startTLSDaemon(t testing.TB, certFile, keyFile, clientCA string, log *slog.Logger) (*Main, string) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.GRPC.Listen = []string{"127.0.0.1:0"}
	cfg.HTTP.Listen = ""
	cfg.GRPC.TLSCertFile, cfg.GRPC.TLSKeyFile, cfg.GRPC.TLSClientCAFile = certFile, keyFile, clientCA
	m := NewMain(cfg, log)
	if err := m.Open(context.Background()); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	for _, a := range m.Addrs() {
		if a.Network() == "tcp" {
			return m, a.String()
		}
	}
	t.Fatal("no TCP listener")
	return nil, ""
}

// TestRun_TLS: a daemon with a certificate serves TLS on its TCP listeners; the CLI reaches it
// with --tls-ca, and is told what to pass when it dials plaintext or does not trust the daemon.
func TestRun_TLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "ca")
	other := newTestCA(t, dir, "other-ca")
	_, certFile, keyFile := ca.server("daemon")
	_, addr := startTLSDaemon(t, certFile, keyFile, "", nil)

	must(t, exitOK, "", "--addr", addr, "--tls-ca", ca.File, "kv", "set", "k", "over tls")
	if r := must(t, exitOK, "", "--addr", addr, "--tls-ca", ca.File, "kv", "get", "k"); strings.TrimSpace(r.stdout) != "over tls" {
		t.Fatalf("kv get over TLS = %q", r.stdout)
	}
	r := must(t, exitError, "", "--addr", addr, "kv", "get", "k")
	if !strings.Contains(r.stderr, "--tls") {
		t.Fatalf("plaintext to a TLS daemon: stderr %q, want a hint naming --tls", r.stderr)
	}
	r = must(t, exitError, "", "--addr", addr, "--tls-ca", other.File, "kv", "get", "k")
	if !strings.Contains(r.stderr, "certificate") || !strings.Contains(r.stderr, "--tls-ca") {
		t.Fatalf("untrusted daemon certificate: stderr %q, want a hint naming --tls-ca", r.stderr)
	}
}

// TestRun_MutualTLS: with grpc.tls_client_ca_file only clients holding a certificate that CA
// signed get in; the unix socket stays open to local users.
func TestRun_MutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "ca")
	clients := newTestCA(t, dir, "fleet-ca")
	stranger := newTestCA(t, dir, "stranger-ca")
	_, certFile, keyFile := ca.server("daemon")
	m, addr := startTLSDaemon(t, certFile, keyFile, clients.File, nil)
	devCert, devKey := clients.client("device")
	strangerCert, strangerKey := stranger.client("stranger")

	must(t, exitOK, "", "--addr", addr, "--tls-ca", ca.File, "--tls-client-cert", devCert, "--tls-client-key", devKey, "kv", "set", "k", "v")
	r := must(t, exitError, "", "--addr", addr, "--tls-ca", ca.File, "kv", "get", "k")
	if !strings.Contains(r.stderr, "--tls-client-cert") {
		t.Fatalf("no client certificate: stderr %q, want a hint naming --tls-client-cert", r.stderr)
	}
	// A certificate the daemon does not trust is refused after the client's side of a TLS 1.3
	// handshake, so the client's words vary (an alert, a reset): it must just not get in.
	r = must(t, exitError, "", "--addr", addr, "--tls-ca", ca.File, "--tls-client-cert", strangerCert, "--tls-client-key", strangerKey, "kv", "get", "k")
	if strings.Contains(r.stdout, "v") {
		t.Fatalf("a stranger's certificate read the value: %q", r.stdout)
	}
	// Local CLI calls use the socket, which needs no certificate.
	if r := must(t, exitOK, "", "--data-dir", m.Config.DataDir, "kv", "get", "k"); strings.TrimSpace(r.stdout) != "v" {
		t.Fatalf("kv get over the socket = %q", r.stdout)
	}
}

// TestRun_TLSCertificateRenewal: renewed certificate files are served from the next connection
// on, without a restart; files that do not load keep the previous certificate in service.
func TestRun_TLSCertificateRenewal(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "ca")
	first, certFile, keyFile := ca.server("daemon")
	var logBuf bytes.Buffer
	_, addr := startTLSDaemon(t, certFile, keyFile, "", slog.New(slog.NewTextHandler(&logBuf, nil)))
	served := func() *big.Int {
		t.Helper()
		pool := x509.NewCertPool()
		pool.AddCert(ca.cert)
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber
	}
	for range 2 {
		if got := served(); got.Cmp(first.SerialNumber) != 0 {
			t.Fatalf("serial %v, want the first certificate's %v", got, first.SerialNumber)
		}
	}
	if strings.Contains(logBuf.String(), "reloaded") {
		t.Fatalf("unchanged files reloaded; log:\n%s", logBuf.String())
	}
	second, _, _ := ca.server("daemon") // same file names: a renewal in place
	if got := served(); got.Cmp(second.SerialNumber) != 0 {
		t.Fatalf("after renewal: serial %v, want the renewed certificate's %v", got, second.SerialNumber)
	}
	// A certificate replaced before its key: the pair does not match; the last good one serves.
	other := newTestCA(t, t.TempDir(), "ca2")
	_, otherCert, _ := other.server("daemon")
	b, err := os.ReadFile(otherCert)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := served(); got.Cmp(second.SerialNumber) != 0 {
		t.Fatalf("with a mismatched pair: serial %v, want the last good %v", got, second.SerialNumber)
	}
	if !strings.Contains(logBuf.String(), "do not load") {
		t.Fatalf("no warning about the files that do not load; log:\n%s", logBuf.String())
	}
}

// TestRun_PlaintextBeyondLoopbackWarns: a daemon serving the network without TLS says so.
func TestRun_PlaintextBeyondLoopbackWarns(t *testing.T) {
	for _, tc := range []struct {
		listen string
		warn   bool
	}{{"127.0.0.1:0", false}, {"0.0.0.0:0", true}} {
		cfg := DefaultConfig()
		cfg.DataDir = t.TempDir()
		cfg.GRPC.Listen = []string{tc.listen}
		cfg.HTTP.Listen = ""
		var logBuf bytes.Buffer
		m := NewMain(cfg, slog.New(slog.NewTextHandler(&logBuf, nil)))
		if err := m.Open(context.Background()); err != nil {
			t.Fatal(err)
		}
		m.Close(context.Background())
		if got := strings.Contains(logBuf.String(), "without TLS"); got != tc.warn {
			t.Fatalf("listen %s: warned %v, want %v; log:\n%s", tc.listen, got, tc.warn, logBuf.String())
		}
	}
}

// TestConfig_TLSFiles: TLS settings are checked at start and by config check, naming the key.
func TestConfig_TLSFiles(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "ca")
	_, certFile, keyFile := ca.server("daemon")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-cert", certFile}, "grpc.tls_cert_file"},
		{[]string{"--tls-client-ca", ca.File}, "grpc.tls_client_ca_file"},
		{[]string{"--tls-cert", filepath.Join(dir, "missing.crt"), "--tls-key", keyFile}, "grpc.tls_cert_file"},
		{[]string{"--tls-cert", certFile, "--tls-key", keyFile, "--tls-client-ca", keyFile}, "grpc.tls_client_ca_file"},
		{[]string{"--tls-client-cert", certFile}, "client.tls_cert_file"},
	} {
		r := must(t, exitConfig, "", append([]string{"config", "check", "--config", os.DevNull}, tc.args...)...)
		if !strings.Contains(r.stderr, tc.want) {
			t.Fatalf("%v: stderr %q, want it to name %s", tc.args, r.stderr, tc.want)
		}
	}
	must(t, exitOK, "", "config", "check", "--config", os.DevNull, "--tls-cert", certFile, "--tls-key", keyFile, "--tls-client-ca", ca.File)
}
