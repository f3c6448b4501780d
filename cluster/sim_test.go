package cluster

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/hashicorp/memberlist"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"time"
)

// The simulation runs many real memberlist nodes in one process over the
// in-memory network (memnet_test.go) and measures how long the directory
// takes to converge after joins, leaves, failures and a healed partition.
// Full size (200 nodes, 1,000 streams, the production "lan" timings) runs
// without the race detector in well under a minute; under -race it runs
// small on the fast timings, to check the machinery rather than measure.
// docs/cluster.md has the figures.

type simSize struct {
	nodes, streams, perEdge int
	profile                 string
}

func TestSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("simulation skipped in -short")
	}
	if raceEnabled {
		// Under the race detector, beside every other package's tests, a
		// simulated cluster measures the machine's load, not gossip.
		// scripts/test runs it on its own without -race.
		t.Skip("simulation skipped under -race")
	}
	// The default keeps `go test` within a minute on two cores; the
	// measured run is CLUSTER_SIM=full (200 nodes, 1,000 streams, lan
	// timings: about four minutes, the cores saturated).
	size := simSize{nodes: 60, streams: 300, perEdge: 5, profile: "lan/2"}
	switch {
	case os.Getenv("CLUSTER_SIM") == "full":
		size = simSize{nodes: 200, streams: 1000, perEdge: 5, profile: "lan"}
	case raceEnabled:
		size = simSize{nodes: 30, streams: 150, perEdge: 3, profile: "fast"}
	}
	if n, err := strconv.Atoi(os.Getenv("CLUSTER_SIM_NODES")); err == nil && n >= 4 {
		size.nodes = n
	}
	if p := os.Getenv("CLUSTER_SIM_PROFILE"); p != "" {
		size.profile = p
	}
	runSim(t, size)
}

type sim struct {
	t     *testing.T
	net   *memNet
	size  simSize
	mu    sync.Mutex
	nodes map[string]*Cluster // live ones
	rng   *rand.Rand
}

func (s *sim) start(name string, role Role, join []string) *Cluster {
	cfg := DefaultConfig()
	cfg.Profile = s.size.profile
	cfg.tune = noCompression
	if s.size.profile == "lan/2" {
		cfg.Profile, cfg.tune = "lan", func(t *timings) { noCompression(t); halveTimings(t) }
	}
	cfg.Name = name
	cfg.Secret = testSecret
	cfg.Join = join
	cfg.transport = s.net.transport()
	host, _, _ := net.SplitHostPort(cfg.transport.(*memTransport).addr)
	c, err := Start(cfg, Meta{Role: role, HTTP: "http://" + host + ":8080"}, testLog(), nil)
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.nodes[name] = c
	s.mu.Unlock()
	return c
}

// noCompression turns memberlist's LZW compression off: with 200 nodes on
// two cores its allocations are the largest cost, and it changes sizes,
// not timings. (The traffic figures are uncompressed.)
func noCompression(t *timings) {
	base := t.base
	t.base = func() *memberlist.Config {
		c := base()
		c.EnableCompression = false
		return c
	}
}

// halveTimings runs the lan profile twice as fast, so that 200 nodes go
// through every phase within a minute on two cores: the figures it gives
// are about half the lan ones.
func halveTimings(t *timings) {
	base := t.base
	t.base = func() *memberlist.Config {
		c := base()
		c.GossipInterval /= 2
		c.ProbeInterval /= 2
		c.ProbeTimeout /= 2
		c.PushPullInterval /= 2
		c.GossipToTheDeadTime /= 2
		return c
	}
	t.refresh /= 2
	t.heartbeat /= 2
	t.minUpdate /= 2
	t.joinMin /= 2
	t.joinMax /= 2
	t.resync /= 2
}

func (s *sim) stop(name string, leave bool) {
	s.mu.Lock()
	c := s.nodes[name]
	delete(s.nodes, name)
	s.mu.Unlock()
	if leave {
		c.Leave(time.Second)
	}
	c.Close()
}

func (s *sim) live() []*Cluster {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Cluster, 0, len(s.nodes))
	for _, c := range s.nodes {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *Cluster) int { return cmpStr(a.Name(), b.Name()) })
	return out
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// converged reports whether every live node sees exactly the live nodes as
// alive and holds exactly their entries, and says how far off it is.
func (s *sim) converged() (bool, string) {
	nodes := s.live()
	alive := map[string]bool{}
	wantN, wantSum := 0, uint64(0)
	for _, c := range nodes {
		alive[c.Name()] = true
		n, sum := c.dir.digest(func(o string) bool { return o == c.Name() })
		wantN += n
		wantSum += sum
	}
	badMembers, badDir := 0, 0
	for _, c := range nodes {
		c.mu.Lock()
		seen := map[string]bool{}
		okMembers := true
		for name, rec := range c.members {
			if rec.alive {
				seen[name] = true
				okMembers = okMembers && alive[name]
			}
		}
		c.mu.Unlock()
		if len(seen) != len(alive) || !okMembers {
			badMembers++
		}
		if n, sum := c.dir.digest(func(o string) bool { return seen[o] }); n != wantN || sum != wantSum {
			badDir++
		}
	}
	return badMembers == 0 && badDir == 0, fmt.Sprintf("%d of %d nodes with wrong members, %d with wrong directory (want %d entries)", badMembers, len(nodes), badDir, wantN)
}

// wait polls for convergence and returns how long it took.
func (s *sim) wait(what string, limit time.Duration) time.Duration {
	start := time.Now()
	var why string
	for time.Since(start) < limit {
		var ok bool
		if ok, why = s.converged(); ok {
			return time.Since(start)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if os.Getenv("CLUSTER_SIM_DEBUG") != "" {
		var asks, snaps float64
		for _, c := range s.live() {
			asks += testutil.ToFloat64(c.m.gossip.WithLabelValues("out", kindNameResync))
			snaps += testutil.ToFloat64(c.m.gossip.WithLabelValues("out", kindNameSnapshot))
		}
		s.t.Logf("%v snapshot requests, %v snapshots", asks, snaps)
		hist := map[int]int{}
		for _, c := range s.live() {
			hist[c.NumMembers()]++
		}
		s.t.Logf("memberlist member counts: %v", hist)
	}
	s.t.Fatalf("%s: not converged in %v: %s", what, limit, why)
	return 0
}

func (s *sim) traffic() (packets, bytes int64) {
	return s.net.packets.Load(), s.net.packetBytes.Load() + s.net.streamBytes.Load()
}

func runSim(t *testing.T, size simSize) {
	s := &sim{t: t, net: newMemNet(), size: size, nodes: map[string]*Cluster{}, rng: rand.New(rand.NewPCG(1, 2))}
	defer func() {
		for _, c := range s.live() {
			c.Close()
		}
	}()
	limit := 30 * time.Second
	switch {
	case size.profile == "fast":
		limit = 15 * time.Second
	case size.nodes > 100:
		limit = 90 * time.Second
	}
	report := func(phase string, d time.Duration, p0, b0 int64, since time.Time) {
		if os.Getenv("CLUSTER_SIM_DEBUG") != "" {
			var asks, snaps, bads float64
			for _, c := range s.live() {
				asks += testutil.ToFloat64(c.m.gossip.WithLabelValues("out", kindNameResync))
				snaps += testutil.ToFloat64(c.m.gossip.WithLabelValues("out", kindNameSnapshot))
				for _, r := range badReasons {
					bads += bad(c, r)
				}
			}
			t.Logf("so far: %v snapshot requests, %v snapshots, %v bad", asks, snaps, bads)
		}
		p1, b1 := s.traffic()
		secs := time.Since(since).Seconds()
		n := float64(len(s.live()))
		t.Logf("%-28s converged in %6.2f s   gossip per node: %5.0f packets/s, %7.0f B/s",
			phase, d.Seconds(), float64(p1-p0)/secs/n, float64(b1-b0)/secs/n)
	}

	// Joins: the origin holds all streams; edges join it and each pulls a
	// few streams.
	origin := s.start("origin", RoleOrigin, nil)
	for i := range size.streams {
		if err := origin.Announce(fmt.Sprintf("stream-%04d", i), []string{"source", "720p", "480p", "360p", "240p"}); err != nil {
			t.Fatal(err)
		}
	}
	seed := []string{origin.Addr()}
	p0, b0 := s.traffic()
	began := time.Now()
	for i := 1; i < size.nodes; i++ {
		c := s.start(fmt.Sprintf("edge-%03d", i), RoleEdge, seed)
		for range size.perEdge {
			if err := c.Announce(fmt.Sprintf("stream-%04d", s.rng.IntN(size.streams)), []string{"480p"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	startup := time.Since(began)
	d := s.wait("join", limit)
	t.Logf("%d nodes (%s timings), %d streams, %d per edge; starting the edges took %.2f s",
		size.nodes, size.profile, size.streams, size.perEdge, startup.Seconds())
	report("join", d+startup, p0, b0, began)

	// Steady state: load heartbeats only.
	p0, b0 = s.traffic()
	began = time.Now()
	time.Sleep(3 * time.Second)
	p1, b1 := s.traffic()
	t.Logf("%-28s                          gossip per node: %5.0f packets/s, %7.0f B/s", "steady (3 s)",
		float64(p1-p0)/3/float64(size.nodes), float64(b1-b0)/3/float64(size.nodes))

	// Stream churn: 10% of streams move on the origin.
	p0, b0 = s.traffic()
	began = time.Now()
	for i := range size.streams / 10 {
		origin.Withdraw(fmt.Sprintf("stream-%04d", i))
		origin.Announce(fmt.Sprintf("new-%04d", i), nil)
	}
	report(fmt.Sprintf("churn (%d changes)", size.streams/5), s.wait("churn", limit), p0, b0, began)

	// 10% of the edges leave.
	edges := func() []string {
		var out []string
		for _, c := range s.live() {
			if c.Name() != "origin" {
				out = append(out, c.Name())
			}
		}
		return out
	}
	p0, b0 = s.traffic()
	began = time.Now()
	names := edges()
	s.rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	var wg sync.WaitGroup
	for _, n := range names[:size.nodes/10] {
		wg.Add(1)
		go func() { defer wg.Done(); s.stop(n, true) }()
	}
	wg.Wait()
	report("10% leave", s.wait("leave", limit), p0, b0, began)

	// 5% of the edges fail (no leave message): failure detection.
	p0, b0 = s.traffic()
	began = time.Now()
	names = edges()
	s.rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	for _, n := range names[:max(1, size.nodes/20)] {
		s.stop(n, false)
	}
	report("5% fail", s.wait("fail", 2*limit), p0, b0, began)

	// A partition: half the edges lose the origin and the other half.
	// Each side sees the other fail; then the network heals.
	side := map[string]bool{}
	names = edges()
	for i, n := range names {
		if i%2 == 0 {
			side[s.nodes[n].Addr()] = true
		}
	}
	s.net.partition(func(from, to string) bool { return side[from] != side[to] })
	cut := time.Now()
	split := func() bool {
		for _, c := range s.live() {
			alive := 0
			for _, m := range c.Members() {
				if m.State != StateDead {
					alive++
				}
			}
			if alive > len(s.live())/2+1 {
				return false
			}
		}
		return true
	}
	hold := 20 * time.Second
	if size.profile != "lan" {
		hold = 10 * time.Second
	}
	for !split() && time.Since(cut) < hold {
		time.Sleep(100 * time.Millisecond)
	}
	if split() {
		t.Logf("%-28s noticed by every node in %.2f s", "partition", time.Since(cut).Seconds())
	} else {
		t.Logf("%-28s not noticed by every node within %v: healing anyway", "partition", hold)
	}
	// Changes on both sides while split.
	for i := range size.streams / 20 {
		origin.Announce(fmt.Sprintf("split-%04d", i), nil)
	}
	for _, c := range s.live() {
		if side[c.Addr()] {
			c.Announce("split-side", nil)
		}
	}
	p0, b0 = s.traffic()
	began = time.Now()
	s.net.partition(nil)
	report("partition heals", s.wait("heal", 2*limit), p0, b0, began)
}
