package cluster

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// edge and origin build members for the tables.
func edge(name, region string, viewers, capacity int, streams ...string) Member {
	return Member{Meta: Meta{Name: name, Role: RoleEdge, Region: region, HTTP: "http://" + name,
		Load: Load{Viewers: viewers, Capacity: capacity}}, State: StateAlive, Streams: streams}
}

func origin(name string, cpu float64, streams ...string) Member {
	return Member{Meta: Meta{Name: name, Role: RoleOrigin, HTTP: "http://" + name,
		Load: Load{CPU: cpu, Capacity: 100}}, State: StateAlive, Streams: streams}
}

func with(m Member, f func(*Member)) Member { f(&m); return m }

var draining = func(m *Member) { m.Draining = true }

type placeCase struct {
	name    string
	members []Member
	req     Request
	action  Action
	target  string
	reason  string
}

// viewerCases is the PlaceViewer table.
var viewerCases = []placeCase{
	{name: "origin sends to least loaded edge",
		members: []Member{origin("o", 0), edge("a", "", 50, 100), edge("b", "", 10, 100)},
		req:     Request{Stream: "s", Self: "o"}, action: Redirect, target: "b", reason: ReasonOrigin},
	{name: "origin prefers viewer region over load",
		members: []Member{origin("o", 0), edge("a", "eu", 90, 100), edge("b", "us", 0, 100)},
		req:     Request{Stream: "s", Region: "eu", Self: "o"}, action: Redirect, target: "a", reason: ReasonOrigin},
	{name: "origin prefers a carrier with room to spare over an idle edge",
		members: []Member{origin("o", 0), edge("a", "", 50, 100, "s"), edge("b", "", 0, 100)},
		req:     Request{Stream: "s", Self: "o"}, action: Redirect, target: "a", reason: ReasonOrigin},
	{name: "a carrier past the spare ratio is only a loaded edge",
		members: []Member{origin("o", 0), edge("a", "", 85, 100, "s"), edge("b", "", 0, 100)},
		req:     Request{Stream: "s", Self: "o"}, action: Redirect, target: "b", reason: ReasonOrigin},
	{name: "region beats carrying",
		members: []Member{origin("o", 0), edge("a", "us", 10, 100, "s"), edge("b", "eu", 50, 100)},
		req:     Request{Stream: "s", Region: "eu", Self: "o"}, action: Redirect, target: "b", reason: ReasonOrigin},
	{name: "origin skips draining, full, dead, suspect, flapping and bad-meta edges",
		members: []Member{origin("o", 0),
			with(edge("a", "", 0, 100), draining),
			edge("b", "", 100, 100),
			with(edge("c", "", 0, 100), func(m *Member) { m.State = StateDead }),
			with(edge("d", "", 0, 100), func(m *Member) { m.State = StateSuspect }),
			with(edge("e", "", 0, 100), func(m *Member) { m.Flapping = true }),
			with(edge("f", "", 0, 100), func(m *Member) { m.MetaError = "bad"; m.Role = "" }),
			with(edge("g", "", 0, 100), func(m *Member) { m.Load.CPU = 0.95 }),
			edge("h", "", 99, 100)},
		req: Request{Stream: "s", Self: "o"}, action: Redirect, target: "h", reason: ReasonOrigin},
	{name: "origin serves when no edge has room",
		members: []Member{origin("o", 0), edge("a", "", 100, 100)},
		req:     Request{Stream: "s", Self: "o"}, action: Serve, reason: ReasonLocal},
	{name: "origin without capacity and no edge: unavailable",
		members: []Member{with(origin("o", 0), func(m *Member) { m.Load.Capacity = 0 }), edge("a", "", 5, 5)},
		req:     Request{Stream: "s", Self: "o"}, action: Unavailable, reason: ReasonOrigin},
	{name: "alone origin serves",
		members: []Member{origin("o", 0)},
		req:     Request{Stream: "s", Self: "o"}, action: Serve, reason: ReasonLocal},
	{name: "edge that carries serves",
		members: []Member{origin("o", 0), edge("a", "", 10, 100, "s"), edge("b", "", 0, 100, "s")},
		req:     Request{Stream: "s", Self: "a"}, action: Serve, reason: ReasonLocal},
	{name: "edge sends to a carrier with room to spare",
		members: []Member{origin("o", 0), edge("a", "", 10, 100), edge("b", "", 30, 100, "s")},
		req:     Request{Stream: "s", Self: "a"}, action: Redirect, target: "b", reason: ReasonCarrying},
	{name: "edge serves when the carrier is nearly full",
		members: []Member{origin("o", 0), edge("a", "", 10, 100), edge("b", "", 90, 100, "s")},
		req:     Request{Stream: "s", Self: "a"}, action: Serve, reason: ReasonLocal},
	{name: "edge in the viewer's region keeps it rather than send it to a far carrier",
		members: []Member{origin("o", 0), edge("a", "eu", 10, 100), edge("b", "us", 0, 100, "s")},
		req:     Request{Stream: "s", Region: "eu", Self: "a"}, action: Serve, reason: ReasonLocal},
	{name: "edge outside the region sends to a carrier inside it",
		members: []Member{origin("o", 0), edge("a", "us", 10, 100), edge("b", "eu", 0, 100, "s")},
		req:     Request{Stream: "s", Region: "eu", Self: "a"}, action: Redirect, target: "b", reason: ReasonCarrying},
	{name: "full edge redirects",
		members: []Member{origin("o", 0), edge("a", "", 100, 100, "s"), edge("b", "", 0, 100)},
		req:     Request{Stream: "s", Self: "a"}, action: Redirect, target: "b", reason: ReasonFull},
	{name: "full edge with nowhere to send: unavailable",
		members: []Member{origin("o", 0), edge("a", "", 100, 100, "s"), edge("b", "", 100, 100)},
		req:     Request{Stream: "s", Self: "a"}, action: Unavailable, reason: ReasonFull},
	{name: "draining edge redirects",
		members: []Member{origin("o", 0), with(edge("a", "", 1, 100, "s"), draining), edge("b", "", 50, 100)},
		req:     Request{Stream: "s", Self: "a"}, action: Redirect, target: "b", reason: ReasonDraining},
	{name: "redirected request is served, never redirected again",
		members: []Member{origin("o", 0), edge("a", "", 10, 100), edge("b", "", 0, 100, "s")},
		req:     Request{Stream: "s", Self: "a", Redirected: true}, action: Serve, reason: ReasonHop},
	{name: "redirected request to a full node: unavailable",
		members: []Member{origin("o", 0), edge("a", "", 100, 100), edge("b", "", 0, 100)},
		req:     Request{Stream: "s", Self: "a", Redirected: true}, action: Unavailable, reason: ReasonHop},
	{name: "redirected request to an origin is served",
		members: []Member{origin("o", 0), edge("a", "", 0, 100)},
		req:     Request{Stream: "s", Self: "o", Redirected: true}, action: Serve, reason: ReasonHop},
	{name: "self not listed yet: serve",
		members: []Member{edge("a", "", 0, 100)},
		req:     Request{Stream: "s", Self: "zz"}, action: Serve, reason: ReasonLocal},
}

// publisherCases is the PlacePublisher table.
var publisherCases = []placeCase{
	{name: "edge sends to least busy origin",
		members: []Member{origin("o1", 0.5), origin("o2", 0.2), edge("a", "", 0, 100)},
		req:     Request{Stream: "s", Self: "a"}, action: Redirect, target: "o2", reason: ReasonEdge},
	{name: "edge sends a reconnecting publisher to the origin that has the stream",
		members: []Member{origin("o1", 0.79, "s"), origin("o2", 0.1), edge("a", "", 0, 100)},
		req:     Request{Stream: "s", Self: "a"}, action: Redirect, target: "o1", reason: ReasonCarrying},
	{name: "origins without headroom: unavailable",
		members: []Member{origin("o1", 0.85), edge("a", "", 0, 100)},
		req:     Request{Stream: "s", Self: "a"}, action: Unavailable, reason: ReasonNoOrigin},
	{name: "draining origin skipped",
		members: []Member{with(origin("o1", 0.1), draining), origin("o2", 0.5), edge("a", "", 0, 100)},
		req:     Request{Stream: "s", Self: "a"}, action: Redirect, target: "o2", reason: ReasonEdge},
	{name: "origin takes it",
		members: []Member{origin("o1", 0.7), origin("o2", 0.1)},
		req:     Request{Stream: "s", Self: "o1"}, action: Serve, reason: ReasonLocal},
	{name: "origin sends it to the origin that has the stream",
		members: []Member{origin("o1", 0.1), origin("o2", 0.5, "s")},
		req:     Request{Stream: "s", Self: "o1"}, action: Redirect, target: "o2", reason: ReasonCarrying},
	{name: "draining origin keeps its own stream's publisher",
		members: []Member{with(origin("o1", 0.1, "s"), draining), origin("o2", 0.5)},
		req:     Request{Stream: "s", Self: "o1"}, action: Serve, reason: ReasonLocal},
	{name: "draining origin sends a new stream on",
		members: []Member{with(origin("o1", 0.1), draining), origin("o2", 0.5)},
		req:     Request{Stream: "s", Self: "o1"}, action: Redirect, target: "o2", reason: ReasonDraining},
	{name: "redirected publisher at an edge: unavailable",
		members: []Member{origin("o1", 0.1), edge("a", "", 0, 100)},
		req:     Request{Stream: "s", Self: "a", Redirected: true}, action: Unavailable, reason: ReasonHop},
}

func TestPlaceViewer(t *testing.T)    { runPlace(t, viewerCases, PlaceViewer) }
func TestPlacePublisher(t *testing.T) { runPlace(t, publisherCases, PlacePublisher) }

func runPlace(t *testing.T, cases []placeCase, f func([]Member, Request) Decision) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Order must not matter.
			for i := range 5 {
				ms := slices.Clone(tc.members)
				rand.New(rand.NewPCG(uint64(i), 1)).Shuffle(len(ms), func(a, b int) { ms[a], ms[b] = ms[b], ms[a] })
				d := f(ms, tc.req)
				if d.Action != tc.action || d.Target.Name != tc.target || d.Reason != tc.reason {
					t.Fatalf("got %v %q (%s), want %v %q (%s)", d.Action, d.Target.Name, d.Reason, tc.action, tc.target, tc.reason)
				}
			}
		})
	}
}

func TestPickEdgeReasonsAndTies(t *testing.T) {
	ms := []Member{edge("a", "eu", 10, 100), edge("b", "us", 10, 100, "s")}
	if m, r, _ := PickEdge(ms, "s", "eu", ""); m.Name != "a" || r != ReasonRegion {
		t.Errorf("got %s %s", m.Name, r)
	}
	if m, r, _ := PickEdge(ms, "s", "", ""); m.Name != "b" || r != ReasonCarrying {
		t.Errorf("got %s %s", m.Name, r)
	}
	if _, _, ok := PickEdge(ms, "s", "", "a"); !ok {
		t.Error("b excluded")
	}
	if _, _, ok := PickEdge(nil, "s", "", ""); ok {
		t.Error("picked from nothing")
	}
	// Equal edges: the choice depends on the stream (spread), and is the
	// same whatever the order.
	var eq []Member
	for i := range 10 {
		eq = append(eq, edge(fmt.Sprintf("e%d", i), "", 5, 100))
	}
	picked := map[string]bool{}
	for i := range 100 {
		s := fmt.Sprintf("stream-%d", i)
		m, r, _ := PickEdge(eq, s, "", "")
		rev := slices.Clone(eq)
		slices.Reverse(rev)
		if m2, _, _ := PickEdge(rev, s, "", ""); m2.Name != m.Name || r != ReasonLeastLoaded {
			t.Fatalf("%s: %s vs %s (%s)", s, m.Name, m2.Name, r)
		}
		picked[m.Name] = true
	}
	if len(picked) < 8 {
		t.Errorf("100 streams over 10 equal edges used only %d of them", len(picked))
	}
}

func TestTree(t *testing.T) {
	o := origin("o", 0)
	for _, tc := range []struct{ edges, k, depth int }{
		{0, 8, 0}, {5, 8, 1}, {8, 8, 1}, {9, 8, 2}, {72, 8, 2}, {73, 8, 3}, {500, 8, 3}, {20, 0, 1}, {30, 1, 30}, {30, 2, 4},
	} {
		t.Run(fmt.Sprintf("%d edges k=%d", tc.edges, tc.k), func(t *testing.T) {
			var ms []Member
			for i := range tc.edges {
				ms = append(ms, edge(fmt.Sprintf("edge-%03d", i), "", 0, 100))
			}
			ms = append(ms, o, with(edge("drain", "", 0, 100), draining))
			tree := NewTree("live", o, ms, tc.k)
			if len(tree.Edges()) != tc.edges {
				t.Fatalf("%d edges in tree", len(tree.Edges()))
			}
			// Every node computes the same tree from any order.
			rev := slices.Clone(ms)
			slices.Reverse(rev)
			other := NewTree("live", o, rev, tc.k)
			children := map[string]int{}
			maxDepth := 0
			for _, e := range tree.Edges() {
				p, ok := tree.Parent(e.Name)
				p2, _ := other.Parent(e.Name)
				if !ok || p.Name != p2.Name {
					t.Fatalf("%s: parent %q vs %q", e.Name, p.Name, p2.Name)
				}
				if p.Name == e.Name {
					t.Fatalf("%s is its own parent", e.Name)
				}
				children[p.Name]++
				maxDepth = max(maxDepth, tree.Depth(e.Name))
				// Parent's depth is one less, so there is no cycle.
				if p.Name != "o" && tree.Depth(p.Name) != tree.Depth(e.Name)-1 {
					t.Fatalf("%s depth %d under %s depth %d", e.Name, tree.Depth(e.Name), p.Name, tree.Depth(p.Name))
				}
			}
			for name, n := range children {
				if tc.k > 0 && n > tc.k {
					t.Errorf("%s feeds %d edges, over %d", name, n, tc.k)
				}
				if got := len(tree.Children(name)); got != n {
					t.Errorf("Children(%s) = %d, parents say %d", name, got, n)
				}
			}
			if maxDepth != tc.depth {
				t.Errorf("depth %d, want %d", maxDepth, tc.depth)
			}
			if _, ok := tree.Parent("drain"); ok {
				t.Error("a draining edge is in the tree")
			}
		})
	}
	// Different streams spread the first tier over different edges.
	var ms []Member
	for i := range 40 {
		ms = append(ms, edge(fmt.Sprintf("edge-%02d", i), "", 0, 100))
	}
	first := map[string]bool{}
	for i := range 50 {
		for _, e := range NewTree(fmt.Sprint("s", i), o, ms, 4).Children("o") {
			first[e.Name] = true
		}
	}
	if len(first) < 35 {
		t.Errorf("first tier of 50 streams used only %d of 40 edges", len(first))
	}
}

// TestMetadataRate: the gap between metadata updates grows with the
// cluster so that load gossip stays within half the gossip budget.
func TestMetadataRate(t *testing.T) {
	mc := lanMemberlist()
	c := &Cluster{t: profiles["lan"](), retransmit: mc.RetransmitMult,
		gossipBudget: int64(mc.GossipNodes) * int64(mc.UDPBufferSize) * int64(time.Second) / int64(mc.GossipInterval) / 2}
	for _, tc := range []struct {
		n        int64
		min, max time.Duration
	}{{1, 5 * time.Second, 5 * time.Second}, {50, 5 * time.Second, 5 * time.Second},
		{200, 20 * time.Second, 25 * time.Second}, {600, 60 * time.Second, 75 * time.Second}} {
		c.numNodes.Store(tc.n)
		if g := c.minUpdate(); g < tc.min || g > tc.max {
			t.Errorf("%d nodes: gap %v, want %v..%v", tc.n, g, tc.min, tc.max)
		}
		if hb := c.heartbeat(); hb < 30*time.Second || hb < 3*c.minUpdate() {
			t.Errorf("%d nodes: heartbeat %v", tc.n, hb)
		}
	}
}
