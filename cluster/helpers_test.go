package cluster

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

// TestMain checks for leaked goroutines once the tests pass, as
// goleak.VerifyTestMain does, but waits longer for them to end:
// memberlist's Shutdown does not wait for a probe in flight, whose
// goroutine waits for the probe's ack timer (the probe interval scaled by
// the node's health awareness: up to 8 × 200 ms here) and then exits. In
// one CI run on a busy machine it outlived goleak's own second of retries.
// A goroutine that never ends still fails the run.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		err := goleak.Find()
		for deadline := time.Now().Add(3 * time.Second); err != nil && time.Now().Before(deadline); err = goleak.Find() {
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "goleak: Errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

const testSecret = "correct horse battery staple"

var nextIP atomic.Int32

// loopbackIP returns a fresh 127.0.0.x address, so nodes of a test are
// distinct hosts as memberlist sees them.
func loopbackIP() string {
	n := nextIP.Add(1)
	return fmt.Sprintf("127.0.0.%d", 2+n%250)
}

// freeAddr reserves a port free for both TCP and UDP on ip, and releases
// it: a node started later binds it.
func freeAddr(t *testing.T, ip string) string {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return net.JoinHostPort(ip, strconv.Itoa(port))
	}
	t.Fatal("no free port")
	return ""
}

func testLog() *slog.Logger {
	if os.Getenv("CLUSTER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type nodeOpts struct {
	name, region, secret, bind string
	role                       Role
	join                       []string
	noSecret                   bool
	capacity                   int
	tune                       func(*timings)
}

// startNode starts a node on loopback with the fast profile; the test
// closes it.
func startNode(t *testing.T, o nodeOpts) *Cluster {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Profile = "fast"
	cfg.Name = o.name
	cfg.Region = o.region
	cfg.Secret = testSecret
	if o.secret != "" {
		cfg.Secret = o.secret
	}
	if o.noSecret {
		cfg.Secret = ""
	}
	cfg.Bind = o.bind
	if cfg.Bind == "" {
		cfg.Bind = net.JoinHostPort(loopbackIP(), "0")
	}
	cfg.Join = o.join
	if o.capacity != 0 {
		cfg.Capacity = o.capacity
	}
	cfg.tune = o.tune
	host, _, _ := net.SplitHostPort(cfg.Bind)
	role := o.role
	if role == "" {
		role = RoleEdge
	}
	self := Meta{Role: role, HTTP: "http://" + host + ":8080", RTSP: "rtsp://" + host + ":8554", WebRTC: host + ":8189"}
	c, err := Start(cfg, self, testLog(), prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("start %s: %v", o.name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// eventually polls cond until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < timeout {
		if err = cond(); err == nil {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, timeout, err)
	return 0
}

// member returns name as c sees it.
func member(c *Cluster, name string) (Member, bool) { return find(c.Members(), name) }

// allSee checks that every node sees exactly the alive members names.
func allSee(nodes []*Cluster, names ...string) func() error {
	return func() error {
		for _, c := range nodes {
			var alive []string
			for _, m := range c.Members() {
				if m.State == StateAlive {
					alive = append(alive, m.Name)
				}
			}
			if !slices.Equal(alive, names) {
				return fmt.Errorf("%s sees %v", c.Name(), alive)
			}
		}
		return nil
	}
}

// carriers returns the names of the usable members c sees carrying stream.
func carriers(c *Cluster, stream string) []string {
	var out []string
	for _, m := range c.Carriers(stream) {
		out = append(out, m.Name)
	}
	return out
}

func allCarry(nodes []*Cluster, stream string, names ...string) func() error {
	return func() error {
		for _, c := range nodes {
			if got := carriers(c, stream); !slices.Equal(got, names) {
				return fmt.Errorf("%s sees %s carried by %v", c.Name(), stream, got)
			}
		}
		return nil
	}
}

func bad(c *Cluster, reason string) float64 {
	return testutil.ToFloat64(c.m.bad.WithLabelValues(reason))
}

// smallCluster starts an origin and n edges joined to it, and waits until
// all see each other.
func smallCluster(t *testing.T, n int) []*Cluster {
	t.Helper()
	origin := startNode(t, nodeOpts{name: "origin", role: RoleOrigin})
	nodes := []*Cluster{origin}
	names := []string{}
	for i := 1; i <= n; i++ {
		nodes = append(nodes, startNode(t, nodeOpts{name: fmt.Sprintf("edge-%d", i), join: []string{origin.Addr()}}))
		names = append(names, fmt.Sprintf("edge-%d", i))
	}
	names = append(names, "origin")
	eventually(t, 10*time.Second, "cluster formed", allSee(nodes, names...))
	return nodes
}
