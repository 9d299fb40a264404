package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// loadWith loads the configuration with args as flags, the way `buffdbd run` does.
func loadWith(t testing.TB, args ...string) (Config, []string, error) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	addConfigFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse flags %v: %v", args, err)
	}
	cfg, _, warnings, err := LoadConfig(fs)
	return cfg, warnings, err
}

// writeFile writes a config file into a temp dir and returns its path.
func writeFile(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "buffdbd.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// isolateEnv clears variables that would change where config comes from.
func isolateEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, envPrefix) || name == "CONFIGURATION_DIRECTORY" {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
}

func TestLoadConfig_SampleIsDefault(t *testing.T) {
	isolateEnv(t)
	sample := filepath.Join("..", "..", "configs", "buffdbd.yaml")
	got, warnings, err := loadWith(t, "--config", sample)
	if err != nil {
		t.Fatalf("load sample: %v", err)
	}
	if len(warnings) > 0 {
		t.Fatalf("warnings: %v", warnings)
	}
	if want := DefaultConfig(); !reflect.DeepEqual(got, want) {
		t.Fatalf("sample config differs from DefaultConfig():\n got %+v\nwant %+v", got, want)
	}

	// Every key appears in the sample (not merely defaulted), and nothing else does.
	raw, err := os.ReadFile(sample)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var inFile []string
	var flatten func(prefix string, m map[string]any)
	flatten = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				flatten(prefix+k+".", sub)
				continue
			}
			inFile = append(inFile, prefix+k)
		}
	}
	flatten("", doc)
	slices.Sort(inFile)
	var known []string
	for _, k := range configKeys {
		known = append(known, k.name)
	}
	slices.Sort(known)
	if !slices.Equal(inFile, known) {
		t.Fatalf("sample keys differ from configKeys:\n got %v\nwant %v", inFile, known)
	}
}

func TestConfigKeys_CoverEveryField(t *testing.T) {
	// Set each key's field to a distinct non-default value through its pointer; if two keys shared
	// a field or a field had no key, the round trip through YAML would not reproduce the struct.
	cfg := DefaultConfig()
	for i, k := range configKeys {
		switch p := k.field(&cfg).(type) {
		case *string:
			*p = "v" + k.name
		case *bool:
			*p = !*p
		case *int:
			*p = 100 + i
		case *ByteSize:
			*p = ByteSize(i+1) * MiB
		case *time.Duration:
			*p = time.Duration(i+1) * time.Minute
		case *[]string:
			*p = []string{"h" + k.name + ":1"}
		default:
			t.Fatalf("%s: unsupported field type %T", k.name, p)
		}
	}
	var buf bytes.Buffer
	if err := writeConfigYAML(&buf, cfg, false); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatalf("config print output is not YAML: %v\n%s", err, buf.String())
	}
	got := DefaultConfig()
	for _, k := range configKeys {
		sec, leaf, nested := strings.Cut(k.name, ".")
		raw := doc[k.name]
		if nested {
			raw = doc[sec].(map[string]any)[leaf]
		}
		if err := setField(k.field(&got), raw); err != nil {
			t.Fatalf("%s: %v", k.name, err)
		}
	}
	if !reflect.DeepEqual(got, cfg) {
		t.Fatalf("round trip through config print:\n got %+v\nwant %+v", got, cfg)
	}
	// Every exported Config leaf field is reached: count them by reflection.
	var count func(reflect.Type) int
	count = func(t reflect.Type) int {
		n := 0
		for f := range t.Fields() {
			if f.Type.Kind() == reflect.Struct {
				n += count(f.Type)
			} else {
				n++
			}
		}
		return n
	}
	if got, want := len(configKeys), count(reflect.TypeFor[Config]()); got != want {
		t.Fatalf("configKeys has %d keys, Config has %d fields", got, want)
	}
}

func TestLoadConfig_Precedence(t *testing.T) {
	isolateEnv(t)
	file := writeFile(t, "data_dir: /from/file\nregistry:\n  max_bytes: 1GiB\nlog:\n  level: warn\n")

	t.Run("File", func(t *testing.T) {
		cfg, _, err := loadWith(t, "--config", file)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.DataDir != "/from/file" || cfg.Registry.MaxBytes != GiB || cfg.Log.Level != "warn" {
			t.Fatalf("got data_dir=%q max_bytes=%s level=%s", cfg.DataDir, cfg.Registry.MaxBytes, cfg.Log.Level)
		}
		if want := DefaultConfig().Registry.GCInterval; cfg.Registry.GCInterval != want {
			t.Fatalf("unset key: got %s, want default %s", cfg.Registry.GCInterval, want)
		}
	})
	t.Run("EnvOverFile", func(t *testing.T) {
		t.Setenv("BUFFDBD_REGISTRY_MAX_BYTES", "2GiB")
		t.Setenv("BUFFDBD_DATA_DIR", "/from/env")
		t.Setenv("BUFFDBD_GRPC_LISTEN", "127.0.0.1:1, 127.0.0.1:2")
		t.Setenv("BUFFDBD_HUGGINGFACE_OFFLINE", "true")
		cfg, _, err := loadWith(t, "--config", file)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.DataDir != "/from/env" || cfg.Registry.MaxBytes != 2*GiB || !cfg.HuggingFace.Offline {
			t.Fatalf("got data_dir=%q max_bytes=%s offline=%v", cfg.DataDir, cfg.Registry.MaxBytes, cfg.HuggingFace.Offline)
		}
		if want := []string{"127.0.0.1:1", "127.0.0.1:2"}; !slices.Equal(cfg.GRPC.Listen, want) {
			t.Fatalf("grpc.listen: got %q, want %q", cfg.GRPC.Listen, want)
		}
		if cfg.Log.Level != "warn" {
			t.Fatalf("log.level from file lost: %q", cfg.Log.Level)
		}
	})
	t.Run("FlagOverEnv", func(t *testing.T) {
		t.Setenv("BUFFDBD_REGISTRY_MAX_BYTES", "2GiB")
		t.Setenv("BUFFDBD_DATA_DIR", "/from/env")
		cfg, _, err := loadWith(t, "--config", file, "--registry-max-bytes", "3GiB",
			"--listen", "127.0.0.1:7", "--huggingface-concurrency", "9")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Registry.MaxBytes != 3*GiB || cfg.DataDir != "/from/env" || cfg.HuggingFace.Concurrency != 9 {
			t.Fatalf("got max_bytes=%s data_dir=%q concurrency=%d", cfg.Registry.MaxBytes, cfg.DataDir, cfg.HuggingFace.Concurrency)
		}
		if want := []string{"127.0.0.1:7"}; !slices.Equal(cfg.GRPC.Listen, want) {
			t.Fatalf("grpc.listen: got %q, want %q", cfg.GRPC.Listen, want)
		}
	})
	t.Run("ConfigFromEnv", func(t *testing.T) {
		t.Setenv("BUFFDBD_CONFIG", file)
		cfg, _, err := loadWith(t)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.DataDir != "/from/file" {
			t.Fatalf("BUFFDBD_CONFIG not read: data_dir=%q", cfg.DataDir)
		}
	})
}

func TestParseByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ByteSize
	}{
		{"0", 0}, {"4096", 4096}, {"20GiB", 20 * GiB}, {"20gib", 20 * GiB}, {"20 GiB", 20 * GiB},
		{"1GB", 1_000_000_000}, {"512MiB", 512 * MiB}, {"1.5KiB", 1536}, {"2TiB", 2 * TiB},
	} {
		got, err := ParseByteSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
		// String renders exactly and parses back.
		if back, err := ParseByteSize(got.String()); err != nil || back != got {
			t.Errorf("ParseByteSize(%q.String()=%q) = %d, %v", tc.in, got.String(), back, err)
		}
	}
	for _, bad := range []string{"", "GiB", "20XB", "-1GiB", "twenty", "99999999999999999999"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q): want error", bad)
		}
	}
}

func TestLoadConfig_Errors(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		env        map[string]string
		flags      []string
		want       string
	}{
		{name: "UnknownKey", file: "registri:\n  max_bytes: 1GiB\n", want: "unknown key registri.max_bytes"},
		{name: "UnknownLeaf", file: "grpc:\n  listn: [\"x:1\"]\n", want: "unknown key grpc.listn"},
		{name: "SectionIsValue", file: "registry: 5\n", want: "registry: must be a section of keys, not a value"},
		{name: "BadYAML", file: "grpc:\n  listen: [\n", want: "config file"},
		{name: "ZeroBudget", file: "registry:\n  max_bytes: 0\n", want: "registry.max_bytes: must be > 0"},
		{name: "BadSize", file: "registry:\n  max_bytes: 20XB\n", want: `registry.max_bytes: invalid size "20XB"`},
		{name: "BadSizeEnv", env: map[string]string{"BUFFDBD_REGISTRY_MAX_BYTES": "lots"},
			want: "registry.max_bytes: invalid size \"lots\" (use e.g. 512MiB, 20GiB or a number of bytes) (from environment BUFFDBD_REGISTRY_MAX_BYTES)"},
		{name: "BadDuration", file: "registry:\n  gc_interval: 1 hour\n", want: `registry.gc_interval: invalid duration "1 hour"`},
		{name: "UnitlessDuration", file: "shutdown_timeout: 30\n", want: "shutdown_timeout: invalid duration 30: needs a unit"},
		{name: "BadBoolFlag", flags: []string{"--durability", "fast"}, want: `store.durability: must be "sync" or "process", got "fast"`},
		{name: "BadListen", file: "grpc:\n  listen: [\"localhost\"]\n", want: `grpc.listen: "localhost": must be host:port`},
		{name: "SecondDocument", file: "shutdown_timeout: 1s\n---\nbogus: 1\n", want: `holds more than one YAML document (line 2 starts another)`},
		{name: "CaseDuplicate", file: "registry:\n  max_bytes: 1GiB\n  Max_Bytes: 2GiB\n", want: `keys "max_bytes" (line 2) and "Max_Bytes" (line 3) are the same key`},
		{name: "ExactDuplicate", file: "registry:\n  max_bytes: 1GiB\n  max_bytes: 2GiB\n", want: `line 3: mapping key "max_bytes" already defined at line 2`},
		{name: "SizeOverflow", file: "registry:\n  max_bytes: 99999999999999999999\n", want: `registry.max_bytes: size 1e+20 is too large`},
		{name: "ListenPortRange", file: "grpc:\n  listen: [\"127.0.0.1:99999\"]\n", want: `grpc.listen: "127.0.0.1:99999": port must be at most 65535`},
		{name: "HTTPPortRange", file: "http:\n  listen: \"127.0.0.1:65536\"\n", want: `http.listen: "127.0.0.1:65536": port must be at most 65535`},
		{name: "ListenNotList", file: "grpc:\n  listen: {a: 1}\n", want: "grpc.listen: must be a list of strings, got a mapping"},
		{name: "BadInt", env: map[string]string{"BUFFDBD_STORE_MAX_OPEN_TX": "many"}, want: `store.max_open_tx: must be a whole number, got "many"`},
		{name: "TxTimeouts", file: "store:\n  max_tx_timeout: 1s\n", want: "store.max_tx_timeout: must be >= store.default_tx_timeout"},
		{name: "BadEndpoint", file: "huggingface:\n  endpoint: huggingface.co\n", want: "huggingface.endpoint: must be an http(s) URL"},
		{name: "BadLevel", env: map[string]string{"BUFFDBD_LOG_LEVEL": "loud"}, want: "log.level: must be debug, info, warn or error"},
		{name: "BadFormat", file: "log:\n  format: xml\n", want: "log.format: must be auto, text, json or journald"},
		{name: "MessageTooSmall", file: "grpc:\n  max_message_bytes: 1MiB\n", want: "grpc.max_message_bytes: must be between 4MiB and 2GiB"},
		{name: "MissingFile", flags: []string{"--config", "/nonexistent/buffdbd.yaml"}, want: "config file /nonexistent/buffdbd.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolateEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			flags := tc.flags
			if tc.file != "" {
				flags = append([]string{"--config", writeFile(t, tc.file)}, flags...)
			} else if !slices.Contains(flags, "--config") {
				flags = append([]string{"--config", writeFile(t, "")}, flags...)
			}
			_, _, err := loadWith(t, flags...)
			if err == nil {
				t.Fatalf("want error containing %q", tc.want)
			}
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error %v is not ErrConfig", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %q\nwant it to contain %q", err, tc.want)
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Fatalf("want one line, got %q", err)
			}
		})
	}
}

func TestLoadConfig_UnknownEnvWarns(t *testing.T) {
	isolateEnv(t)
	t.Setenv("BUFFDBD_REGISTRY_MAXBYTES", "1GiB")
	_, warnings, err := loadWith(t, "--config", writeFile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "BUFFDBD_REGISTRY_MAXBYTES") {
		t.Fatalf("warnings = %q", warnings)
	}
}

func TestConfig_resolveDirs(t *testing.T) {
	t.Run("Systemd", func(t *testing.T) {
		t.Setenv("STATE_DIRECTORY", "/var/lib/buffdbd")
		t.Setenv("CACHE_DIRECTORY", "/var/cache/buffdbd:/other")
		t.Setenv("RUNTIME_DIRECTORY", "/run/buffdbd")
		c := DefaultConfig()
		if err := c.resolveDirs(); err != nil {
			t.Fatal(err)
		}
		if c.DataDir != "/var/lib/buffdbd" || c.CacheDir != "/var/cache/buffdbd" || socketPath(c) != "/run/buffdbd/buffdbd.sock" {
			t.Fatalf("got %q %q %q", c.DataDir, c.CacheDir, socketPath(c))
		}
	})
	t.Run("Plain", func(t *testing.T) {
		for _, v := range []string{"STATE_DIRECTORY", "CACHE_DIRECTORY", "RUNTIME_DIRECTORY"} {
			t.Setenv(v, "")
		}
		home := t.TempDir()
		t.Setenv("HOME", home)
		t.Setenv("XDG_DATA_HOME", "")
		c := DefaultConfig()
		if err := c.resolveDirs(); err != nil {
			t.Fatal(err)
		}
		data := filepath.Join(home, ".local", "share", "buffdbd")
		if c.DataDir != data || c.CacheDir != filepath.Join(data, "cache") || socketPath(c) != filepath.Join(data, "buffdbd.sock") {
			t.Fatalf("got %q %q %q", c.DataDir, c.CacheDir, socketPath(c))
		}
	})
	t.Run("SystemDataDir", func(t *testing.T) {
		// A device running the service: the CLI finds the service's directory without --data-dir.
		t.Setenv("STATE_DIRECTORY", "")
		sys := t.TempDir()
		defer func(old string) { systemDataDir = old }(systemDataDir)
		systemDataDir = sys
		c := DefaultConfig()
		if err := c.resolveDirs(); err != nil {
			t.Fatal(err)
		}
		if c.DataDir != sys {
			t.Fatalf("got %q, want %q", c.DataDir, sys)
		}
		systemDataDir = filepath.Join(sys, "missing")
		c = DefaultConfig()
		if err := c.resolveDirs(); err != nil {
			t.Fatal(err)
		}
		if c.DataDir == systemDataDir {
			t.Fatalf("used a missing system data directory")
		}
	})
	t.Run("ExplicitWins", func(t *testing.T) {
		t.Setenv("STATE_DIRECTORY", "/var/lib/buffdbd")
		t.Setenv("RUNTIME_DIRECTORY", "/run/buffdbd")
		c := DefaultConfig()
		c.DataDir, c.GRPC.Socket = "/data", socketNone
		if err := c.resolveDirs(); err != nil {
			t.Fatal(err)
		}
		if c.DataDir != "/data" || socketPath(c) != "" || c.CacheDir != "/data/cache" {
			t.Fatalf("got %q %q %q", c.DataDir, socketPath(c), c.CacheDir)
		}
	})
}

func TestWriteConfigYAML_MasksSecrets(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HuggingFace.Token = "hf_supersecret"
	cfg.HuggingFace.Endpoint = "https://mirror-user:supersecret@mirror.example/hf"
	var buf bytes.Buffer
	if err := writeConfigYAML(&buf, cfg, true); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "supersecret") || !strings.Contains(buf.String(), `token: "`+maskedSecret+`"`) {
		t.Fatalf("token not masked:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), `endpoint: "https://`+maskedSecret+`@mirror.example/hf"`) {
		t.Fatalf("endpoint credentials not masked:\n%s", buf.String())
	}
	for _, a := range cfg.maskedAttrs() {
		if s, ok := a.(string); ok && strings.Contains(s, "supersecret") {
			t.Fatalf("startup log attrs leak the token")
		}
	}
}

func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"20GiB", "1.5 KB", "0", "-1", "9223372036854775807", "18446744073709551615", "1e3", " 4 mib "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseByteSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("ParseByteSize(%q) = %d < 0", s, n)
		}
		// Whatever parses renders exactly and parses back to the same size.
		if back, err := ParseByteSize(n.String()); err != nil || back != n {
			t.Fatalf("ParseByteSize(%q) = %d; String %q parses to %d, %v", s, n, n.String(), back, err)
		}
	})
}

func TestLoadConfig_ConfigurationDirectory(t *testing.T) {
	// The unit runs `buffdbd run` without --config; systemd exports CONFIGURATION_DIRECTORY.
	isolateEnv(t)
	dir := t.TempDir()
	t.Setenv("CONFIGURATION_DIRECTORY", dir)
	t.Run("Missing", func(t *testing.T) {
		cfg, _, err := loadWith(t)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(cfg, DefaultConfig()) {
			t.Fatalf("without a file, want defaults; got %+v", cfg)
		}
	})
	t.Run("Present", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(dir, "buffdbd.yaml"), []byte("data_dir: /srv/models\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, _, err := loadWith(t)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.DataDir != "/srv/models" {
			t.Fatalf("data_dir = %q", cfg.DataDir)
		}
	})
}

func TestLoadConfig_EmptyEnvClears(t *testing.T) {
	// Environment=BUFFDBD_HTTP_LISTEN= in a systemd drop-in disables metrics, as --http-listen= does.
	t.Setenv("BUFFDBD_HTTP_LISTEN", "")
	cfg, _, err := loadWith(t, "--config", writeFile(t, "http:\n  listen: \"127.0.0.1:20014\"\n"))
	if err != nil || cfg.HTTP.Listen != "" {
		t.Fatalf("http.listen = %q, %v; want the empty variable to clear it", cfg.HTTP.Listen, err)
	}
}

func TestConfigShow_MasksSecrets(t *testing.T) {
	// `config show` is `config print`: the token from any source never appears.
	t.Setenv("BUFFDBD_HUGGINGFACE_TOKEN", "hf_envsecret")
	var stdout, stderr bytes.Buffer
	code := execute(context.Background(), []string{"config", "show", "--config", os.DevNull, "--data-dir", t.TempDir()},
		strings.NewReader(""), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), `  token: "********"`) || strings.Contains(stdout.String(), "hf_envsecret") {
		t.Fatalf("config show:\n%s", stdout.String())
	}
}

func TestLoadConfig_WorldReadableTokenWarns(t *testing.T) {
	// A token any local user can read is worth a warning at every start and config check; the
	// same token in a private file, or from the environment, is not.
	isolateEnv(t)
	tokenFile := filepath.Join(t.TempDir(), "hf-token")
	if err := os.WriteFile(tokenFile, []byte("hf_filetoken\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inline := writeFile(t, "huggingface:\n  token: hf_inline\n")
	if err := os.Chmod(inline, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  string
		want []string
	}{
		{"InlineWorldReadable", []string{"--config", inline}, "", []string{"config file " + inline + " holds huggingface.token and every local user can read it (mode 0644)"}},
		{"TokenFileWorldReadable", []string{"--config", writeFile(t, "huggingface:\n  token_file: "+tokenFile+"\n")}, "",
			[]string{"huggingface.token_file " + tokenFile + " is readable by every local user (mode 0644)"}},
		{"InlinePrivate", []string{"--config", writeFile(t, "huggingface:\n  token: hf_inline\n")}, "", nil},
		{"EnvOverridesFile", []string{"--config", inline}, "hf_env", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("BUFFDBD_HUGGINGFACE_TOKEN", tc.env)
			if tc.env == "" {
				os.Unsetenv("BUFFDBD_HUGGINGFACE_TOKEN")
			}
			_, warnings, err := loadWith(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) != len(tc.want) {
				t.Fatalf("warnings = %q, want %q", warnings, tc.want)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(warnings[i], w) {
					t.Fatalf("warning %q, want prefix %q", warnings[i], w)
				}
				if strings.Contains(warnings[i], "hf_") {
					t.Fatalf("a warning shows the token: %q", warnings[i])
				}
			}
		})
	}
}
