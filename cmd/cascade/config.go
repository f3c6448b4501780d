package main

import (
	"bytes"
	"encoding"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cascade-cdn/cascade/node"
)

// Config is the root configuration: every key, with its yaml path, is a
// --flag and a CASCADE_* environment variable.
type Config struct {
	node.Config `yaml:",inline"`
	Log         LogConfig `yaml:"log"`
}

// LogConfig sets up the slog handler.
type LogConfig struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text or json.
	Format string `yaml:"format"`
}

func defaultConfig() Config {
	return Config{Config: node.DefaultConfig(), Log: LogConfig{Level: "info", Format: "text"}}
}

func (c Config) validate() error {
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		return fmt.Errorf("log.level: %q is not debug, info, warn or error", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return fmt.Errorf("log.format: %q is not text or json", c.Log.Format)
	}
	return c.Config.Validate()
}

// key is one settable leaf of the configuration.
type key struct {
	path  string // yaml path, "webrtc.listen"
	field reflect.Value
	def   string
	help  string
}

func (k key) env() string {
	return "CASCADE_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(k.path))
}

// help texts, by yaml path. A test checks every key has one.
var helps = map[string]string{
	"http":                        "HTTP address: WHIP, WHEP, API, pages, /metrics",
	"webrtc.listen":               "UDP address for all WebRTC peers; ICE-TCP uses the same port",
	"webrtc.public_hosts":         "IPs or host names to announce in ICE candidates (NAT 1:1), comma-separated",
	"webrtc.tcp":                  "accept ICE over TCP on the WebRTC port",
	"webrtc.handshake_timeout":    "close sessions whose ICE/DTLS has not completed in this time",
	"webrtc.ice_failed_timeout":   "close sessions that sent nothing (no consent checks, no RTCP) for this long",
	"ice_servers":                 "STUN/TURN servers advertised to clients in Link headers (YAML only: list of {urls, username, credential})",
	"auth.open_publish":           "let anyone publish a stream that has no key in auth.publish_keys",
	"auth.publish_keys":           "per-stream publish keys (bearer tokens), stream=key,stream=key",
	"streams.grace_period":        "keep a stream's viewers this long after its publisher left",
	"streams.silence_timeout":     "mark a publisher gone after this long without media",
	"transcode.enabled":           "encode the ABR ladder below each source (off: viewers get the source only)",
	"transcode.ladder":            "rungs below the source (YAML only: list of {name, height, bitrate})",
	"transcode.keyframe_interval": "the shared keyframe clock of every transcoded rung",
	"transcode.encoder":           "libavcodec encoder; an unavailable one falls back to libx264",
	"transcode.preset":            "x264 speed preset",
	"pprof":                       "serve Go's profiler under /debug/pprof/ on the HTTP port",
	"drain_timeout":               "on SIGTERM, keep sessions this long after telling viewers to move to another node (less once all have gone)",
	"rtsp.listen":                 "RTSP address: publish (ANNOUNCE/RECORD) and relay reads (DESCRIBE/PLAY); empty turns RTSP off",
	"rtsp.udp_rtp":                "UDP port for RTSP's RTP (even); empty offers TCP only",
	"rtsp.udp_rtcp":               "UDP port for RTSP's RTCP (rtp + 1)",
	"rtsp.tls_cert":               "PEM certificate: serve RTSPS instead of RTSP (UDP then off)",
	"rtsp.tls_key":                "PEM key of rtsp.tls_cert",
	"rtsp.read_timeout":           "close RTSP sessions silent for this long",
	"sources":                     "cameras to pull, by stream name (YAML only: name: {url, on_demand, transport: tcp|udp, idle_timeout} or name: URL)",
	"cluster.secret":              "shared secret: relay reads (RTSP user cascade) and the gossip encryption key",
	"cluster.bind":                "gossip address (memberlist, TCP and UDP)",
	"cluster.advertise":           "address other nodes reach this one's gossip at (host or host:port)",
	"cluster.join":                "seeds to join: host:port or DNS names, comma-separated",
	"cluster.role":                "origin or edge; set by `cascade origin` / `cascade edge`, empty for the all-in-one node",
	"cluster.name":                "this node's unique name in the cluster (default: host name)",
	"cluster.region":              "region label; viewers are placed on edges of their region (X-Cascade-Region) first",
	"cluster.zone":                "zone label",
	"cluster.regions":             "viewers' regions by client subnet, when no X-Cascade-Region header is set (YAML only: region: [CIDR, ...]; the most specific subnet wins)",
	"cluster.capacity":            "viewers this node serves before sending them elsewhere",
	"cluster.max_children":        "edges one node feeds per stream; further edges relay from edges (0: unlimited)",
	"cluster.profile":             "gossip timings: lan, wan, local or fast (tests)",
	"relay.parent":                "RTSP address of the node to relay streams from that this node does not carry (rtsp://origin:8554)",
	"relay.idle_timeout":          "drop a relayed stream this long after its last viewer left",
	"log.level":                   "debug, info, warn or error",
	"log.format":                  "text or json",
}

// aliases are the short flags the design names.
var aliases = map[string]string{"webrtc": "webrtc.listen", "rtsp": "rtsp.listen", "gossip": "cluster.bind", "join": "cluster.join"}

// keys walks cfg and returns its leaves in yaml order.
func keys(cfg *Config) []key {
	var out []key
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("yaml")
			name, opts, _ := strings.Cut(tag, ",")
			if opts == "inline" {
				walk(v.Field(i), prefix)
				continue
			}
			if name == "" || name == "-" {
				continue
			}
			path := prefix + name
			fv := v.Field(i)
			if fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeOf(time.Duration(0)) {
				walk(fv, path+".")
				continue
			}
			out = append(out, key{path: path, field: fv, def: format(fv), help: helps[path]})
		}
	}
	walk(reflect.ValueOf(cfg).Elem(), "")
	return out
}

// settable reports whether a key can be set from a flag or variable.
func settable(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int64, reflect.Float64:
		return true
	case reflect.Slice:
		return v.Type().Elem().Kind() == reflect.String
	case reflect.Map:
		return v.Type().Key().Kind() == reflect.String && v.Type().Elem().Kind() == reflect.String
	}
	return false
}

func format(v reflect.Value) string {
	switch v.Kind() {
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			return ""
		}
		return strings.Join(v.Interface().([]string), ",")
	case reflect.Map:
		m, ok := v.Interface().(map[string]string)
		if !ok {
			return ""
		}
		var parts []string
		for k := range m {
			parts = append(parts, k+"=<secret>")
		}
		sort.Strings(parts)
		return strings.Join(parts, ",")
	case reflect.Int64:
		if d, ok := v.Interface().(time.Duration); ok {
			return d.String()
		}
	}
	return fmt.Sprint(v.Interface())
}

func set(v reflect.Value, s string) error {
	if u, ok := v.Addr().Interface().(encoding.TextUnmarshaler); ok {
		return u.UnmarshalText([]byte(s))
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		v.SetBool(b)
	case reflect.Int64:
		if v.Type() == reflect.TypeOf(time.Duration(0)) {
			d, err := time.ParseDuration(s)
			if err != nil {
				return err
			}
			v.SetInt(int64(d))
			return nil
		}
		fallthrough
	case reflect.Int:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		v.SetInt(n)
	case reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		v.SetFloat(f)
	case reflect.Slice:
		var list []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				list = append(list, p)
			}
		}
		v.Set(reflect.ValueOf(list))
	case reflect.Map:
		m := map[string]string{}
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			k, val, ok := strings.Cut(p, "=")
			if !ok {
				return fmt.Errorf("want name=value, got %q", p)
			}
			m[k] = val
		}
		v.Set(reflect.ValueOf(m))
	default:
		return errors.New("cannot be set from a flag or variable; use the YAML file")
	}
	return nil
}

// flagValue records a flag's text; it is applied after YAML and env so
// flags win.
type flagValue struct {
	s   *string
	set *bool
}

func (f flagValue) String() string {
	if f.s == nil {
		return ""
	}
	return *f.s
}
func (f flagValue) Set(s string) error { *f.s, *f.set = s, true; return nil }

type boolFlag struct{ flagValue }

func (boolFlag) IsBoolFlag() bool { return true }

// load builds the configuration: defaults, then the YAML file (strict:
// unknown keys are errors), then CASCADE_* variables, then flags. It
// returns flag.ErrHelp after writing usage for --help.
func load(args, environ []string, stdout io.Writer) (Config, []string, error) {
	cfg := defaultConfig()
	ks := keys(&cfg)
	fs := flag.NewFlagSet("cascade", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	configPath := fs.String("config", "", "YAML configuration file")
	type pending struct {
		k   key
		s   string
		set bool
	}
	ps := make([]*pending, 0, len(ks))
	byPath := map[string]*pending{}
	for _, k := range ks {
		if !settable(k.field) {
			continue
		}
		p := &pending{k: k}
		ps = append(ps, p)
		byPath[k.path] = p
		fv := flagValue{s: &p.s, set: &p.set}
		if k.field.Kind() == reflect.Bool {
			fs.Var(boolFlag{fv}, k.path, k.help)
		} else {
			fs.Var(fv, k.path, k.help)
		}
	}
	for alias, path := range aliases {
		p := byPath[path]
		fs.Var(flagValue{s: &p.s, set: &p.set}, alias, "same as --"+path)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout, ks)
		}
		return cfg, nil, err
	}

	path := *configPath
	if path == "" {
		path = lookupEnv(environ, "CASCADE_CONFIG")
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return cfg, nil, fmt.Errorf("config: %w", err)
		}
		if err := decodeYAML(b, &cfg); err != nil {
			return cfg, nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	for _, p := range ps {
		if v := lookupEnv(environ, p.k.env()); v != "" {
			if err := set(p.k.field, v); err != nil {
				return cfg, nil, fmt.Errorf("%s: %w", p.k.env(), err)
			}
		}
	}
	for _, p := range ps {
		if p.set {
			if err := set(p.k.field, p.s); err != nil {
				return cfg, nil, fmt.Errorf("--%s: %w", p.k.path, err)
			}
		}
	}
	return cfg, fs.Args(), cfg.validate()
}

// decodeYAML decodes strictly: a misspelt key is an error, not a default.
func decodeYAML(b []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

func lookupEnv(environ []string, name string) string {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

func usage(w io.Writer, ks []key) {
	fmt.Fprint(w, `Usage: cascade [flags]            all-in-one node (origin + edge in one process)
       cascade origin [flags]     an origin: ingest and transcode, gossip on cluster.bind
       cascade edge --join H:P    an edge: joins the cluster, relays from the origin, serves viewers

Configuration: defaults, then --config FILE (YAML, unknown keys are errors),
then CASCADE_* environment variables, then flags. Flags win.

  --config FILE   YAML configuration file (also CASCADE_CONFIG)
`)
	for _, k := range ks {
		fmt.Fprintf(w, "\n  --%s", k.path)
		if !settable(k.field) {
			fmt.Fprint(w, "  (YAML only)")
		}
		for alias, path := range aliases {
			if path == k.path {
				fmt.Fprintf(w, ", --%s", alias)
			}
		}
		fmt.Fprintf(w, "\n        %s\n        env %s", k.help, k.env())
		if k.def != "" {
			fmt.Fprintf(w, ", default %q", k.def)
		}
		fmt.Fprintln(w)
	}
}
