package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestSampleConfigIsValidAndComplete(t *testing.T) {
	b, err := os.ReadFile("../../cascade.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	if err := decodeYAML(b, &cfg); err != nil {
		t.Fatalf("cascade.yaml: %v", err)
	}
	if err := cfg.validate(); err != nil {
		t.Fatalf("cascade.yaml: %v", err)
	}
	// The sample shows the defaults: loading it must change nothing.
	if !reflect.DeepEqual(normalize(cfg), normalize(defaultConfig())) {
		t.Errorf("cascade.yaml differs from the defaults:\n got %+v\nwant %+v", cfg, defaultConfig())
	}
	// Every key appears in the sample, and every key has a help text.
	for _, k := range keys(&cfg) {
		last := k.path[strings.LastIndex(k.path, ".")+1:]
		if !bytes.Contains(b, []byte(last+":")) {
			t.Errorf("key %s missing from cascade.yaml", k.path)
		}
		if k.help == "" {
			t.Errorf("key %s has no help text", k.path)
		}
	}
}

// normalize treats nil and empty collections alike.
func normalize(c Config) Config {
	if len(c.WebRTC.PublicHosts) == 0 {
		c.WebRTC.PublicHosts = nil
	}
	if len(c.ICEServers) == 0 {
		c.ICEServers = nil
	}
	if len(c.Auth.PublishKeys) == 0 {
		c.Auth.PublishKeys = nil
	}
	if len(c.Cluster.Regions) == 0 {
		c.Cluster.Regions = nil
	}
	return c
}

func TestUnknownYAMLKeyIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte("webrtc:\n  lisen: \":9999\"\n"), 0o600)
	_, _, err := load([]string{"--config", path}, nil, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "lisen") {
		t.Fatalf("misspelt key accepted: %v", err)
	}
}

func TestPrecedenceDefaultsYAMLEnvFlags(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte("http: \":1111\"\nwebrtc:\n  listen: \":2222\"\n  handshake_timeout: 3s\nstreams:\n  grace_period: 4s\n"), 0o600)
	env := []string{"CASCADE_WEBRTC_LISTEN=:3333", "CASCADE_STREAMS_GRACE_PERIOD=5s", "CASCADE_AUTH_PUBLISH_KEYS=live=k1,cam=k2"}
	cfg, _, err := load([]string{"--config", path, "--webrtc", ":4444", "--auth.open_publish=false"}, env, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"http from YAML", cfg.HTTP, ":1111"},
		{"webrtc.listen from the flag alias over env over YAML", cfg.WebRTC.Listen, ":4444"},
		{"handshake_timeout from YAML", cfg.WebRTC.HandshakeTimeout, 3 * time.Second},
		{"grace_period from env over YAML", cfg.Streams.GracePeriod, 5 * time.Second},
		{"publish_keys from env", cfg.Auth.PublishKeys, map[string]string{"live": "k1", "cam": "k2"}},
		{"open_publish from flag", cfg.Auth.OpenPublish, false},
		{"silence_timeout default", cfg.Streams.SilenceTimeout, 5 * time.Second},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
		}
	}
}

func TestBadValues(t *testing.T) {
	for _, args := range [][]string{
		{"--webrtc.handshake_timeout", "soon"},
		{"--log.level", "loud"},
		{"--http", "no-port"},
		{"--auth.publish_keys", "novalue"},
		{"--auth.publish_keys", "bad name=k"},
		{"--nope"},
	} {
		if _, _, err := load(args, nil, &bytes.Buffer{}); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestHelpGolden(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--help"}, nil, &out, &bytes.Buffer{}); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	golden := filepath.Join("testdata", "help.golden")
	if *update {
		os.WriteFile(golden, out.Bytes(), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(want) {
		t.Errorf("--help differs from %s (run go test ./cmd/cascade -update):\n%s", golden, out.String())
	}
	cfg := defaultConfig()
	for _, k := range keys(&cfg) {
		if !strings.Contains(out.String(), "--"+k.path) {
			t.Errorf("--help does not list %s", k.path)
		}
	}
}

// TestRoleCommandsCheckTheCluster: `cascade origin` and `cascade edge`
// run the node with a cluster role, whose settings are checked first.
func TestRoleCommandsCheckTheCluster(t *testing.T) {
	for _, args := range [][]string{
		{"edge", "--join", "no port:x", "--http", "127.0.0.1:0"},
		{"origin", "--cluster.profile", "nope", "--http", "127.0.0.1:0"},
	} {
		var errOut bytes.Buffer
		if code := run(args, nil, &bytes.Buffer{}, &errOut); code == 0 || !strings.Contains(errOut.String(), "cluster") {
			t.Errorf("cascade %v: exit %d, %q", args, code, errOut.String())
		}
	}
}

// cluster.regions is a YAML map of region to CIDRs; a bad subnet or
// region name stops the node at start, naming it.
func TestClusterRegionsConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("cluster:\n  regions:\n    eu-west: [\"10.1.0.0/16\", \"2001:db8:1::/48\"]\n    us-east: [\"10.2.0.0/16\", \"192.0.2.7\"]\n"), 0o600)
	cfg, _, err := load([]string{"--config", good}, nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"eu-west": {"10.1.0.0/16", "2001:db8:1::/48"}, "us-east": {"10.2.0.0/16", "192.0.2.7"}}
	if !reflect.DeepEqual(cfg.Cluster.Regions, want) {
		t.Fatalf("regions %v, want %v", cfg.Cluster.Regions, want)
	}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ yaml, want string }{
		{"cluster:\n  role: origin\n  regions:\n    eu: [\"10.1.0.0/33\"]\n", "10.1.0.0/33"},
		{"cluster:\n  role: origin\n  regions:\n    eu: [\"nonsense\"]\n", "nonsense"},
		{"cluster:\n  role: origin\n  regions:\n    \"bad region\": [\"10.0.0.0/8\"]\n", "bad region"},
		{"cluster:\n  role: origin\n  regions:\n    eu: [\"10.0.0.0/8\"]\n    us: [\"10.0.0.0/8\"]\n", "both"},
	} {
		path := filepath.Join(dir, "bad.yaml")
		os.WriteFile(path, []byte(c.yaml), 0o600)
		cfg, _, err := load([]string{"--config", path}, nil, &bytes.Buffer{})
		if err == nil {
			err = cfg.validate()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one naming %q", c.yaml, err, c.want)
		}
	}
}
