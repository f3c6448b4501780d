package cluster

import (
	"slices"
	"sort"
)

// State is a member's liveness as this node sees it.
type State string

// States. memberlist itself only says alive or gone; suspect is Cascade's:
// a member memberlist still lists whose load reports stopped arriving
// (three heartbeats missed), so its figures cannot be trusted. Dead
// members (failed or left) are listed for a minute after they went.
const (
	StateAlive   State = "alive"
	StateSuspect State = "suspect"
	StateDead    State = "dead"
)

// Member is one node as this node sees it: the JSON element of
// GET /v1/cluster ("name", "role", "http", "region", "state", "load",
// "streams" as DESIGN.md names them, and a few more).
type Member struct {
	Meta
	// Addr is the gossip address (host:port).
	Addr  string `json:"gossip"`
	State State  `json:"state"`
	// Flapping is set while the member rejoins too often; it is held out
	// of placement.
	Flapping bool `json:"flapping,omitempty"`
	// MetaError says why the member's metadata was refused; such a member
	// has no role and is never chosen.
	MetaError string `json:"meta_error,omitempty"`
	// Streams are the streams it carries, sorted; never null in JSON.
	Streams []string `json:"streams"`
	// Rungs are the rungs it carries, by stream, when it announced them.
	Rungs map[string][]string `json:"rungs,omitempty"`
}

// Carries reports whether the member carries stream.
func (m Member) Carries(stream string) bool {
	_, ok := slices.BinarySearch(m.Streams, stream)
	return ok
}

// Usable reports whether the member may be sent viewers, publishers or
// relays: alive, metadata understood, not draining, not flapping.
func (m Member) Usable() bool {
	return m.State == StateAlive && m.MetaError == "" && !m.Draining && !m.Flapping &&
		(m.Role == RoleOrigin || m.Role == RoleEdge)
}

// HasRoom reports whether the member takes one more viewer.
func (m Member) HasRoom() bool {
	return m.Load.Capacity > 0 && m.Load.Viewers < m.Load.Capacity && m.Load.CPU < FullCPU
}

// View is the body of GET /v1/cluster.
type View struct {
	Self    string   `json:"self"`
	Members []Member `json:"members"`
}

// setStreams fills Streams and Rungs from owner's directory part.
func (m *Member) setStreams(carried map[string][]string) {
	m.Streams = make([]string, 0, len(carried))
	for s, r := range carried {
		m.Streams = append(m.Streams, s)
		if len(r) > 0 {
			if m.Rungs == nil {
				m.Rungs = map[string][]string{}
			}
			m.Rungs[s] = slices.Clone(r)
		}
	}
	sort.Strings(m.Streams)
}
