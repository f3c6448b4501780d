package cluster

import (
	"cmp"
	"hash/fnv"
	"slices"
)

// Placement: pure functions of a member list, so every node decides alike
// and tables can test them.

// Thresholds of placement.
const (
	// FullCPU is the CPU load at which a node takes no more viewers.
	FullCPU = 0.9
	// SpareRatio is the load ratio below which an edge that carries a
	// stream has room to spare: a viewer arriving elsewhere is sent to it
	// rather than starting another relay of the stream.
	SpareRatio = 0.8
	// OriginHeadroom is the CPU load below which an origin takes a new
	// publisher (transcoding costs CPU).
	OriginHeadroom = 0.8
)

// Action is what a node does with a WHIP or WHEP request.
type Action int

// Actions.
const (
	// Serve: answer the request here.
	Serve Action = iota
	// Redirect: answer 307 to Decision.Target.
	Redirect
	// Unavailable: answer 503 with Retry-After.
	Unavailable
)

func (a Action) String() string {
	switch a {
	case Serve:
		return "serve"
	case Redirect:
		return "redirect"
	}
	return "unavailable"
}

// Reasons of decisions, for logs and a redirects-by-reason metric.
const (
	ReasonLocal       = "local"        // serve: this node is right for it
	ReasonOrigin      = "origin"       // an origin sends viewers to edges
	ReasonFull        = "full"         // this node has no room
	ReasonDraining    = "draining"     // this node is draining
	ReasonCarrying    = "carrying"     // another node already carries the stream
	ReasonEdge        = "edge"         // an edge sends publishers to an origin
	ReasonHop         = "hop"          // already redirected once: no second hop
	ReasonNoOrigin    = "no-origin"    // no origin with headroom
	ReasonRegion      = "region"       // the chosen edge is in the viewer's region
	ReasonLeastLoaded = "least-loaded" // the chosen edge is the least loaded
)

// Request describes a WHIP or WHEP request to place.
type Request struct {
	// Stream is the stream name.
	Stream string
	// Region is the viewer's region, if known ("" otherwise).
	Region string
	// Self is this node's name.
	Self string
	// Redirected is set when the request carries the hop marker: it was
	// redirected once already, so it is served here or refused, never
	// redirected again. That makes loops impossible.
	Redirected bool
}

// Decision is the answer to a Request.
type Decision struct {
	Action Action
	// Target is where to redirect (Action Redirect).
	Target Member
	// Reason says why (Reason* constants).
	Reason string
}

// PickEdge chooses the edge a viewer of stream should go to, among usable
// edges with room other than self: first those in the viewer's region,
// then those that carry the stream with room to spare, then the lowest
// load ratio, and last the highest rendezvous score of (stream, name), so
// equally loaded edges share streams the same way on every node. reason is
// ReasonRegion, ReasonCarrying or ReasonLeastLoaded. ok is false when no
// edge has room.
func PickEdge(members []Member, stream, viewerRegion, self string) (m Member, reason string, ok bool) {
	var best *Member
	for i := range members {
		c := &members[i]
		if c.Name == self || c.Role != RoleEdge || !c.Usable() || !c.HasRoom() {
			continue
		}
		if best == nil || edgeBefore(c, best, stream, viewerRegion) {
			best = c
		}
	}
	if best == nil {
		return Member{}, "", false
	}
	switch {
	case viewerRegion != "" && best.Region == viewerRegion:
		reason = ReasonRegion
	case best.Carries(stream):
		reason = ReasonCarrying
	default:
		reason = ReasonLeastLoaded
	}
	return *best, reason, true
}

// edgeBefore reports whether a ranks before b for a viewer of stream.
func edgeBefore(a, b *Member, stream, region string) bool {
	if ra, rb := inRegion(a, region), inRegion(b, region); ra != rb {
		return ra
	}
	if sa, sb := spare(a, stream), spare(b, stream); sa != sb {
		return sa
	}
	if la, lb := a.Load.Ratio(), b.Load.Ratio(); la != lb {
		return la < lb
	}
	if ha, hb := score(stream, a.Name), score(stream, b.Name); ha != hb {
		return ha > hb
	}
	return a.Name < b.Name
}

func inRegion(m *Member, region string) bool { return region != "" && m.Region == region }

// spare reports whether m carries stream with room to spare.
func spare(m *Member, stream string) bool {
	return m.Carries(stream) && m.Load.Ratio() < SpareRatio
}

// PlaceViewer decides what the node r.Self does with POST /whep/{stream}.
//
//   - An origin sends viewers to the best edge (PickEdge) while one has
//     room, and serves them itself only when none has.
//   - An edge that is draining or full sends the viewer to the best edge.
//   - An edge that does not carry the stream sends the viewer to the best
//     edge if that one carries it with room to spare and is no further
//     from the viewer's region; otherwise it serves (and starts a relay).
//   - A redirected request is served or refused, never redirected again.
//
// Unavailable means no node has room: answer 503 with Retry-After.
func PlaceViewer(members []Member, r Request) Decision {
	me, found := find(members, r.Self)
	if !found {
		return Decision{Action: Serve, Reason: ReasonLocal}
	}
	canServe := me.HasRoom() && !me.Draining
	if r.Redirected {
		if canServe {
			return Decision{Action: Serve, Reason: ReasonHop}
		}
		return Decision{Action: Unavailable, Reason: ReasonHop}
	}
	best, _, ok := PickEdge(members, r.Stream, r.Region, r.Self)
	redirect := func(reason string) Decision {
		if ok {
			return Decision{Action: Redirect, Target: best, Reason: reason}
		}
		return Decision{Action: Unavailable, Reason: reason}
	}
	switch {
	case me.Role == RoleOrigin:
		if !ok && canServe {
			return Decision{Action: Serve, Reason: ReasonLocal}
		}
		return redirect(ReasonOrigin)
	case me.Draining:
		return redirect(ReasonDraining)
	case !me.HasRoom():
		return redirect(ReasonFull)
	case me.Carries(r.Stream):
		return Decision{Action: Serve, Reason: ReasonLocal}
	case ok && spare(&best, r.Stream) && (inRegion(&best, r.Region) || !inRegion(&me, r.Region)):
		return Decision{Action: Redirect, Target: best, Reason: ReasonCarrying}
	}
	return Decision{Action: Serve, Reason: ReasonLocal}
}

// PickOrigin chooses the origin for a new publisher of stream: the usable
// origin that already carries it (a publisher reconnecting must reach the
// same one), else the usable origin with the lowest CPU load under
// OriginHeadroom (ties: fewer viewers, then name).
func PickOrigin(members []Member, stream string) (Member, bool) {
	var best *Member
	for i := range members {
		c := &members[i]
		if c.Role != RoleOrigin || !c.Usable() {
			continue
		}
		if stream != "" && c.Carries(stream) {
			return *c, true
		}
		if c.Load.CPU >= OriginHeadroom {
			continue
		}
		if best == nil || cmp.Or(cmp.Compare(c.Load.CPU, best.Load.CPU),
			cmp.Compare(c.Load.Viewers, best.Load.Viewers), cmp.Compare(c.Name, best.Name)) < 0 {
			best = c
		}
	}
	if best == nil {
		return Member{}, false
	}
	return *best, true
}

// PlacePublisher decides what node r.Self does with POST /whip/{stream}.
// An origin takes the publisher unless another origin already carries the
// stream (a reconnecting publisher must reach the same origin) or it is
// draining; an edge sends it to PickOrigin. A redirected request is never
// redirected again.
func PlacePublisher(members []Member, r Request) Decision {
	me, found := find(members, r.Self)
	if !found || (me.Role == RoleOrigin && me.Carries(r.Stream)) {
		return Decision{Action: Serve, Reason: ReasonLocal}
	}
	o, ok := PickOrigin(members, r.Stream)
	switch {
	case ok && o.Name != me.Name && o.Carries(r.Stream):
		if r.Redirected {
			return Decision{Action: Unavailable, Reason: ReasonHop}
		}
		return Decision{Action: Redirect, Target: o, Reason: ReasonCarrying}
	case me.Role == RoleOrigin && !me.Draining:
		return Decision{Action: Serve, Reason: ReasonLocal}
	case r.Redirected:
		return Decision{Action: Unavailable, Reason: ReasonHop}
	case !ok:
		return Decision{Action: Unavailable, Reason: ReasonNoOrigin}
	case me.Role == RoleOrigin:
		return Decision{Action: Redirect, Target: o, Reason: ReasonDraining}
	}
	return Decision{Action: Redirect, Target: o, Reason: ReasonEdge}
}

func find(members []Member, name string) (Member, bool) {
	for _, m := range members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// score is the rendezvous (highest random weight) score of a node for a
// stream: FNV-1a of both names, finished with splitmix64 so that close
// names spread. It is the same on every node and every run.
func score(stream, node string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(stream))
	h.Write([]byte{0})
	h.Write([]byte(node))
	return mix64(h.Sum64())
}

// Tree is the relay tree of one stream: which node each edge pulls it
// from. The usable edges are ranked by rendezvous score for the stream
// (highest first, ties by name), e0, e1, … With k = maxChildren:
//
//	edge ei pulls from the origin        if i < k
//	edge ei pulls from edge e((i-k)/k)   otherwise
//
// so the origin feeds at most k edges, every edge feeds at most k edges,
// and the depth is the least d with k + k² + … + k^d ≥ edges (3 for 500
// edges at k = 8). k = 0 puts every edge under the origin. Every node that
// sees the same members computes the same tree. When an edge joins or
// leaves, the ranks below it shift by one, so some edges get a new parent:
// a running relay should keep its parent while that parent is alive and
// consult the tree only to start one.
type Tree struct {
	Origin Member
	ranked []Member
	index  map[string]int
	k      int
}

// NewTree builds the tree of stream under origin from the usable edges
// among members.
func NewTree(stream string, origin Member, members []Member, maxChildren int) Tree {
	t := Tree{Origin: origin, k: maxChildren, index: map[string]int{}}
	for _, m := range members {
		if m.Role == RoleEdge && m.Usable() && m.Name != origin.Name {
			t.ranked = append(t.ranked, m)
		}
	}
	slices.SortFunc(t.ranked, func(a, b Member) int {
		if sa, sb := score(stream, a.Name), score(stream, b.Name); sa != sb {
			return -cmp.Compare(sa, sb)
		}
		return cmp.Compare(a.Name, b.Name)
	})
	for i, m := range t.ranked {
		t.index[m.Name] = i
	}
	return t
}

// Edges returns the edges in rank order.
func (t Tree) Edges() []Member { return t.ranked }

// Parent returns the node edge pulls the stream from; ok is false when
// edge is not a usable edge of the tree.
func (t Tree) Parent(edge string) (Member, bool) {
	i, ok := t.index[edge]
	if !ok {
		return Member{}, false
	}
	if t.k <= 0 || i < t.k {
		return t.Origin, true
	}
	return t.ranked[(i-t.k)/t.k], true
}

// Children returns the edges that pull the stream from node name (the
// origin's name for the first tier).
func (t Tree) Children(name string) []Member {
	if name == t.Origin.Name {
		if t.k <= 0 || len(t.ranked) <= t.k {
			return t.ranked
		}
		return t.ranked[:t.k]
	}
	j, ok := t.index[name]
	if !ok || t.k <= 0 {
		return nil
	}
	lo, hi := t.k+j*t.k, t.k+(j+1)*t.k
	if lo >= len(t.ranked) {
		return nil
	}
	return t.ranked[lo:min(hi, len(t.ranked))]
}

// Depth returns how many relay hops separate edge from the origin (1 for
// the origin's own children), or 0 if edge is not in the tree.
func (t Tree) Depth(edge string) int {
	i, ok := t.index[edge]
	if !ok {
		return 0
	}
	d := 1
	for t.k > 0 && i >= t.k {
		i = (i - t.k) / t.k
		d++
	}
	return d
}
