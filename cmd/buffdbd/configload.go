package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// ByteSize is a size in bytes. In config files, environment variables and flags it accepts units:
// "20GiB" (powers of 1024), "20GB" (powers of 1000), or a plain number of bytes.
type ByteSize int64

// Binary size units.
const (
	KiB ByteSize = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
)

// String renders s exactly, in the largest binary unit that divides it ("20GiB", "1536KiB", "0").
func (s ByteSize) String() string {
	for _, u := range []struct {
		size ByteSize
		name string
	}{{TiB, "TiB"}, {GiB, "GiB"}, {MiB, "MiB"}, {KiB, "KiB"}} {
		if s != 0 && s%u.size == 0 {
			return strconv.FormatInt(int64(s/u.size), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// ParseByteSize parses "20GiB", "1.5 GB", "4096". go-humanize parses the units (IEC and SI, any case);
// we only add the int64 range check.
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("invalid size %q: must not be negative", s)
	}
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q (use e.g. 512MiB, 20GiB or a number of bytes)", s)
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return ByteSize(n), nil
}

// configKey describes one configuration key: its dotted name (YAML path), the field it sets, its
// flag (every key has one), and its help text. Environment variable: BUFFDBD_ + upper(name with
// dots as underscores).
type configKey struct {
	name   string
	flag   string
	secret bool
	usage  string
	field  func(c *Config) any // pointer to the field: *string, *bool, *int, *ByteSize, *time.Duration, *[]string
}

// configKeys lists every key, in the order of configs/buffdbd.yaml.
var configKeys = []configKey{
	{name: "data_dir", usage: "data directory (SQLite database and payload files); empty: $STATE_DIRECTORY, else /var/lib/buffdbd if usable, else $XDG_DATA_HOME/buffdbd, else ~/.local/share/buffdbd",
		field: func(c *Config) any { return &c.DataDir }},
	{name: "cache_dir", usage: "directory for partial downloads; empty: $CACHE_DIRECTORY or <data_dir>/cache",
		field: func(c *Config) any { return &c.CacheDir }},
	{name: "shutdown_timeout", usage: "how long in-flight RPCs may finish after SIGTERM before they are cancelled",
		field: func(c *Config) any { return &c.ShutdownTimeout }},
	{name: "memory_limit", usage: "soft limit of the Go runtime's memory (GOMEMLIMIT wins when set); 0 disables",
		field: func(c *Config) any { return &c.MemoryLimit }},
	{name: "grpc.listen", flag: "listen", usage: "gRPC TCP listen addresses (host:port, comma-separated)",
		field: func(c *Config) any { return &c.GRPC.Listen }},
	{name: "grpc.socket", flag: "socket", usage: "unix socket for local CLI calls; empty: $RUNTIME_DIRECTORY/buffdbd.sock or <data_dir>/buffdbd.sock; \"none\" disables",
		field: func(c *Config) any { return &c.GRPC.Socket }},
	{name: "grpc.max_message_bytes", usage: "largest gRPC message accepted or sent (e.g. 65MiB)",
		field: func(c *Config) any { return &c.GRPC.MaxMessageBytes }},
	{name: "grpc.tls_cert_file", flag: "tls-cert", usage: "certificate (PEM) the TCP listeners serve TLS with; needs grpc.tls_key_file",
		field: func(c *Config) any { return &c.GRPC.TLSCertFile }},
	{name: "grpc.tls_key_file", flag: "tls-key", usage: "private key (PEM) of grpc.tls_cert_file",
		field: func(c *Config) any { return &c.GRPC.TLSKeyFile }},
	{name: "grpc.tls_client_ca_file", flag: "tls-client-ca", usage: "CA bundle (PEM); when set, clients must present a certificate it signed",
		field: func(c *Config) any { return &c.GRPC.TLSClientCAFile }},
	{name: "http.listen", usage: "HTTP listen address for /metrics, /healthz, /readyz; empty disables",
		field: func(c *Config) any { return &c.HTTP.Listen }},
	{name: "store.durability", flag: "durability", usage: "sync (writes survive power loss) or process (survive a crash; faster)",
		field: func(c *Config) any { return &c.Store.Durability }},
	{name: "store.max_open_tx", usage: "most client transactions open at once",
		field: func(c *Config) any { return &c.Store.MaxOpenTx }},
	{name: "store.default_tx_timeout", usage: "timeout of transactions begun without one",
		field: func(c *Config) any { return &c.Store.DefaultTxTimeout }},
	{name: "store.max_tx_timeout", usage: "cap on any transaction's timeout",
		field: func(c *Config) any { return &c.Store.MaxTxTimeout }},
	{name: "store.query_writes", flag: "query-writes", usage: "let the Query service write and enable Execute",
		field: func(c *Config) any { return &c.Store.QueryWrites }},
	{name: "store.stalled_read_wal_bytes", usage: "end a Query or index read whose client stops taking rows once the write-ahead log grows past this (e.g. 256MiB); 0 disables",
		field: func(c *Config) any { return &c.Store.StalledReadWALBytes }},
	{name: "registry.max_bytes", usage: "disk budget for model versions (e.g. 20GiB)",
		field: func(c *Config) any { return &c.Registry.MaxBytes }},
	{name: "registry.gc_interval", usage: "how often unreferenced chunks and expired uploads are collected",
		field: func(c *Config) any { return &c.Registry.GCInterval }},
	{name: "registry.scrub_interval", usage: "how often stored chunks are re-hashed; 0 disables",
		field: func(c *Config) any { return &c.Registry.ScrubInterval }},
	{name: "registry.upload_session_expiry", usage: "how long an interrupted push stays resumable",
		field: func(c *Config) any { return &c.Registry.UploadSessionExpiry }},
	{name: "huggingface.endpoint", usage: "Hugging Face Hub base URL",
		field: func(c *Config) any { return &c.HuggingFace.Endpoint }},
	{name: "huggingface.token_file", usage: "file holding the Hugging Face access token",
		field: func(c *Config) any { return &c.HuggingFace.TokenFile }},
	{name: "huggingface.token", secret: true, usage: "Hugging Face access token (prefer token_file or BUFFDBD_HUGGINGFACE_TOKEN; flags are visible in ps)",
		field: func(c *Config) any { return &c.HuggingFace.Token }},
	{name: "huggingface.concurrency", usage: "files downloaded in parallel",
		field: func(c *Config) any { return &c.HuggingFace.Concurrency }},
	{name: "huggingface.rate_limit", usage: "download bandwidth cap in bytes per second over all fetches (e.g. 2MiB); 0 unlimited",
		field: func(c *Config) any { return &c.HuggingFace.RateLimit }},
	{name: "huggingface.offline", usage: "never contact the Hub; resolve from the local cache",
		field: func(c *Config) any { return &c.HuggingFace.Offline }},
	{name: "log.level", usage: "debug, info, warn or error",
		field: func(c *Config) any { return &c.Log.Level }},
	{name: "log.format", usage: "auto, text, json or journald",
		field: func(c *Config) any { return &c.Log.Format }},
	{name: "client.tls", flag: "tls", usage: "dial --addr with TLS (verified against the system's CAs or --tls-ca)",
		field: func(c *Config) any { return &c.Client.TLS }},
	{name: "client.tls_ca_file", flag: "tls-ca", usage: "CA bundle (PEM) to verify the daemon of --addr with; implies --tls",
		field: func(c *Config) any { return &c.Client.TLSCAFile }},
	{name: "client.tls_cert_file", flag: "tls-client-cert", usage: "client certificate (PEM) for a daemon that requires one; implies --tls",
		field: func(c *Config) any { return &c.Client.TLSCertFile }},
	{name: "client.tls_key_file", flag: "tls-client-key", usage: "private key (PEM) of --tls-client-cert",
		field: func(c *Config) any { return &c.Client.TLSKeyFile }},
	{name: "client.tls_server_name", flag: "tls-server-name", usage: "name to verify the daemon's certificate against instead of the host of --addr",
		field: func(c *Config) any { return &c.Client.TLSServerName }},
}

// envPrefix prefixes every environment variable buffdbd reads for configuration.
const envPrefix = "BUFFDBD_"

// defaultConfigFile is read when present and no --config is given.
const defaultConfigFile = "/etc/buffdbd/buffdbd.yaml"

// envName is the environment variable for a key: registry.max_bytes → BUFFDBD_REGISTRY_MAX_BYTES.
func (k configKey) envName() string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(k.name, ".", "_"))
}

// flagName is the key's flag: registry.max_bytes → --registry-max-bytes (unless set explicitly).
func (k configKey) flagName() string {
	if k.flag != "" {
		return k.flag
	}
	return strings.NewReplacer(".", "-", "_", "-").Replace(k.name)
}

// addConfigFlags defines --config and one flag per key on fs. Flag defaults show DefaultConfig's
// values in --help; a flag only overrides the other sources when it is set.
func addConfigFlags(fs *pflag.FlagSet) {
	fs.String("config", "", "configuration file (default "+defaultConfigFile+" when present; env BUFFDBD_CONFIG)")
	def := DefaultConfig()
	for _, k := range configKeys {
		usage := k.usage + " [" + k.name + ", " + k.envName() + "]"
		switch p := k.field(&def).(type) {
		case *bool:
			fs.Bool(k.flagName(), *p, usage)
		case *int:
			fs.Int(k.flagName(), *p, usage)
		case *[]string:
			fs.StringSlice(k.flagName(), *p, usage)
		case *string:
			if k.secret {
				fs.String(k.flagName(), "", usage)
			} else {
				fs.String(k.flagName(), *p, usage)
			}
		default:
			fs.String(k.flagName(), formatValue(p), usage)
		}
	}
}

// LoadConfig builds the effective configuration: DefaultConfig, then the config file (--config,
// else $BUFFDBD_CONFIG, else /etc/buffdbd/buffdbd.yaml when present), then BUFFDBD_* environment
// variables, then flags that were set on fs. It returns the file used ("" if none), warnings
// (e.g. unknown BUFFDBD_ environment variables) and an ErrConfig naming the key for a bad file,
// unknown file key or bad value. The result is validated; directories are not yet resolved.
func LoadConfig(fs *pflag.FlagSet) (cfg Config, file string, warnings []string, err error) {
	v := viper.New()
	// A variable set to "" sets the key to "" (http.listen empty disables metrics, as its flag
	// does); viper would otherwise ignore it, and Environment=BUFFDBD_HTTP_LISTEN= in a drop-in
	// would silently do nothing.
	v.AllowEmptyEnv(true)
	def := DefaultConfig()
	for _, k := range configKeys {
		v.SetDefault(k.name, rawDefault(k.field(&def)))
		// Explicit bindings, never AutomaticEnv: every variable buffdbd reads is listed here.
		if err := v.BindEnv(k.name, k.envName()); err != nil {
			return cfg, "", nil, fmt.Errorf("bind %s: %w", k.envName(), err)
		}
		if fs != nil {
			if f := fs.Lookup(k.flagName()); f != nil {
				if err := v.BindPFlag(k.name, f); err != nil {
					return cfg, "", nil, fmt.Errorf("bind --%s: %w", k.flagName(), err)
				}
			}
		}
	}

	file, explicit := configFilePath(fs)
	if file != "" {
		if _, statErr := os.Stat(file); statErr != nil && !explicit && errors.Is(statErr, os.ErrNotExist) {
			file = "" // the default file is optional
		}
	}
	if file != "" {
		if err := checkYAMLShape(file); err != nil {
			return cfg, file, nil, configErrorf("config file %s: %v", file, err)
		}
		v.SetConfigFile(file)
		// Config files are YAML whatever their extension; viper would otherwise guess from it.
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return cfg, file, nil, configErrorf("config file %s: %s", file, oneLine(unwrapViper(err).Error()))
		}
		if unknown := unknownKeys(v.AllKeys()); len(unknown) > 0 {
			if isSection(unknown[0]) {
				return cfg, file, nil, configErrorf("%s: must be a section of keys, not a value (config file %s)", unknown[0], file)
			}
			return cfg, file, nil, configErrorf("config file %s: unknown key %s (known keys: see buffdbd config print)",
				file, strings.Join(unknown, ", "))
		}
	}
	warnings = unknownEnv(os.Environ())

	cfg = DefaultConfig()
	for _, k := range configKeys {
		if err := setField(k.field(&cfg), v.Get(k.name)); err != nil {
			return cfg, file, warnings, configErrorf("%s: %v (from %s)", k.name, err, source(v, fs, k, file))
		}
	}
	tokenInFile := false
	for _, k := range configKeys {
		if k.name == "huggingface.token" {
			tokenInFile = cfg.HuggingFace.Token != "" && strings.HasPrefix(source(v, fs, k, file), "config file ")
		}
	}
	warnings = append(warnings, secretFileWarnings(cfg, file, tokenInFile)...)
	if err := cfg.Validate(); err != nil {
		var ce *configError
		if errors.As(err, &ce) && ce.key != "" {
			for _, k := range configKeys {
				if src := source(v, fs, k, file); k.name == ce.key && src != "default" {
					err = &configError{key: ce.key, err: fmt.Errorf("%w (from %s)", ce.err, src)}
				}
			}
		}
		return cfg, file, warnings, err
	}
	return cfg, file, warnings, nil
}

// checkYAMLShape refuses what viper would silently misread: a second YAML document (ignored
// entirely, its keys unapplied and unchecked) and two keys of one mapping that differ only in case
// (keys are case-insensitive, so one would silently win). Syntax errors are left to viper.
func checkYAMLShape(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	for docs := 0; ; docs++ {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return nil // viper reports it, with its line
		}
		if docs > 0 {
			return fmt.Errorf("holds more than one YAML document (line %d starts another); buffdbd reads one", doc.Line)
		}
		if err := caseDuplicates(&doc); err != nil {
			return err
		}
	}
}

// caseDuplicates finds two keys of one mapping under n that differ only in case.
func caseDuplicates(n *yaml.Node) error {
	if n.Kind == yaml.DocumentNode || n.Kind == yaml.SequenceNode {
		for _, c := range n.Content {
			if err := caseDuplicates(c); err != nil {
				return err
			}
		}
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return nil
	}
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		key := strings.ToLower(k.Value)
		if prev := seen[key]; prev != nil && prev.Value != k.Value {
			return fmt.Errorf("keys %q (line %d) and %q (line %d) are the same key: keys are case-insensitive", prev.Value, prev.Line, k.Value, k.Line)
		}
		seen[key] = k
		if err := caseDuplicates(n.Content[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// configFilePath returns the config file to read and whether it was asked for explicitly.
func configFilePath(fs *pflag.FlagSet) (string, bool) {
	if fs != nil {
		if f := fs.Lookup("config"); f != nil && f.Changed {
			return f.Value.String(), true
		}
	}
	if p, ok := os.LookupEnv(envPrefix + "CONFIG"); ok && p != "" {
		return p, true
	}
	// systemd's ConfigurationDirectory= exports where the config lives.
	if d := firstDir(os.Getenv("CONFIGURATION_DIRECTORY")); d != "" {
		return filepath.Join(d, "buffdbd.yaml"), false
	}
	return defaultConfigFile, false
}

// unwrapViper drops viper's generic prefix so the YAML error (with its line) is what the user sees.
func unwrapViper(err error) error {
	var pe viper.ConfigParseError
	if errors.As(err, &pe) {
		if u := errors.Unwrap(pe); u != nil {
			return u
		}
	}
	return err
}

// unknownKeys returns the keys viper found that buffdbd does not know, sorted. Since defaults and
// bindings only add known keys, any unknown one came from the file.
func unknownKeys(all []string) []string {
	var unknown []string
	for _, k := range all {
		if !slices.ContainsFunc(configKeys, func(c configKey) bool { return c.name == k }) {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	return unknown
}

// isSection reports whether name is a section like "registry" (holding registry.* keys).
func isSection(name string) bool {
	return slices.ContainsFunc(configKeys, func(c configKey) bool { return strings.HasPrefix(c.name, name+".") })
}

// envNotConfig are BUFFDBD_ variables that are not configuration keys but are read elsewhere.
var envNotConfig = []string{envPrefix + "CONFIG", envPrefix + "ADDR"}

// unknownEnv reports BUFFDBD_ variables that match no key, most likely typos.
func unknownEnv(environ []string) []string {
	var warn []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix) || slices.Contains(envNotConfig, name) {
			continue
		}
		if !slices.ContainsFunc(configKeys, func(c configKey) bool { return c.envName() == name }) {
			warn = append(warn, "unknown environment variable "+name+" ignored")
		}
	}
	slices.Sort(warn)
	return warn
}

// secretFileWarnings names the files holding the Hugging Face token that every local user may
// read: the config file when the token is written in it (tokenInFile), and huggingface.token_file.
// Warnings, not errors: a fleet installed with the old modes keeps running, and the operator is
// told, at every start and `config check`, what to change.
func secretFileWarnings(cfg Config, file string, tokenInFile bool) []string {
	var warn []string
	readable := func(path string) (os.FileMode, bool) {
		fi, err := os.Stat(path)
		if err != nil {
			return 0, false // unreadable or missing: CheckFiles reports what matters
		}
		return fi.Mode().Perm(), fi.Mode().Perm()&0o004 != 0
	}
	if tokenInFile {
		if mode, ok := readable(file); ok {
			warn = append(warn, fmt.Sprintf("config file %s holds huggingface.token and every local user can read it (mode %04o): chmod 0640 it (owner root, group buffdbd), or move the token to huggingface.token_file", file, mode))
		}
	}
	if f := cfg.HuggingFace.TokenFile; f != "" {
		if mode, ok := readable(f); ok {
			warn = append(warn, fmt.Sprintf("huggingface.token_file %s is readable by every local user (mode %04o): chmod 0640 it (owner root, group buffdbd)", f, mode))
		}
	}
	return warn
}

// source names where a key's value came from, for error messages.
func source(v *viper.Viper, fs *pflag.FlagSet, k configKey, file string) string {
	if fs != nil {
		if f := fs.Lookup(k.flagName()); f != nil && f.Changed {
			return "flag --" + k.flagName()
		}
	}
	if _, ok := os.LookupEnv(k.envName()); ok {
		return "environment " + k.envName()
	}
	if file != "" && v.InConfig(k.name) {
		return "config file " + file
	}
	return "default"
}

// rawDefault is the value viper holds as a key's default, in the same form a file would give.
func rawDefault(p any) any {
	switch p := p.(type) {
	case *[]string:
		return slices.Clone(*p)
	case *string:
		return *p
	case *bool:
		return *p
	case *int:
		return *p
	default:
		return formatValue(p)
	}
}

// formatValue renders a field for flags, `config print` and the sample file.
func formatValue(p any) string {
	switch p := p.(type) {
	case *ByteSize:
		return p.String()
	case *time.Duration:
		return formatDuration(*p)
	case *string:
		return *p
	case *bool:
		return strconv.FormatBool(*p)
	case *int:
		return strconv.Itoa(*p)
	case *[]string:
		return strings.Join(*p, ",")
	}
	panic(fmt.Sprintf("formatValue: unsupported %T", p))
}

// formatDuration is time.Duration.String without the noise of zero units ("1h0m0s" → "1h").
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// setField parses raw (from YAML, an environment string or a flag) into the field p points at.
func setField(p any, raw any) error {
	switch p := p.(type) {
	case *string:
		switch r := raw.(type) {
		case string:
			*p = r
		case nil:
			*p = ""
		case int, int64, float64, bool:
			*p = fmt.Sprint(r)
		default:
			return fmt.Errorf("must be a string, got %s", describe(raw))
		}
	case *bool:
		switch r := raw.(type) {
		case bool:
			*p = r
		case string:
			b, err := strconv.ParseBool(strings.TrimSpace(r))
			if err != nil {
				return fmt.Errorf("must be true or false, got %q", r)
			}
			*p = b
		default:
			return fmt.Errorf("must be true or false, got %s", describe(raw))
		}
	case *int:
		n, err := toInt(raw)
		if err != nil {
			return err
		}
		if n > math.MaxInt32 || n < math.MinInt32 {
			return fmt.Errorf("out of range: %d", n)
		}
		*p = int(n)
	case *ByteSize:
		switch r := raw.(type) {
		case string:
			n, err := ParseByteSize(r)
			if err != nil {
				return err
			}
			*p = n
		default:
			n, err := toInt(raw)
			if err != nil {
				if f, ok := raw.(float64); ok && f == math.Trunc(f) {
					return fmt.Errorf("size %v is too large", raw)
				}
				return fmt.Errorf("must be a size like 20GiB, got %s", describe(raw))
			}
			if n < 0 {
				return fmt.Errorf("invalid size %d: must not be negative", n)
			}
			*p = ByteSize(n)
		}
	case *time.Duration:
		switch r := raw.(type) {
		case string:
			d, err := time.ParseDuration(strings.TrimSpace(r))
			if err != nil {
				return fmt.Errorf("invalid duration %q (use Go syntax, e.g. 30s, 5m, 1h30m)", r)
			}
			*p = d
		case time.Duration:
			*p = r
		case int:
			// A bare 0 is unambiguous; any other bare number is (seconds? ms?) a likely mistake.
			if r != 0 {
				return fmt.Errorf("invalid duration %d: needs a unit (e.g. %ds)", r, r)
			}
			*p = 0
		default:
			return fmt.Errorf("must be a duration like 30s, got %s", describe(raw))
		}
	case *[]string:
		var out []string
		switch r := raw.(type) {
		case string:
			for _, s := range strings.Split(r, ",") {
				if s = strings.TrimSpace(s); s != "" {
					out = append(out, s)
				}
			}
		case []string:
			out = slices.Clone(r)
		case []any:
			for _, e := range r {
				s, ok := e.(string)
				if !ok {
					return fmt.Errorf("must be a list of strings, got an element %s", describe(e))
				}
				out = append(out, s)
			}
		case nil:
		default:
			return fmt.Errorf("must be a list of strings, got %s", describe(raw))
		}
		if out == nil {
			out = []string{}
		}
		*p = out
	default:
		panic(fmt.Sprintf("setField: unsupported %T", p))
	}
	return nil
}

// toInt accepts the integer forms YAML, environment strings and flags produce.
func toInt(raw any) (int64, error) {
	switch r := raw.(type) {
	case int:
		return int64(r), nil
	case int64:
		return r, nil
	case uint64:
		if r > math.MaxInt64 {
			return 0, fmt.Errorf("out of range: %d", r)
		}
		return int64(r), nil
	case float64:
		if r != math.Trunc(r) {
			return 0, fmt.Errorf("must be a whole number, got %v", r)
		}
		// YAML reads integers beyond int64 as floats; converting them would wrap around.
		if r >= math.MaxInt64 || r < math.MinInt64 {
			return 0, fmt.Errorf("out of range: %v", r)
		}
		return int64(r), nil
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(r), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("must be a whole number, got %q", r)
		}
		return n, nil
	}
	return 0, fmt.Errorf("must be a whole number, got %s", describe(raw))
}

// describe names a YAML value's shape for error messages without echoing large values.
func describe(raw any) string {
	switch raw.(type) {
	case map[string]any:
		return "a mapping"
	case []any, []string:
		return "a list"
	case nil:
		return "nothing"
	}
	return fmt.Sprintf("%q", fmt.Sprint(raw))
}

// firstDir returns the first entry of a systemd directory variable (they may list several, ':'-separated).
func firstDir(v string) string {
	d, _, _ := strings.Cut(v, ":")
	return d
}

// resolveDirs makes the data directory absolute, defaulting it (see resolveDataDir: $STATE_DIRECTORY
// under systemd), and defaults the cache directory to $CACHE_DIRECTORY or <data_dir>/cache. The socket
// is resolved by socketPath ($RUNTIME_DIRECTORY under systemd).
func (c *Config) resolveDirs() error {
	dir, err := resolveDataDir(c.DataDir)
	if err != nil {
		return err
	}
	c.DataDir = dir
	if c.CacheDir == "" {
		c.CacheDir = firstDir(os.Getenv("CACHE_DIRECTORY"))
		if c.CacheDir == "" {
			c.CacheDir = filepath.Join(c.DataDir, "cache")
		}
	}
	return nil
}
