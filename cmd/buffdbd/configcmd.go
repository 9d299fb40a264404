package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/spf13/cobra"
)

// maskedSecret replaces a set secret in `config print` and logs.
const maskedSecret = "********"

// writeConfigYAML writes cfg as YAML in configKeys order, nested by section; secrets set to a
// non-empty value are masked. The output loads back to cfg (unless masked).
func writeConfigYAML(w io.Writer, cfg Config, mask bool) error {
	var b strings.Builder
	section := ""
	for _, k := range configKeys {
		sec, leaf, nested := strings.Cut(k.name, ".")
		if !nested {
			sec, leaf = "", k.name
		}
		if sec != section {
			section = sec
			b.WriteString("\n" + sec + ":\n")
		}
		indent := ""
		if sec != "" {
			indent = "  "
		}
		fmt.Fprintf(&b, "%s%s: %s\n", indent, leaf, yamlValue(k, &cfg, mask))
	}
	_, err := io.WriteString(w, strings.TrimPrefix(b.String(), "\n"))
	return err
}

// yamlValue renders one field as a YAML scalar or flow list. Strings are JSON-quoted, which YAML
// reads back verbatim; sizes and durations stay bare ("20GiB", "1h") as an operator would write them.
func yamlValue(k configKey, cfg *Config, mask bool) string {
	p := k.field(cfg)
	switch p := p.(type) {
	case *string:
		s := *p
		if mask && k.secret && s != "" {
			s = maskedSecret
		}
		if mask {
			s = maskURLUser(s)
		}
		q, _ := json.Marshal(s)
		return string(q)
	case *[]string:
		q, _ := json.Marshal(*p)
		return strings.ReplaceAll(string(q), `","`, `", "`)
	}
	return formatValue(p)
}

// maskURLUser masks the user information of a URL value (https://user:token@mirror/): mirrors
// that take credentials in the URL make the endpoint a secret, though the key is not one.
func maskURLUser(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil || u.Host == "" {
		return s
	}
	u.User = nil // url.User would percent-encode the mask
	return strings.Replace(u.String(), "://", "://"+maskedSecret+"@", 1)
}

// maskedAttrs is the effective configuration as log attributes, secrets masked, for the startup log.
func (c Config) maskedAttrs() []any {
	var attrs []any
	for _, k := range configKeys {
		v := strings.Trim(yamlValue(k, &c, true), `"`)
		attrs = append(attrs, k.name, v)
	}
	return attrs
}

// newConfigCommand is `buffdbd config print|check`.
func newConfigCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show or check the effective configuration",
	}
	load := func(c *cobra.Command) (Config, string, error) {
		cfg, file, warnings, err := LoadConfig(c.Flags())
		for _, w := range warnings {
			fmt.Fprintln(c.ErrOrStderr(), "buffdbd: warning:", w)
		}
		if err != nil {
			return cfg, file, err
		}
		if err := cfg.resolveDirs(); err != nil {
			return cfg, file, err
		}
		if cfg.GRPC.Socket != socketNone {
			cfg.GRPC.Socket = socketPath(cfg)
		}
		return cfg, file, nil
	}
	print := &cobra.Command{
		Use: "print",
		// "show" is what etcd, kubectl (config view) and most operators type first.
		Aliases: []string{"show"},
		Short:   "Print the effective configuration (file, environment and flags applied; secrets masked)",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, file, err := load(c)
			if err != nil {
				return err
			}
			src := file
			if src == "" {
				src = "none, defaults"
			}
			fmt.Fprintf(c.OutOrStdout(), "# buffdbd effective configuration (config file: %s)\n", src)
			return writeConfigYAML(c.OutOrStdout(), cfg, true)
		},
	}
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration; exit 0 if valid, 78 (EX_CONFIG) if not",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, file, err := load(c)
			if err != nil {
				return err
			}
			if err := cfg.CheckFiles(); err != nil {
				return err
			}
			if file == "" {
				file = "defaults (no config file)"
			}
			fmt.Fprintf(c.OutOrStdout(), "configuration ok: %s\n", file)
			return nil
		},
	}
	cmd.AddCommand(print, check)
	return cmd
}
