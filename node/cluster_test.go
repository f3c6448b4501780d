package node

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/cascade-cdn/cascade/cluster"
	"github.com/cascade-cdn/cascade/media/mediatest"
)

// freePort finds a port free for TCP and UDP on ip, for memberlist.
func freePort(t *testing.T, ip string) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Skipf("cannot bind %s: %v", ip, err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if u, err := net.ListenPacket("udp", fmt.Sprintf("%s:%d", ip, p)); err == nil {
			u.Close()
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

// clusterNode starts a node with a cluster role on its own 127.0.0.x.
func clusterNode(t *testing.T, ip string, role cluster.Role, seed string, capacity int) *Node {
	t.Helper()
	return startNode(t, func(c *Config) {
		c.HTTP, c.WebRTC.Listen, c.RTSP.Listen = ip+":0", ip+":0", ip+":0"
		c.Cluster.Role, c.Cluster.Name, c.Cluster.Secret = role, string(role)+"-"+ip, "s3cret"
		c.Cluster.Bind = fmt.Sprintf("%s:%d", ip, freePort(t, ip))
		c.Cluster.Profile, c.Cluster.Capacity = "fast", capacity
		if seed != "" {
			c.Cluster.Join = []string{seed}
		}
	})
}

func clusterView(t *testing.T, n *Node) cluster.View {
	t.Helper()
	resp, err := http.Get(n.URL() + "/v1/cluster")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v cluster.View
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func alive(v cluster.View) int {
	n := 0
	for _, m := range v.Members {
		if m.State == cluster.StateAlive {
			n++
		}
	}
	return n
}

// watchPlaced POSTs a viewer to n, following its redirect, and retries a
// 503 (an edge full by the time the redirect arrived) as a player does.
func watchPlaced(t *testing.T, n *Node) *mediatest.Viewer {
	t.Helper()
	for try := 0; ; try++ {
		v, err := mediatest.Watch(ctxT(t, 15*time.Second), n.URL()+"/whep/live", mediatest.ViewerOptions{Discard: true})
		// 503: an edge full by the time the redirect arrived; 404: an edge
		// whose gossip has not yet heard who carries the stream.
		if se, ok := err.(*mediatest.StatusError); ok && (se.Code == 503 || se.Code == 404) && try < 10 {
			time.Sleep(300 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatalf("viewer: %v", err)
		}
		t.Cleanup(func() { v.Close() })
		return v
	}
}

// TestClusterPlacesViewersOnEdges: one origin and three edges on distinct
// loopback addresses find each other by gossip. Viewers POSTed to the
// origin are redirected (307) across the edges, which relay the stream
// from the origin and deliver frames; the origin serves none itself. An
// edge that leaves is gone from /v1/cluster and its viewers, re-POSTing,
// are served elsewhere; a draining edge gets no new viewers.
func TestClusterPlacesViewersOnEdges(t *testing.T) {
	// 30 viewers on edges of 20, as the issue asks; under the race
	// detector (CI), where 30 pion peers beside every other package's
	// tests starve each other, 12 on edges of 8: the same spread.
	viewersN, capacity := 30, 20
	if raceEnabled {
		viewersN, capacity = 12, 8
	}
	origin := clusterNode(t, "127.0.0.1", cluster.RoleOrigin, "", 0)
	seed := origin.cfg.Cluster.Bind
	edges := []*Node{
		clusterNode(t, "127.0.0.2", cluster.RoleEdge, seed, capacity),
		clusterNode(t, "127.0.0.3", cluster.RoleEdge, seed, capacity),
		clusterNode(t, "127.0.0.4", cluster.RoleEdge, seed, capacity),
	}
	eventually(t, "4 members alive on every node", 15*time.Second, func() bool {
		for _, n := range append([]*Node{origin}, edges...) {
			if alive(clusterView(t, n)) != 4 {
				return false
			}
		}
		return true
	})
	publish(t, origin, "live", mediatest.PublisherOptions{})
	eventually(t, "edges see the origin carry the stream", 10*time.Second, func() bool {
		for _, e := range edges {
			if !e.member.carries("live") {
				return false
			}
		}
		return true
	})

	var viewers []*mediatest.Viewer
	for range viewersN {
		viewers = append(viewers, watchPlaced(t, origin))
	}
	if _, served := origin.Sessions(); served != 0 {
		t.Fatalf("the origin serves %d viewers itself", served)
	}
	total, used := 0, 0
	for i, e := range edges {
		_, served := e.Sessions()
		total += served
		if served > capacity {
			t.Errorf("edge %d serves %d viewers, over its capacity of %d", i, served, capacity)
		}
		if relaying := len(e.relays.carried()) == 1; relaying != (served > 0) {
			t.Errorf("edge %d serves %d viewers and relays %v: only edges with viewers hold a relay", i, served, e.relays.carried())
		}
		if served > 0 {
			used++
		}
	}
	if total != viewersN || used < 2 {
		t.Fatalf("%d viewers on %d edges, want %d spread over 2 or more", total, used, viewersN)
	}
	for i, v := range viewers {
		eventually(t, fmt.Sprintf("video at viewer %d", i), 30*time.Second, func() bool { return v.VideoPackets.Load() >= 30 })
	}

	// An edge leaves: gone from the directory, its viewers served elsewhere.
	gone := edges[2]
	_, lost := gone.Sessions()
	gone.Close()
	eventually(t, "the closed edge gone from /v1/cluster", 10*time.Second, func() bool { return alive(clusterView(t, origin)) == 3 })
	for range lost {
		watchPlaced(t, origin)
	}

	// A draining edge takes nobody new.
	edges[1].Drain()
	_, before := edges[1].Sessions()
	eventually(t, "the drain gossiped", 10*time.Second, func() bool {
		for _, m := range clusterView(t, origin).Members {
			if m.Name == edges[1].member.c.Name() {
				return m.Draining
			}
		}
		return false
	})
	v, err := mediatest.Watch(ctxT(t, 15*time.Second), origin.URL()+"/whep/live", mediatest.ViewerOptions{Discard: true})
	if se, ok := err.(*mediatest.StatusError); ok && se.Code == 503 {
		// every other edge is full: refused, not sent to the draining one
	} else if err != nil {
		t.Fatal(err)
	} else {
		t.Cleanup(func() { v.Close() })
	}
	if _, after := edges[1].Sessions(); after > before {
		t.Fatalf("a draining edge got a new viewer (%d -> %d)", before, after)
	}
}
