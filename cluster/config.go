package cluster

import (
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Config is the cluster configuration (config key "cluster").
type Config struct {
	// Secret authorises relay reads between nodes (RTSP user "cascade",
	// this as password) and keys the gossip encryption: AES-256-GCM with
	// the SHA-256 of a label and the secret (GossipKey). Empty leaves relay
	// reads open and gossip in plain text, which the node logs (see
	// Cluster.Encrypted).
	Secret string `yaml:"secret"`
	// Bind is the gossip address, TCP and UDP on the same port.
	Bind string `yaml:"bind"`
	// Advertise is the address other nodes reach this one at ("host" or
	// "host:port"); empty picks the bind address, or this machine's first
	// private address when bound to all.
	Advertise string `yaml:"advertise"`
	// Join lists seeds: host:port, or DNS names that may resolve to several
	// addresses (a Kubernetes headless service). A missing port is 7946.
	// Seeds that are not up yet are retried with backoff, and seeds that
	// leave the cluster are rejoined, so a partition heals.
	Join []string `yaml:"join"`
	// Role is origin or edge. Empty lets the command decide (`cascade
	// origin`, `cascade edge`).
	Role Role `yaml:"role"`
	// Name is this node's name in the cluster, unique; empty is the host
	// name.
	Name string `yaml:"name"`
	// Region and Zone label the node; viewers are sent to edges of their
	// own region first.
	Region string `yaml:"region"`
	Zone   string `yaml:"zone"`
	// Regions maps viewers to regions by their address, for placement
	// when the request has no region header (node.RegionHeader): region
	// name to a list of CIDRs; the most specific subnet wins. Empty maps
	// nobody. Behind a proxy every viewer has the proxy's address: set the
	// header there instead.
	Regions map[string][]string `yaml:"regions"`
	// Capacity is how many viewers this node serves before it sends them
	// elsewhere; 0 takes none (an ingest-only origin).
	Capacity int `yaml:"capacity"`
	// MaxChildren bounds how many edges pull a stream from one node: the
	// origin feeds at most this many edges per stream, and further edges
	// pull from edges. 0 is unlimited: every edge pulls from the origin.
	MaxChildren int `yaml:"max_children"`
	// Profile picks the gossip timings: lan (the default), wan, local
	// (memberlist's loopback profile), or fast (tests on one machine:
	// failures noticed in about a second).
	Profile string `yaml:"profile"`

	// transport replaces the UDP/TCP transport (the in-memory network of
	// the simulation). Not configurable.
	transport memberlist.NodeAwareTransport
	// tune adjusts the timings after the profile (tests).
	tune func(*timings)
}

// DefaultGossipPort is the memberlist port.
const DefaultGossipPort = 7946

// maxSeeds bounds Join, and the addresses one DNS name may add.
const maxSeeds = 64

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Bind:        ":7946",
		Capacity:    1000,
		MaxChildren: 8,
		Profile:     "lan",
	}
}

// Validate reports the first setting out of range.
func (c Config) Validate() error {
	if _, _, err := splitBind(c.Bind); err != nil {
		return fmt.Errorf("cluster: bind %q: %w", c.Bind, err)
	}
	if c.Advertise != "" {
		if _, _, err := splitAdvertise(c.Advertise); err != nil {
			return fmt.Errorf("cluster: advertise %q: %w", c.Advertise, err)
		}
	}
	if len(c.Join) > maxSeeds {
		return fmt.Errorf("cluster: join lists %d seeds, at most %d", len(c.Join), maxSeeds)
	}
	for _, s := range c.Join {
		if _, _, err := splitSeed(s); err != nil {
			return fmt.Errorf("cluster: join seed %q: %w", s, err)
		}
	}
	switch c.Role {
	case "", RoleOrigin, RoleEdge:
	default:
		return fmt.Errorf("cluster: role %q is not origin or edge", c.Role)
	}
	if c.Name != "" && !ValidNodeName(c.Name) {
		return fmt.Errorf("cluster: name %q: want [A-Za-z0-9][A-Za-z0-9._-]{0,%d}", c.Name, MaxNameLen-1)
	}
	if !validLabel(c.Region) {
		return fmt.Errorf("cluster: region %q: at most %d of [A-Za-z0-9._-]", c.Region, MaxLabelLen)
	}
	if !validLabel(c.Zone) {
		return fmt.Errorf("cluster: zone %q: at most %d of [A-Za-z0-9._-]", c.Zone, MaxLabelLen)
	}
	if _, err := NewRegions(c.Regions); err != nil {
		return err
	}
	if c.Capacity < 0 || c.Capacity > maxCount {
		return fmt.Errorf("cluster: capacity %d is not in [0, %d]", c.Capacity, maxCount)
	}
	if c.MaxChildren < 0 || c.MaxChildren > 1024 {
		return fmt.Errorf("cluster: max_children %d is not in [0, 1024]", c.MaxChildren)
	}
	if _, ok := profiles[c.profile()]; !ok {
		return fmt.Errorf("cluster: profile %q is not lan, wan, local or fast", c.Profile)
	}
	return nil
}

func (c Config) profile() string {
	if c.Profile == "" {
		return "lan"
	}
	return c.Profile
}

// GossipKey derives the 32-byte AES key of the gossip keyring from the
// secret, or returns nil for no secret. The label keeps the key distinct
// from the secret itself, which is also the relay password.
func GossipKey(secret string) []byte {
	if secret == "" {
		return nil
	}
	k := sha256.Sum256([]byte("cascade cluster gossip v1\x00" + secret))
	return k[:]
}

// nodeName returns the configured name or the host name.
func (c Config) nodeName() (string, error) {
	if c.Name != "" {
		return c.Name, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("cluster: no name set and no host name: %w", err)
	}
	h, _, _ = strings.Cut(h, ".")
	if !ValidNodeName(h) {
		return "", fmt.Errorf("cluster: host name %q is not a valid node name; set cluster.name", h)
	}
	return h, nil
}

// splitBind parses "host:port" with an optional host (all interfaces).
func splitBind(s string) (string, int, error) { return splitIPPort(s, "0.0.0.0") }

// splitAdvertise parses "ip" or "ip:port"; port 0 means the bound port.
func splitAdvertise(s string) (string, int, error) {
	if ip := net.ParseIP(s); ip != nil {
		return s, 0, nil
	}
	return splitIPPort(s, "")
}

// splitIPPort parses "ip:port"; an empty ip stands for emptyHost, and is
// refused when that is empty too.
func splitIPPort(s, emptyHost string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if host == "" {
		host = emptyHost
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%q is not an IP address", host)
	}
	return host, port, nil
}

// splitSeed parses "host", "host:port", "[v6]:port" (host may be a DNS
// name) and returns host and port.
func splitSeed(s string) (string, int, error) {
	if s == "" || len(s) > 253+6 || !asciiToken(s) {
		return "", 0, fmt.Errorf("not a host or host:port")
	}
	if ip := net.ParseIP(s); ip != nil {
		return s, DefaultGossipPort, nil
	}
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		if strings.Contains(s, ":") {
			return "", 0, err
		}
		return s, DefaultGossipPort, nil
	}
	port, err := strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if host == "" {
		return "", 0, fmt.Errorf("no host")
	}
	return host, port, nil
}

// timings are the clocks of one profile.
type timings struct {
	// base returns memberlist's settings for the profile.
	base func() *memberlist.Config
	// refresh is how often the load is looked at and, if it changed
	// and the last update is minUpdate old, gossiped; heartbeat is how
	// often it is gossiped even unchanged.
	refresh, minUpdate, heartbeat time.Duration
	// joinMin and joinMax bound the join retry backoff; joinMax is also
	// how often seeds are checked once joined.
	joinMin, joinMax time.Duration
	// tombstoneTTL keeps withdrawn entries, so an older announce still in
	// flight cannot bring them back.
	tombstoneTTL time.Duration
	// goneTTL keeps the epoch of nodes that died or left, so their old
	// broadcasts still in flight are refused.
	goneTTL time.Duration
	// orphanTTL drops entries of owners that never became members.
	orphanTTL time.Duration
	// deadLinger keeps dead members in Members (state dead).
	deadLinger time.Duration
	// flapWindow and flapJoins: a node that rejoins flapJoins times within
	// flapWindow is held out of placement until it has been steady for
	// flapWindow.
	flapWindow time.Duration
	flapJoins  int
	// resync is the least time between two snapshot requests to one
	// member, and between two snapshots sent to one member.
	resync time.Duration
}

var profiles = map[string]func() timings{
	"lan": func() timings {
		return timings{base: lanMemberlist, refresh: time.Second, minUpdate: 5 * time.Second, heartbeat: 30 * time.Second,
			joinMin: time.Second, joinMax: 10 * time.Second,
			tombstoneTTL: 2 * time.Minute, goneTTL: 2 * time.Minute, orphanTTL: time.Minute,
			deadLinger: time.Minute, flapWindow: 2 * time.Minute, flapJoins: 3, resync: 5 * time.Second}
	},
	"wan": func() timings {
		return timings{base: memberlist.DefaultWANConfig, refresh: 2 * time.Second, minUpdate: 10 * time.Second, heartbeat: 60 * time.Second,
			joinMin: 2 * time.Second, joinMax: 30 * time.Second,
			tombstoneTTL: 5 * time.Minute, goneTTL: 5 * time.Minute, orphanTTL: 2 * time.Minute,
			deadLinger: 2 * time.Minute, flapWindow: 5 * time.Minute, flapJoins: 3, resync: 10 * time.Second}
	},
	"local": func() timings {
		return timings{base: memberlist.DefaultLocalConfig, refresh: time.Second, minUpdate: 2 * time.Second, heartbeat: 10 * time.Second,
			joinMin: 500 * time.Millisecond, joinMax: 10 * time.Second,
			tombstoneTTL: time.Minute, goneTTL: time.Minute, orphanTTL: 30 * time.Second,
			deadLinger: 30 * time.Second, flapWindow: time.Minute, flapJoins: 3, resync: 2 * time.Second}
	},
	"fast": func() timings {
		return timings{base: fastMemberlist, refresh: 100 * time.Millisecond, minUpdate: 100 * time.Millisecond, heartbeat: 500 * time.Millisecond,
			joinMin: 50 * time.Millisecond, joinMax: time.Second,
			tombstoneTTL: 10 * time.Second, goneTTL: 10 * time.Second, orphanTTL: 5 * time.Second,
			deadLinger: 5 * time.Second, flapWindow: 5 * time.Second, flapJoins: 3, resync: 200 * time.Millisecond}
	},
}

// lanMemberlist is memberlist's LAN profile gossiping twice as often
// (100 ms): with metadata updates and directory broadcasts competing for
// each node's gossip packets, 200 ms leaves large clusters short (see
// docs/cluster.md). Gossip is only sent when there is news.
func lanMemberlist() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.GossipInterval = 100 * time.Millisecond
	return c
}

// fastMemberlist is memberlist's loopback profile with failures noticed in
// about a second, for tests on one machine.
func fastMemberlist() *memberlist.Config {
	c := memberlist.DefaultLocalConfig()
	c.TCPTimeout = 500 * time.Millisecond
	c.ProbeInterval = 200 * time.Millisecond
	c.ProbeTimeout = 100 * time.Millisecond
	c.SuspicionMult = 3
	c.GossipInterval = 30 * time.Millisecond
	c.PushPullInterval = 2 * time.Second
	c.GossipToTheDeadTime = 2 * time.Second
	return c
}
