// Package node assembles a Cascade node from its parts: the WebRTC engine,
// the stream registry, WHIP ingest, WHEP playback, the JSON API, the web
// pages and the metrics, behind one HTTP handler. cmd/cascade parses
// configuration and calls it; tests build whole nodes in-process with it.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cascade-cdn/cascade/api"
	"github.com/cascade-cdn/cascade/cluster"
	"github.com/cascade-cdn/cascade/edge/relay"
	"github.com/cascade-cdn/cascade/edge/whep"
	"github.com/cascade-cdn/cascade/origin/auth"
	"github.com/cascade-cdn/cascade/origin/registry"
	"github.com/cascade-cdn/cascade/origin/rtsp"
	"github.com/cascade-cdn/cascade/origin/whip"
	"github.com/cascade-cdn/cascade/peer"
	"github.com/cascade-cdn/cascade/transcode"
	"github.com/cascade-cdn/cascade/web"
	"github.com/cascade-cdn/cascade/wish"
)

// Config is a node's configuration; its yaml keys are the contract's
// configuration keys.
type Config struct {
	// HTTP is the address for WHIP, WHEP, the API, the pages and /metrics.
	HTTP       string           `yaml:"http"`
	WebRTC     peer.Config      `yaml:"webrtc"`
	ICEServers []wish.ICEServer `yaml:"ice_servers"`
	Auth       auth.Config      `yaml:"auth"`
	Streams    registry.Config  `yaml:"streams"`
	Transcode  transcode.Config `yaml:"transcode"`
	RTSP       rtsp.Config      `yaml:"rtsp"`
	// Sources are cameras and other RTSP servers to pull, by stream name.
	Sources map[string]rtsp.SourceConfig `yaml:"sources"`
	Cluster cluster.Config               `yaml:"cluster"`
	Relay   RelayConfig                  `yaml:"relay"`
	// Pprof serves Go's profiler under /debug/pprof/ on the HTTP port.
	// Off by default: profiles reveal internals.
	Pprof bool `yaml:"pprof"`
	// DrainTimeout is how long a stopping node (SIGTERM, Shutdown) keeps
	// its sessions after telling its viewers to move elsewhere; it closes
	// sooner once they have all gone, but not before MinDrain, so that load
	// balancers see /readyz fail. Keep it below the orchestrator's grace
	// period (Kubernetes: 30 s).
	DrainTimeout time.Duration `yaml:"drain_timeout"`

	// cpuSample replaces the machine's CPU meter (tests: nodes sharing one
	// busy machine must not all look full).
	cpuSample func() float64
}

// MinDrain is the least time a stopping node keeps answering (503 to new
// sessions, /readyz failing) when its drain timeout allows it.
const MinDrain = 2 * time.Second

// DefaultConfig is the all-in-one node's configuration: publishing is open,
// which New logs loudly.
func DefaultConfig() Config {
	a := auth.DefaultConfig()
	a.OpenPublish = true
	return Config{
		HTTP:      ":8080",
		WebRTC:    peer.DefaultConfig(),
		Auth:      a,
		Streams:   registry.DefaultConfig(),
		Transcode: transcode.DefaultConfig(),
		RTSP:      rtsp.DefaultConfig(),
		Sources:   map[string]rtsp.SourceConfig{},
		Relay:     RelayConfig{IdleTimeout: 30 * time.Second},
		Cluster:   defaultCluster(),
		// Long enough for a player to hear "reconnect", POST elsewhere and
		// get its first frames there (about a second on a LAN).
		DrainTimeout: 5 * time.Second,
	}
}

func defaultCluster() cluster.Config {
	c := cluster.DefaultConfig()
	c.Join = []string{}
	return c
}

// TestConfig listens on loopback on ports the system picks, with timers
// short enough for tests.
func TestConfig() Config {
	c := DefaultConfig()
	c.HTTP = "127.0.0.1:0"
	c.WebRTC.Listen = "127.0.0.1:0"
	c.RTSP.Listen = "127.0.0.1:0"
	c.RTSP.UDPRTP, c.RTSP.UDPRTCP = "", "" // tests that need UDP pick a free pair
	c.Streams.GracePeriod = 2 * time.Second
	c.Streams.SilenceTimeout = 2 * time.Second
	// Test publishers send synthetic slices no decoder accepts; tests of
	// the ladder turn it on and publish real H.264.
	c.Transcode.Enabled = false
	return c
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.HTTP); err != nil {
		return fmt.Errorf("http: %w", err)
	}
	if err := c.WebRTC.Validate(); err != nil {
		return err
	}
	if c.Streams.GracePeriod < 0 || c.Streams.SilenceTimeout <= 0 {
		return errors.New("streams: grace_period must be >= 0 and silence_timeout > 0")
	}
	if err := c.Transcode.Validate(); err != nil {
		return err
	}
	if err := c.RTSP.Validate(); err != nil {
		return err
	}
	if err := rtsp.ValidateSources(c.Sources); err != nil {
		return err
	}
	if c.Relay.Parent != "" && !strings.HasPrefix(c.Relay.Parent, "rtsp://") && !strings.HasPrefix(c.Relay.Parent, "rtsps://") {
		return fmt.Errorf("relay.parent: %q is not an rtsp:// or rtsps:// address", c.Relay.Parent)
	}
	if c.Cluster.Role != "" {
		if err := c.Cluster.Validate(); err != nil {
			return err
		}
	}
	if c.DrainTimeout < 0 {
		return errors.New("drain_timeout must be >= 0")
	}
	if c.Relay.IdleTimeout < time.Second {
		return errors.New("relay.idle_timeout must be at least 1s")
	}
	for name := range c.Auth.PublishKeys {
		if !wish.ValidStreamName(name) {
			return fmt.Errorf("auth.publish_keys: %q is not a valid stream name", name)
		}
	}
	return nil
}

// Node is a running all-in-one node.
type Node struct {
	cfg    Config
	log    *slog.Logger
	eng    *peer.Engine
	reg    *registry.Registry
	whip   *wish.Handler
	whep   *wish.Handler
	api    *api.API
	tc     *transcoders
	rtsp   *rtsp.Server // nil when RTSP is off
	pulls  *rtsp.Pulls
	relays *relays
	member *member // nil unless the node has a cluster role
	ln     net.Listener
	srv    *http.Server

	closeOnce sync.Once
	drainOnce sync.Once
	served    chan struct{}

	// egressBytes counts the media bytes this node has sent: to viewers,
	// and to relay readers (edges below it).
	egressBytes func() uint64
}

// New starts a node: it binds every port before returning, so its
// addresses are known, and serves HTTP in the background.
func New(cfg Config, log *slog.Logger) (n *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n = &Node{cfg: cfg, log: log, served: make(chan struct{})}
	self := n // the error returns below set n to nil
	defer func() {
		if err != nil {
			self.Close()
		}
	}()
	pr := prometheus.NewRegistry()
	pr.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if n.eng, err = peer.New(cfg.WebRTC, log); err != nil {
		return nil, err
	}
	registerSocketMetrics(pr, n.eng)
	n.reg = registry.New(cfg.Streams, pr, log)
	if cfg.Auth.OpenPublish {
		log.Warn("publishing is open: any stream without a key in auth.publish_keys may be published by anyone (auth.open_publish)")
	}
	wm := wish.NewMetrics(pr)
	ingest := whip.New(n.eng, n.reg, cfg.Auth, pr, log)
	if n.pulls, err = rtsp.NewPulls(cfg.Sources, n.reg, pr, log); err != nil {
		return nil, err
	}
	ingest.SetPullSources(n.pulls.Has)
	if cfg.RTSP.Listen != "" {
		if n.rtsp, err = rtsp.New(cfg.RTSP, n.reg, cfg.Auth, cfg.Cluster.Secret, n.pulls, pr, log); err != nil {
			return nil, err
		}
		n.pulls.SetReaders(n.rtsp.RelayReaders)
	}
	n.relays = newRelays(cfg.Relay, cfg.Cluster.Secret, relay.NewMetrics(pr), log)
	n.relays.parentOf = func(stream string) (string, error) {
		if m := n.member; m != nil {
			return m.parent(stream)
		}
		return "", errors.New("no relay parent")
	}
	playback := whep.New(n.eng, streams{n.reg, n.pulls, n.relays}, pr, log)
	n.egressBytes = playback.EgressBytes
	if n.rtsp != nil {
		// Edges below this one in a relay tree read what it relays.
		n.rtsp.SetRelayed(n.relays.served)
		n.egressBytes = func() uint64 { return playback.EgressBytes() + n.rtsp.RelayBytesOut() }
	}
	n.tc = &transcoders{cfg: cfg.Transcode, m: transcode.NewMetrics(pr), log: log, running: map[string]*transcode.Pipeline{}}
	if cfg.Transcode.Enabled {
		n.reg.OnStart(n.tc.start)
	}
	n.reg.OnEnd(func(name string) {
		n.tc.stop(name)
		ingest.Forget(name)
		playback.Forget(name)
		if n.rtsp != nil {
			n.rtsp.Forget(name)
		}
	})
	n.whip = wish.New("whip", ingest, cfg.ICEServers, wm, log)
	n.whep = wish.New("whep", playback, cfg.ICEServers, wm, log)
	n.api = api.New(n.reg, log)

	mux := http.NewServeMux()
	n.whip.Register(mux)
	n.whep.Register(mux)
	n.api.Register(mux)
	web.Register(mux)
	mux.Handle("GET /metrics", promhttp.HandlerFor(pr, promhttp.HandlerOpts{Registry: pr}))
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		if n.member == nil {
			http.Error(w, "this node runs alone (no cluster role)", http.StatusNotFound)
			return
		}
		n.member.view(w, r)
	})
	if cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}

	if n.ln, err = net.Listen("tcp", cfg.HTTP); err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	n.srv = &http.Server{
		Handler:           instrument(pr, mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if err = n.startMember(pr); err != nil {
		close(n.served) // never served
		n.srv = nil
		return nil, fmt.Errorf("cluster: %w", err)
	}
	go func() {
		defer close(self.served)
		if err := self.srv.Serve(self.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()
	if m := n.member; m != nil {
		playback.SetPlacement(m.placeViewer)
		ingest.SetPlacement(m.placePublisher)
	}
	log.Info("node started", "http", n.ln.Addr().String(), "webrtc", n.eng.UDPAddr().String())
	return n, nil
}

// HTTPAddr is the bound HTTP address.
func (n *Node) HTTPAddr() net.Addr { return n.ln.Addr() }

// URL is the base URL of the HTTP server, for logs and tests.
func (n *Node) URL() string {
	a := n.ln.Addr().(*net.TCPAddr)
	host := a.IP.String()
	if a.IP.IsUnspecified() {
		host = "localhost"
	}
	return fmt.Sprintf("http://%s", net.JoinHostPort(host, fmt.Sprint(a.Port)))
}

// Drain starts a graceful shutdown: /readyz fails; new WHIP/WHEP POSTs
// get 503, or in a cluster whatever placement says for a draining node
// (a 307 to another node, 503 when none can take them); the cluster hears
// this node is draining; and every viewer with an open event stream is
// sent "reconnect" with another edge's WHEP URL (the best edge for its
// stream, or {} when there is none: the player retries where it was).
// Existing sessions go on until their players leave or Close.
// Idempotent.
func (n *Node) Drain() {
	n.drainOnce.Do(func() {
		n.api.Drain()
		if n.member != nil {
			n.member.drain() // placement now sends every new POST elsewhere
		} else {
			n.whip.Drain()
			n.whep.Drain()
		}
		target := func(string) string { return "" }
		if n.member != nil {
			target = n.member.moveTarget
		}
		n.whep.Reconnect(target)
	})
}

// Shutdown drains the node, waits for its viewers to leave (at most
// cfg.DrainTimeout, at least MinDrain within it, or until ctx ends), then
// closes it. It is what `cascade` does on SIGTERM.
func (n *Node) Shutdown(ctx context.Context) error {
	start := time.Now()
	n.Drain()
	limit := n.cfg.DrainTimeout
	least := min(MinDrain, limit)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		since := time.Since(start)
		_, viewers := n.Sessions()
		if since >= limit || (viewers == 0 && since >= least) {
			break
		}
		select {
		case <-ctx.Done():
			return n.Close()
		case <-t.C:
		}
	}
	if _, left := n.Sessions(); left > 0 {
		n.log.Info("drain time over; closing the remaining viewers", "viewers", left)
	}
	return n.Close()
}

// Close drains, closes every session and stream, and stops serving.
// Idempotent; safe after a failed New.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		if n.api != nil {
			n.Drain()
		}
		if n.member != nil {
			n.member.close()
		}
		if n.whep != nil {
			n.whep.Close()
		}
		if n.whip != nil {
			n.whip.Close()
		}
		if n.rtsp != nil {
			n.rtsp.Close()
		}
		n.pulls.Close()
		if n.relays != nil {
			n.relays.close()
		}
		if n.reg != nil {
			n.reg.Close()
		}
		if n.tc != nil {
			n.tc.closeAll()
		}
		if n.srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			n.srv.Shutdown(ctx)
			cancel()
			<-n.served
		}
		if n.eng != nil {
			n.eng.Close()
		}
	})
	return nil
}

// streams adapts the registry to what WHEP needs, so edge code never
// imports origin code.
type streams struct {
	reg    *registry.Registry
	pulls  *rtsp.Pulls // starts on-demand cameras
	relays *relays     // streams read from a parent node
}

func (s streams) Lookup(name string) (whep.Source, bool) {
	st := s.reg.Get(name)
	if st == nil && s.pulls.Demand(name) {
		st = s.reg.Get(name)
	}
	if st == nil {
		return s.relays.lookup(name)
	}
	video := st.Video // without a transcoder, "source" is the publisher's hub
	if video.Config().Codec != "H264" {
		video = nil // H.265 reaches viewers only through the transcoder
	}
	return whep.Source{Video: video, Audio: st.Audio, AddViewers: st.AddViewers,
		Ladder: func() []whep.Rendition { return ladderOf(st) }}, true
}

// ladderOf lists a stream's renditions for viewers, best first: the
// transcoder's ladder, or the publisher's own H.264 as "source".
func ladderOf(st *registry.Stream) []whep.Rendition {
	var out []whep.Rendition
	for _, r := range st.Renditions() {
		b := r.Bitrate
		if r.Name == "source" && b == 0 {
			b = int(st.VideoBitrate())
		}
		out = append(out, whep.Rendition{Name: r.Name, Width: r.Width, Height: r.Height, Bitrate: b, Hub: r.Hub})
	}
	if len(out) == 0 && st.VideoCodec() == "H264" {
		i := st.Info()
		out = append(out, whep.Rendition{Name: "source", Width: i.Width, Height: i.Height, Bitrate: int(st.VideoBitrate()), Hub: st.Video})
	}
	return out
}

// Sessions returns the open WHIP and WHEP sessions.
func (n *Node) Sessions() (publishers, viewers int) { return n.whip.Sessions(), n.whep.Sessions() }

// registerSocketMetrics exports the shared UDP socket's writer: packets
// the kernel took, packets dropped (queue full or refused), system calls,
// UDP GSO messages (several packets to one viewer in one segment train),
// and the drains of the polled RTCP socket.
func registerSocketMetrics(pr prometheus.Registerer, eng *peer.Engine) {
	for _, m := range []struct {
		name, help string
		value      func(peer.SocketStats) uint64
	}{
		{"cascade_udp_packets_sent_total", "Packets the shared WebRTC UDP socket handed to the kernel.",
			func(s peer.SocketStats) uint64 { return s.Packets }},
		{"cascade_udp_packets_dropped_total", "Packets the shared WebRTC UDP socket dropped: its write queue was full, or the kernel refused them.",
			func(s peer.SocketStats) uint64 { return s.Dropped }},
		{"cascade_udp_send_syscalls_total", "sendmmsg calls of the shared WebRTC UDP socket.",
			func(s peer.SocketStats) uint64 { return s.Syscalls }},
		{"cascade_udp_gso_messages_total", "UDP GSO messages sent (each several packets to one peer).",
			func(s peer.SocketStats) uint64 { return s.Segmented }},
		{"cascade_udp_gso_packets_total", "Packets sent inside UDP GSO messages.",
			func(s peer.SocketStats) uint64 { return s.SegmentedPackets }},
		{"cascade_udp_unrouted_dropped_total", "Datagrams for pion's sessions (publishers) dropped because its queue was full.",
			func(s peer.SocketStats) uint64 { return s.UnroutedDropped }},
		{"cascade_udp_rtcp_polls_total", "Drains of the UDP port's polled RTCP socket, which takes the viewers' RTCP while it arrives faster than 400 a second.",
			func(s peer.SocketStats) uint64 { return s.Polls }},
		{"cascade_udp_rtcp_polled_total", "RTCP datagrams read from the UDP port's polled socket.",
			func(s peer.SocketStats) uint64 { return s.Polled }},
	} {
		pr.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: m.name, Help: m.help},
			func() float64 { return float64(m.value(eng.SocketStats())) }))
	}
}
