package cluster

import (
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestJoinAndPropagate: an origin and three edges form a cluster although
// one seed is not up when the others start; metadata, load, draining and
// the directory reach every node; the JSON view has the contract's shape.
func TestJoinAndPropagate(t *testing.T) {
	late := freeAddr(t, loopbackIP())
	origin := startNode(t, nodeOpts{name: "origin", role: RoleOrigin, region: "eu"})
	e1 := startNode(t, nodeOpts{name: "edge-1", region: "eu", join: []string{late, origin.Addr()}})
	e2 := startNode(t, nodeOpts{name: "edge-2", region: "us", join: []string{late, origin.Addr()}})
	eventually(t, 10*time.Second, "three joined", allSee([]*Cluster{origin, e1, e2}, "edge-1", "edge-2", "origin"))
	e3 := startNode(t, nodeOpts{name: "edge-3", region: "us", bind: late}) // the late seed, joining nobody
	all := []*Cluster{origin, e1, e2, e3}
	took := eventually(t, 10*time.Second, "late seed joined", allSee(all, "edge-1", "edge-2", "edge-3", "origin"))
	t.Logf("late seed joined by the retry loop in %v", took)

	for _, c := range all {
		for _, want := range all {
			m, _ := member(c, want.Name())
			host, _, _ := net.SplitHostPort(want.Addr())
			if m.HTTP != "http://"+host+":8080" || m.Addr != want.Addr() || m.MetaError != "" {
				t.Errorf("%s sees %s as %+v", c.Name(), want.Name(), m)
			}
		}
		if m, _ := member(c, "origin"); m.Role != RoleOrigin || m.Region != "eu" {
			t.Errorf("%s sees origin as %+v", c.Name(), m)
		}
		if m, _ := member(c, "edge-2"); m.Role != RoleEdge || m.Region != "us" || m.Load.Capacity != 1000 {
			t.Errorf("%s sees edge-2 as %+v", c.Name(), m)
		}
	}

	e1.SetLoad(Load{Viewers: 42, EgressBps: 84_000_000, CPU: 0.25, Capacity: 500})
	eventually(t, 5*time.Second, "load propagated", func() error {
		for _, c := range all {
			if m, _ := member(c, "edge-1"); m.Load != (Load{Viewers: 42, EgressBps: 84_000_000, CPU: 0.25, Capacity: 500}) {
				return fmt.Errorf("%s sees edge-1 load %+v", c.Name(), m.Load)
			}
		}
		return nil
	})

	if err := origin.Announce("live", []string{"source", "480p"}); err != nil {
		t.Fatal(err)
	}
	if err := e1.Announce("live", []string{"480p"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "announce propagated", allCarry(all, "live", "edge-1", "origin"))
	for _, c := range all {
		for _, m := range c.Carriers("live") {
			want := map[string][]string{"origin": {"source", "480p"}, "edge-1": {"480p"}}[m.Name]
			if !slices.Equal(m.Rungs["live"], want) {
				t.Errorf("%s sees %s rungs %v", c.Name(), m.Name, m.Rungs)
			}
		}
	}
	if err := origin.Withdraw("live"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "withdraw propagated", allCarry(all, "live", "edge-1"))

	e2.SetDraining(true)
	eventually(t, 5*time.Second, "draining propagated", func() error {
		for _, c := range all {
			if m, _ := member(c, "edge-2"); !m.Draining {
				return fmt.Errorf("%s does not see edge-2 draining", c.Name())
			}
		}
		return nil
	})
	for range 20 {
		d := origin.PlaceViewer(fmt.Sprint("s", time.Now().UnixNano()), "us", false)
		if d.Action != Redirect || d.Target.Name == "edge-2" || d.Target.Name == "origin" {
			t.Fatalf("origin placed a viewer: %+v", d)
		}
	}
	if d := origin.PlaceViewer("x", "us", false); d.Target.Name != "edge-3" || d.Reason != ReasonOrigin {
		t.Errorf("a us viewer went to %s (%s), want edge-3, the only usable us edge", d.Target.Name, d.Reason)
	}

	b, err := json.Marshal(e3.View())
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if v["self"] != "edge-3" {
		t.Errorf("self = %v", v["self"])
	}
	ms := v["members"].([]any)
	if len(ms) != 4 {
		t.Fatalf("%d members in %s", len(ms), b)
	}
	for _, raw := range ms {
		m := raw.(map[string]any)
		for _, k := range []string{"name", "role", "http", "region", "state", "load", "streams"} {
			if _, ok := m[k]; !ok {
				t.Errorf("member lacks %q: %v", k, m)
			}
		}
		if m["streams"] == nil {
			t.Errorf("streams is null: %v", m)
		}
		load := m["load"].(map[string]any)
		for _, k := range []string{"viewers", "egress_bps", "cpu", "capacity"} {
			if _, ok := load[k]; !ok {
				t.Errorf("load lacks %q: %v", k, load)
			}
		}
	}
	if !strings.Contains(string(b), `"name":"edge-1","role":"edge"`) || !strings.Contains(string(b), `"streams":["live"]`) {
		t.Errorf("view: %s", b)
	}
}

// TestFailureAndLeave: an edge killed without leaving disappears within
// seconds and its streams with it; an edge that leaves goes at once.
func TestFailureAndLeave(t *testing.T) {
	nodes := smallCluster(t, 3)
	origin, e1, e2, e3 := nodes[0], nodes[1], nodes[2], nodes[3]
	if err := e3.Announce("cam", nil); err != nil {
		t.Fatal(err)
	}
	if err := e2.Announce("lobby", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "announced", allCarry(nodes, "cam", "edge-3"))
	eventually(t, 5*time.Second, "announced", allCarry(nodes, "lobby", "edge-2"))

	e3.Close() // a crash: no leave message
	took := eventually(t, 10*time.Second, "failure detected", func() error {
		if err := allSee([]*Cluster{origin, e1, e2}, "edge-1", "edge-2", "origin")(); err != nil {
			return err
		}
		return allCarry([]*Cluster{origin, e1, e2}, "cam")()
	})
	t.Logf("killed edge gone from every directory in %v", took)
	// Missed heartbeats make it suspect (and drop it from the directory)
	// before memberlist's own probes declare it dead: wait for the second.
	eventually(t, 10*time.Second, "listed dead", func() error {
		if m, ok := member(origin, "edge-3"); !ok || m.State != StateDead || len(m.Streams) != 0 {
			return fmt.Errorf("edge-3 should be listed dead without streams for a while: %+v", m)
		}
		return nil
	})

	if err := e2.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	e2.Close()
	took = eventually(t, 5*time.Second, "leave seen", func() error {
		if err := allSee([]*Cluster{origin, e1}, "edge-1", "origin")(); err != nil {
			return err
		}
		return allCarry([]*Cluster{origin, e1}, "lobby")()
	})
	t.Logf("edge that left gone in %v", took)
	if v := testutil.ToFloat64(origin.m.members.WithLabelValues("dead")); v < 1 {
		// the sweep runs every second
		eventually(t, 3*time.Second, "dead gauge", func() error {
			if v := testutil.ToFloat64(origin.m.members.WithLabelValues("dead")); v < 1 {
				return fmt.Errorf("members{dead} = %v", v)
			}
			return nil
		})
	}
}

// TestWrongKeyRefused: nodes with another secret, or none, cannot join; the
// refusals are counted and the cluster stays up.
func TestWrongKeyRefused(t *testing.T) {
	nodes := smallCluster(t, 1)
	origin, e1 := nodes[0], nodes[1]
	other := startNode(t, nodeOpts{name: "intruder", secret: "another secret", join: []string{origin.Addr()}})
	plain := startNode(t, nodeOpts{name: "plain", noSecret: true, join: []string{origin.Addr()}})
	if !origin.Encrypted() || plain.Encrypted() {
		t.Fatal("Encrypted() wrong")
	}
	eventually(t, 5*time.Second, "refusals counted", func() error {
		if bad(origin, reasonKey) < 2 {
			return fmt.Errorf("origin counted %v key refusals", bad(origin, reasonKey))
		}
		return nil
	})
	// Give the intruders time to get anywhere, then check they did not.
	time.Sleep(time.Second)
	if err := allSee(nodes, "edge-1", "origin")(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Cluster{other, plain} {
		if n := len(c.Members()); n != 1 {
			t.Errorf("%s sees %d members", c.Name(), n)
		}
	}
	if err := origin.Announce("still-up", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "cluster still works", allCarry([]*Cluster{origin, e1}, "still-up", "origin"))
	if testutil.ToFloat64(other.m.joins.WithLabelValues("error")) < 1 {
		t.Error("the intruder's failed joins are not counted")
	}
}

// sendRaw sends a user message from one node to another.
func sendRaw(t *testing.T, from, to *Cluster, msg []byte) {
	t.Helper()
	from.mu.Lock()
	rec := from.members[to.Name()]
	node := &memberlist.Node{Name: rec.name, Addr: rec.ip, Port: rec.port}
	from.mu.Unlock()
	if err := from.ml.SendReliable(node, msg); err != nil {
		t.Fatal(err)
	}
}

// TestForgedBroadcasts: older, malformed and unknown-version messages are
// ignored and counted; a forged newer claim about a node is corrected by
// that node, and a forged newer epoch makes it move past it.
func TestForgedBroadcasts(t *testing.T) {
	nodes := smallCluster(t, 2)
	origin, e1, e2 := nodes[0], nodes[1], nodes[2]
	if err := origin.Announce("live", []string{"source"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "announced", allCarry(nodes, "live", "origin"))
	epoch := origin.dir.epoch()
	seq := func() uint64 {
		origin.dir.mu.Lock()
		defer origin.dir.mu.Unlock()
		return origin.dir.owners["origin"].streams["live"].seq
	}()

	// Older than what e2 knows: ignored.
	stale0 := bad(e2, reasonStale)
	sendRaw(t, e1, e2, encodeUpdate(update{owner: "origin", epoch: epoch, seq: seq - 1, stream: "live", withdrawn: true}))
	sendRaw(t, e1, e2, encodeUpdate(update{owner: "origin", epoch: epoch - 1, seq: seq + 5, stream: "live", withdrawn: true}))
	eventually(t, 3*time.Second, "stale counted", func() error {
		if bad(e2, reasonStale) < stale0+2 {
			return fmt.Errorf("stale = %v", bad(e2, reasonStale))
		}
		return nil
	})
	if got := carriers(e2, "live"); !slices.Equal(got, []string{"origin"}) {
		t.Fatalf("a stale withdraw was applied: %v", got)
	}

	// Malformed and unknown version.
	dec0, ver0 := bad(e2, reasonDecode), bad(e2, reasonVersion)
	sendRaw(t, e1, e2, []byte{kindEntry, msgVersion, 0xff, 0xff})
	sendRaw(t, e1, e2, []byte{0x7f, msgVersion})
	sendRaw(t, e1, e2, []byte{kindEntry, 9, 1, 2, 3})
	sendRaw(t, e1, e2, encodeUpdate(update{owner: "origin", epoch: epoch, seq: seq + 1, stream: "../etc", withdrawn: true}))
	eventually(t, 3*time.Second, "bad messages counted", func() error {
		if bad(e2, reasonDecode) < dec0+3 || bad(e2, reasonVersion) < ver0+1 {
			return fmt.Errorf("decode %v version %v", bad(e2, reasonDecode), bad(e2, reasonVersion))
		}
		return nil
	})

	// A forged newer withdraw, to everyone: the origin says the truth again.
	forged := encodeUpdate(update{owner: "origin", epoch: epoch, seq: seq + 1000, stream: "live", withdrawn: true})
	for _, to := range nodes {
		sendRaw(t, e1, to, forged)
	}
	eventually(t, 5*time.Second, "conflict noticed", func() error {
		if bad(origin, reasonConflict) < 1 {
			return fmt.Errorf("the origin did not count the conflict")
		}
		return nil
	})
	eventually(t, 5*time.Second, "forged withdraw corrected", allCarry(nodes, "live", "origin"))

	// A forged newer epoch announcing a fake stream: the origin moves to
	// an epoch past it and everyone drops the fake.
	forged = encodeUpdate(update{owner: "origin", epoch: epoch + 10, seq: 1, stream: "fake"})
	for _, to := range nodes {
		sendRaw(t, e1, to, forged)
	}
	eventually(t, 5*time.Second, "forged epoch corrected", func() error {
		if origin.dir.epoch() <= epoch+10 {
			return fmt.Errorf("origin epoch %d, want past %d", origin.dir.epoch(), epoch+10)
		}
		if err := allCarry(nodes, "fake")(); err != nil {
			return err
		}
		return allCarry(nodes, "live", "origin")()
	})
	eventually(t, 3*time.Second, "new epoch gossiped", func() error {
		for _, c := range nodes {
			c.mu.Lock()
			e := c.members["origin"].meta.epoch
			c.mu.Unlock()
			if e != origin.dir.epoch() {
				return fmt.Errorf("%s has origin epoch %d", c.Name(), e)
			}
		}
		return nil
	})
}

// rawDelegate is a memberlist delegate with fixed metadata.
type rawDelegate struct{ meta []byte }

func (d rawDelegate) NodeMeta(int) []byte                 { return d.meta }
func (d rawDelegate) NotifyMsg([]byte)                    {}
func (d rawDelegate) GetBroadcasts(int, int) [][]byte     { return nil }
func (d rawDelegate) LocalState(bool) []byte              { return nil }
func (d rawDelegate) MergeRemoteState(buf []byte, _ bool) {}

// TestBadMetadataMember: a member (with the right key) whose metadata does
// not decode is listed with the error, counted, logged once, and never
// chosen; the cluster carries on.
func TestBadMetadataMember(t *testing.T) {
	nodes := smallCluster(t, 1)
	origin := nodes[0]
	for i, meta := range [][]byte{{metaVersion, 7, 0}, {42}, {}} {
		mc := memberlist.DefaultLocalConfig()
		mc.Name = fmt.Sprintf("weird-%d", i)
		mc.BindAddr, mc.BindPort = loopbackIP(), 0
		mc.Label = "cascade"
		kr, _ := memberlist.NewKeyring(nil, GossipKey(testSecret))
		mc.Keyring = kr
		mc.Delegate = rawDelegate{meta: meta}
		mc.LogOutput = discard{}
		ml, err := memberlist.Create(mc)
		if err != nil {
			t.Fatal(err)
		}
		defer ml.Shutdown()
		if _, err := ml.Join([]string{origin.Addr()}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "bad members listed", func() error {
		for _, c := range nodes {
			for i := range 3 {
				m, ok := member(c, fmt.Sprintf("weird-%d", i))
				if !ok || m.MetaError == "" || m.Usable() {
					return fmt.Errorf("%s sees weird-%d as %+v", c.Name(), i, m)
				}
			}
			if bad(c, reasonMeta) < 3 {
				return fmt.Errorf("%s counted %v bad metadata", c.Name(), bad(c, reasonMeta))
			}
		}
		return nil
	})
	for range 10 {
		d := origin.PlaceViewer(fmt.Sprint("s", time.Now().UnixNano()), "", false)
		if d.Target.Name != "edge-1" {
			t.Fatalf("placed on %+v", d)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestOriginRestart: an origin that crashes and comes back (same name and
// address, new run) replaces its old entries: the edges never keep streams
// of its previous run, and it needs no join list of its own.
func TestOriginRestart(t *testing.T) {
	addr := freeAddr(t, loopbackIP())
	origin := startNode(t, nodeOpts{name: "origin", role: RoleOrigin, bind: addr})
	e1 := startNode(t, nodeOpts{name: "edge-1", join: []string{addr}})
	e2 := startNode(t, nodeOpts{name: "edge-2", join: []string{addr}})
	edges := []*Cluster{e1, e2}
	eventually(t, 10*time.Second, "formed", allSee([]*Cluster{origin, e1, e2}, "edge-1", "edge-2", "origin"))
	for _, s := range []string{"a", "b"} {
		if err := origin.Announce(s, nil); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "announced", allCarry(edges, "b", "origin"))
	oldEpoch := origin.dir.epoch()
	origin.Close()

	origin2 := startNode(t, nodeOpts{name: "origin", role: RoleOrigin, bind: addr})
	if origin2.dir.epoch() <= oldEpoch {
		t.Fatal("new run has no newer epoch")
	}
	if err := origin2.Announce("c", nil); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 10*time.Second, "restart seen", func() error {
		for _, s := range []string{"a", "b"} {
			if err := allCarry(edges, s)(); err != nil {
				return err
			}
		}
		return allCarry(append(edges, origin2), "c", "origin")()
	})
	t.Logf("edges saw the restarted origin's streams in %v", took)
	if err := allSee([]*Cluster{origin2, e1, e2}, "edge-1", "edge-2", "origin")(); err != nil {
		t.Error(err)
	}
}

// TestFlappingMember: a member that keeps rejoining is held out of
// placement, counted and logged, and comes back once steady.
func TestFlappingMember(t *testing.T) {
	c := startNode(t, nodeOpts{name: "origin", role: RoleOrigin, tune: func(t *timings) { t.flapWindow = 500 * time.Millisecond }})
	meta := encodeMeta(metaWire{Meta: Meta{Role: RoleEdge, HTTP: "http://127.0.0.9:8080", Load: Load{Capacity: 10}}, epoch: 1})
	n := &memberlist.Node{Name: "flappy", Addr: net.ParseIP("127.0.0.9"), Port: 7946, Meta: meta}
	c.memberEvent(n, true)
	if d := c.PlaceViewer("live", "", false); d.Target.Name != "flappy" {
		t.Fatalf("steady member not chosen: %+v", d)
	}
	for range c.t.flapJoins {
		c.memberLeft("flappy")
		c.memberEvent(n, true)
	}
	m, _ := member(c, "flappy")
	if !m.Flapping || m.Usable() {
		t.Fatalf("flapping member: %+v", m)
	}
	if d := c.PlaceViewer("live", "", false); d.Action != Serve {
		t.Errorf("flapping member chosen: %+v", d)
	}
	if v := testutil.ToFloat64(c.m.flaps); v != 1 {
		t.Errorf("flaps = %v", v)
	}
	eventually(t, 3*time.Second, "steady again", func() error {
		if m, _ := member(c, "flappy"); m.Flapping {
			return fmt.Errorf("still flapping")
		}
		return nil
	})
}
