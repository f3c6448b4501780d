package node

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascade-cdn/cascade/cluster"
	"github.com/cascade-cdn/cascade/wish"
)

// hopParam marks a WHIP/WHEP request that was redirected once already: it
// is served or refused where it lands, never redirected again.
const hopParam = "cascade_hop"

// RegionHeader is the request header a load balancer or CDN front can set
// to the viewer's region; placement prefers edges of that region.
const RegionHeader = "X-Cascade-Region"

// member is a node's place in a cluster: it gossips its load and the
// streams it carries, places viewers and publishers, and names relay
// parents. It is nil for an all-in-one node.
type member struct {
	n         *Node
	c         *cluster.Cluster
	log       *slog.Logger
	redirects *prometheus.CounterVec

	mu        sync.Mutex
	announced map[string]string // stream -> rungs announced, joined
	stop      chan struct{}
	done      chan struct{}

	// Load sampling, owned by run (the figures under loadMu): CPU busy
	// fraction of the machine and egress bit rate, measured over
	// loadEvery.
	cpu       func() float64 // busy fraction since the previous call
	sampledAt time.Time
	sentBytes uint64
	loadMu    sync.Mutex
	cpuFrac   float64
	egressBps int64
}

// loadEvery is how often CPU and egress are measured: often enough for
// placement (which sees them a gossip round later anyway), rarely enough
// to cost nothing; the averaging smooths bursts (a keyframe to every
// viewer).
const loadEvery = 2 * time.Second

// startMember joins the cluster when the node has a role.
func (n *Node) startMember(pr prometheus.Registerer) error {
	cfg := n.cfg.Cluster
	if cfg.Role == "" {
		return nil
	}
	host, _, _ := net.SplitHostPort(n.ln.Addr().String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = advertiseHost(cfg)
	}
	self := cluster.Meta{
		Role: cfg.Role, Region: cfg.Region, Zone: cfg.Zone,
		HTTP:   "http://" + net.JoinHostPort(host, port(n.ln.Addr())),
		WebRTC: net.JoinHostPort(host, port(n.eng.UDPAddr())),
		Load:   cluster.Load{Capacity: cfg.Capacity},
	}
	if n.rtsp != nil {
		self.RTSP = "rtsp://" + net.JoinHostPort(host, port(n.rtsp.Addr()))
	}
	c, err := cluster.Start(cfg, self, n.log, pr)
	if err != nil {
		return err
	}
	if !c.Encrypted() {
		n.log.Warn("gossip is not encrypted and relay reads are open: set cluster.secret")
	}
	m := &member{n: n, c: c, log: n.log.With("component", "cluster"), announced: map[string]string{},
		stop: make(chan struct{}), done: make(chan struct{}), cpu: cluster.NewCPUMeter().Sample,
		redirects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_redirects_total",
			Help: "WHIP/WHEP requests sent to another node (307) or refused for lack of room (503), by protocol and reason."}, []string{"protocol", "reason"})}
	if n.cfg.cpuSample != nil {
		m.cpu = n.cfg.cpuSample
	}
	pr.MustRegister(m.redirects)
	n.member = m
	go m.run()
	return nil
}

func advertiseHost(cfg cluster.Config) string {
	if cfg.Advertise != "" {
		if h, _, err := net.SplitHostPort(cfg.Advertise); err == nil {
			return h
		}
		return cfg.Advertise
	}
	if h, _, err := net.SplitHostPort(cfg.Bind); err == nil && h != "" && h != "0.0.0.0" && h != "::" {
		return h
	}
	return "127.0.0.1"
}

func port(a net.Addr) string {
	_, p, _ := net.SplitHostPort(a.String())
	return p
}

// run reports the node's load and streams every second.
func (m *member) run() {
	defer close(m.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	m.sample(time.Now()) // primes the meters
	for {
		if now := time.Now(); now.Sub(m.sampledAt) >= loadEvery {
			m.sample(now)
		}
		m.report()
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
	}
}

// report gossips the load and announces what changed in the streams this
// node carries: its own (with their rungs) and the ones it relays (with
// the rungs it pulls).
func (m *member) report() {
	m.updateLoad()
	carried := map[string][]string{}
	for _, st := range m.n.reg.List() {
		var rungs []string
		for _, r := range ladderOf(st) {
			rungs = append(rungs, r.Name)
		}
		carried[st.Name] = rungs
	}
	for name, rungs := range m.n.relays.carried() {
		if _, own := carried[name]; !own {
			carried[name] = rungs
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, rungs := range carried {
		key := fmt.Sprint(rungs)
		if m.announced[name] != key {
			if err := m.c.Announce(name, rungs); err == nil {
				m.announced[name] = key
			}
		}
	}
	for name := range m.announced {
		if _, ok := carried[name]; !ok {
			m.c.Withdraw(name)
			delete(m.announced, name)
		}
	}
}

// sample measures CPU and egress since the previous sample.
func (m *member) sample(now time.Time) {
	cpu := m.cpu()
	sent := m.n.egressBytes()
	var bps int64
	if !m.sampledAt.IsZero() && sent >= m.sentBytes {
		if dt := now.Sub(m.sampledAt).Seconds(); dt > 0 {
			bps = int64(float64(sent-m.sentBytes) * 8 / dt)
		}
	}
	m.sampledAt, m.sentBytes = now, sent
	m.loadMu.Lock()
	m.cpuFrac, m.egressBps = cpu, bps
	m.loadMu.Unlock()
}

// updateLoad sets this node's load: its sessions now, and the last CPU
// and egress samples. Placement calls it first, so a node judges its own
// room exactly (others see it a gossip round later).
func (m *member) updateLoad() {
	_, viewers := m.n.Sessions()
	m.loadMu.Lock()
	cpu, bps := m.cpuFrac, m.egressBps
	m.loadMu.Unlock()
	m.c.SetLoad(cluster.Load{Viewers: viewers, Capacity: m.n.cfg.Cluster.Capacity, CPU: cpu, EgressBps: bps})
}

// parent names the RTSP base URL to relay stream from.
func (m *member) parent(stream string) (string, error) {
	p, ok := m.c.Parent(stream)
	if !ok || p.RTSP == "" {
		return "", fmt.Errorf("no node in the cluster carries %q", stream)
	}
	return p.RTSP, nil
}

// carries reports whether some node of the cluster carries stream.
func (m *member) carries(stream string) bool { return len(m.c.Carriers(stream)) > 0 }

// placeViewer decides where a WHEP viewer is served.
func (m *member) placeViewer(o wish.Offer) error {
	redirected := o.Query.Get(hopParam) != ""
	region := ""
	if o.Header != nil {
		region = o.Header.Get(RegionHeader)
	}
	if region == "" {
		region = m.c.RegionOf(o.Remote) // cluster.regions, by client subnet
	}
	m.updateLoad()
	d := m.c.PlaceViewer(o.Stream, region, redirected)
	return m.decide("whep", o, d)
}

// placePublisher decides where a WHIP publisher is served.
func (m *member) placePublisher(o wish.Offer) error {
	d := m.c.PlacePublisher(o.Stream, o.Query.Get(hopParam) != "")
	return m.decide("whip", o, d)
}

func (m *member) decide(protocol string, o wish.Offer, d cluster.Decision) error {
	switch d.Action {
	case cluster.Redirect:
		q := url.Values{}
		for k, v := range o.Query {
			q[k] = slices.Clone(v)
		}
		q.Set(hopParam, "1")
		m.redirects.WithLabelValues(protocol, d.Reason).Inc()
		return wish.Redirect(d.Target.HTTP+"/"+protocol+"/"+url.PathEscape(o.Stream)+"?"+q.Encode(), "redirect_"+d.Reason)
	case cluster.Unavailable:
		m.redirects.WithLabelValues(protocol, "unavailable_"+d.Reason).Inc()
		return wish.Errorf(503, "no_room", "no node has room for this %s now (%s)", protocol, d.Reason)
	}
	return nil
}

// view serves GET /v1/cluster.
func (m *member) view(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(m.c.View())
}

// drain tells the cluster this node takes nothing new.
func (m *member) drain() { m.c.SetDraining(true) }

// moveTarget is the WHEP URL a viewer of stream on this draining node is
// told to reconnect to: the best other edge with room, preferring this
// node's own region (its viewers were placed here for it), or "" when
// there is none (the player then retries where it was, and is placed or
// refused there).
func (m *member) moveTarget(stream string) string {
	best, _, ok := cluster.PickEdge(m.c.Members(), stream, m.n.cfg.Cluster.Region, m.c.Name())
	if !ok || best.HTTP == "" {
		m.log.Warn("draining, and no other edge has room", "stream", stream)
		return ""
	}
	// With the hop marker: the move is a redirect, and the other edge may
	// not have heard yet that this one drains; without it, it could send
	// the viewer straight back here.
	return best.HTTP + "/whep/" + url.PathEscape(stream) + "?" + hopParam + "=1"
}

// close leaves the cluster.
func (m *member) close() {
	close(m.stop)
	<-m.done
	m.c.Leave(2 * time.Second)
	m.c.Close()
}
