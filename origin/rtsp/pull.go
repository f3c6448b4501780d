package rtsp

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/bluenviron/gortsplib/v5"
	"github.com/bluenviron/gortsplib/v5/pkg/base"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/cascade-cdn/cascade/origin/registry"
	"github.com/cascade-cdn/cascade/wish"
)

// SourceConfig is one pull source (config key "sources.NAME"). In YAML it
// may also be written as just its URL.
type SourceConfig struct {
	// URL is the camera's rtsp:// or rtsps:// URL; credentials in it are
	// used but never logged or shown by the API.
	URL string `yaml:"url"`
	// OnDemand starts the source on the first viewer (or relay reader)
	// instead of at boot, and stops it after IdleTimeout without any.
	OnDemand bool `yaml:"on_demand"`
	// Transport is "tcp" (default: works through NAT and firewalls) or "udp".
	Transport string `yaml:"transport"`
	// IdleTimeout stops an on-demand source with no viewers.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// UnmarshalYAML accepts a bare URL as well as the full mapping.
func (c *SourceConfig) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*c = SourceConfig{URL: n.Value}
		return nil
	}
	type plain SourceConfig
	return n.Decode((*plain)(c))
}

// Backoff bounds between reconnects to a lost source.
const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
	// demandWait is how long the first viewer of an on-demand source
	// waits for the camera to answer.
	demandWait = 5 * time.Second
)

func (c *SourceConfig) check(name string) (*base.URL, error) {
	if !wish.ValidStreamName(name) {
		return nil, fmt.Errorf("sources: %q is not a valid stream name", name)
	}
	u, err := base.ParseURL(c.URL)
	if err != nil {
		return nil, fmt.Errorf("sources.%s.url: not a valid URL", name) // the error may quote the password
	}
	if u.Scheme != "rtsp" && u.Scheme != "rtsps" {
		return nil, fmt.Errorf("sources.%s.url: scheme must be rtsp or rtsps", name)
	}
	switch c.Transport {
	case "":
		c.Transport = "tcp"
	case "tcp", "udp":
	default:
		return nil, fmt.Errorf("sources.%s.transport: %q is not tcp or udp", name, c.Transport)
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 30 * time.Second
	}
	if c.IdleTimeout < time.Second {
		return nil, fmt.Errorf("sources.%s.idle_timeout must be at least 1s", name)
	}
	return u, nil
}

// ValidateSources checks the pull sources of a configuration.
func ValidateSources(srcs map[string]SourceConfig) error {
	for name, c := range srcs {
		if _, err := c.check(name); err != nil {
			return err
		}
	}
	return nil
}

// Pulls runs the configured pull sources.
type Pulls struct {
	reg     *registry.Registry
	log     *slog.Logger
	readers func(stream string) int

	state      *prometheus.GaugeVec
	reconnects *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	sessions   prometheus.Gauge // connected pulls

	byName map[string]*puller
	stop   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

// NewPulls validates srcs, starts those that are not on demand, and
// watches on-demand ones for idleness. readers, if not nil, counts a
// stream's relay readers as viewers.
func NewPulls(srcs map[string]SourceConfig, reg *registry.Registry, pr prometheus.Registerer, log *slog.Logger) (*Pulls, error) {
	ps := &Pulls{
		reg: reg, log: log.With("component", "rtsp-pull"), byName: map[string]*puller{}, stop: make(chan struct{}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cascade_rtsp_pull_state",
			Help: "State of each pull source: 1 for its current state (idle, connecting, running, backoff)."}, []string{"source", "state"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_rtsp_pull_reconnects_total",
			Help: "Connections to a pull source that ended and were retried."}, []string{"source"}),
	}
	ps.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_rtsp_pull_bytes_total",
		Help: "RTP payload bytes received from pull sources, by stream and kind."}, []string{"stream", "kind"})
	ps.sessions = prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_rtsp_pull_sessions", Help: "Pull sources connected to their camera."})
	pr.MustRegister(ps.state, ps.reconnects, ps.bytes, ps.sessions)
	for name, c := range srcs {
		u, err := c.check(name)
		if err != nil {
			return nil, err
		}
		p := &puller{ps: ps, name: name, cfg: c, u: u, log: ps.log.With("source", name, "url", redactURL(u))}
		ps.byName[name] = p
		p.setState("idle")
	}
	for _, p := range ps.byName {
		if !p.cfg.OnDemand {
			p.start()
		}
	}
	ps.wg.Add(1)
	go ps.watch()
	return ps, nil
}

// SetReaders tells Pulls how to count a stream's relay readers.
func (ps *Pulls) SetReaders(fn func(stream string) int) { ps.readers = fn }

// Has reports whether name is a pull source.
func (ps *Pulls) Has(name string) bool { return ps != nil && ps.byName[name] != nil }

// Demand starts the on-demand source name if it is not running and waits
// (at most a few seconds) for its stream. It reports whether the stream
// is there.
func (ps *Pulls) Demand(name string) bool {
	if ps == nil {
		return false
	}
	p := ps.byName[name]
	if p == nil {
		return false
	}
	ready := p.start()
	select {
	case <-ready:
	case <-time.After(demandWait):
	case <-ps.stop:
	}
	return ps.reg.Get(name) != nil
}

// watch stops on-demand sources that nobody watched for their idle timeout.
func (ps *Pulls) watch() {
	defer ps.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ps.stop:
			return
		case now := <-t.C:
			for _, p := range ps.byName {
				if p.cfg.OnDemand {
					p.checkIdle(now)
				}
			}
		}
	}
}

// Close stops every source.
func (ps *Pulls) Close() {
	if ps == nil {
		return
	}
	ps.once.Do(func() {
		close(ps.stop)
		ps.wg.Wait()
		for _, p := range ps.byName {
			p.halt()
		}
	})
}

// puller runs one pull source: connect, publish, and reconnect with
// backoff while it is wanted.
type puller struct {
	ps   *Pulls
	name string
	cfg  SourceConfig
	u    *base.URL
	log  *slog.Logger

	mu      sync.Mutex
	stop    chan struct{} // nil while not running
	done    chan struct{}
	ready   chan struct{} // closed once the first connection published or failed
	idleAt  time.Time
	stateIs string
}

// start runs the puller if it is not running, and returns a channel
// closed once it has a stream (or its first attempt failed).
func (p *puller) start() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stop == nil {
		p.stop, p.done, p.ready, p.idleAt = make(chan struct{}), make(chan struct{}), make(chan struct{}), time.Time{}
		p.log.Info("pull source starting", "on_demand", p.cfg.OnDemand)
		go p.run(p.stop, p.done, p.ready)
	}
	return p.ready
}

// halt stops the puller and waits for it.
func (p *puller) halt() {
	p.mu.Lock()
	stop, done := p.stop, p.done
	p.stop = nil
	p.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
		p.setState("idle")
	}
}

func (p *puller) checkIdle(now time.Time) {
	p.mu.Lock()
	running := p.stop != nil
	p.mu.Unlock()
	if !running {
		return
	}
	n := 0
	if st := p.ps.reg.Get(p.name); st != nil {
		n = int(st.Info().Viewers)
	}
	if p.ps.readers != nil {
		n += p.ps.readers(p.name)
	}
	p.mu.Lock()
	if n > 0 || p.idleAt.IsZero() {
		p.idleAt = now
		if n > 0 {
			p.mu.Unlock()
			return
		}
	}
	idle := now.Sub(p.idleAt)
	p.mu.Unlock()
	if idle >= p.cfg.IdleTimeout {
		p.log.Info("pull source idle; stopping", "idle", idle.Round(time.Second))
		p.halt()
	}
}

func (p *puller) setState(s string) {
	p.mu.Lock()
	old := p.stateIs
	p.stateIs = s
	p.mu.Unlock()
	if old != "" {
		p.ps.state.WithLabelValues(p.name, old).Set(0)
	}
	p.ps.state.WithLabelValues(p.name, s).Set(1)
}

func (p *puller) run(stop, done, ready chan struct{}) {
	defer close(done)
	var readyOnce sync.Once
	markReady := func() { readyOnce.Do(func() { close(ready) }) }
	defer markReady()
	h := &hold{reg: p.ps.reg}
	defer h.release()

	backoff := minBackoff
	for {
		p.setState("connecting")
		began := time.Now()
		err := p.connect(stop, h, markReady)
		markReady()
		select {
		case <-stop:
			return
		default:
		}
		p.ps.reconnects.WithLabelValues(p.name).Inc()
		if time.Since(began) > maxBackoff {
			backoff = minBackoff // it ran a good while: this is a new outage
		}
		// Full jitter on the upper half, so cameras behind one switch that
		// rebooted together do not reconnect in lockstep.
		wait := backoff/2 + rand.N(backoff/2+1)
		p.log.Warn("pull source lost; reconnecting", "in", wait.Round(time.Millisecond), "err", p.redact(err))
		p.setState("backoff")
		select {
		case <-stop:
			return
		case <-time.After(wait):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// hold keeps the puller's stream alive across reconnects.
type hold struct {
	reg *registry.Registry
	st  *registry.Stream
	rel func()
}

func (h *hold) on(st *registry.Stream) {
	if h.st == st {
		return
	}
	h.release()
	h.st, h.rel = st, h.reg.Hold(st, "rtsp-pull")
}

func (h *hold) release() {
	if h.rel != nil {
		h.rel()
		h.st, h.rel = nil, nil
	}
}

// connect runs one connection to the camera until it breaks or stop.
func (p *puller) connect(stop <-chan struct{}, h *hold, published func()) error {
	proto := gortsplib.ProtocolTCP
	if p.cfg.Transport == "udp" {
		proto = gortsplib.ProtocolUDP
	}
	c := &gortsplib.Client{Scheme: p.u.Scheme, Host: p.u.Host, Protocol: &proto, ReadTimeout: 10 * time.Second}
	if err := c.Start(); err != nil {
		return err
	}
	defer c.Close()
	res := make(chan error, 1)
	// Describe and Setup block on the network; run them so stop is heard.
	go func() {
		desc, _, err := c.Describe(p.u)
		if err != nil {
			res <- err
			return
		}
		ch, err := choose(desc)
		if err != nil {
			res <- err
			return
		}
		if ch.video != nil {
			if _, err := c.Setup(desc.BaseURL, ch.video, 0, 0); err != nil {
				res <- err
				return
			}
		}
		if ch.audio != nil {
			if _, err := c.Setup(desc.BaseURL, ch.audio, 0, 0); err != nil {
				res <- err
				return
			}
		}
		res <- p.play(c, ch, h, published, stop)
	}()
	select {
	case err := <-res:
		return err
	case <-stop:
		c.Close()
		<-res
		return errors.New("stopped")
	}
}

// play publishes the camera's stream and runs until the connection ends.
func (p *puller) play(c *gortsplib.Client, ch choice, h *hold, published func(), stop <-chan struct{}) error {
	conn := &pullConn{name: p.name, codec: ch.codec(), closed: make(chan struct{})}
	st := p.ps.reg.Publish(p.name, conn)
	h.on(st)
	in, err := newIngest(ch, st, received(p.ps.bytes, p.name))
	if err != nil {
		p.ps.reg.Unpublish(st, conn)
		return err
	}
	defer in.close()
	if ch.video != nil {
		c.OnPacketRTP(ch.video, ch.videoForma, func(pkt *rtp.Packet) { in.onVideo(pkt) })
	}
	if ch.audio != nil {
		c.OnPacketRTP(ch.audio, ch.audioForma, func(pkt *rtp.Packet) { in.onAudio(pkt) })
	}
	if _, err := c.Play(nil); err != nil {
		p.ps.reg.Unpublish(st, conn)
		return err
	}
	p.setState("running")
	p.ps.sessions.Inc()
	defer p.ps.sessions.Dec()
	p.log.Info("pull source playing", "codec", ch.codec(), "audio", formatName(ch.audioForma), "transport", p.cfg.Transport)
	published()
	waited := make(chan error, 1)
	go func() { waited <- c.Wait() }()
	select {
	case err = <-waited:
	case <-conn.closed: // the registry found it silent or took it over
		err = errors.New("closed by the registry")
		c.Close()
	case <-stop:
		c.Close()
	}
	// Close returns once the client's goroutines are gone: no packet
	// callback runs after this.
	p.ps.reg.Unpublish(st, conn)
	return err
}

// redact removes the URL's credentials from an error's text.
func (p *puller) redact(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if p.u.User != nil {
		if pw, ok := p.u.User.Password(); ok && pw != "" {
			s = strings.ReplaceAll(s, pw, "xxxxx")
			s = strings.ReplaceAll(s, url.QueryEscape(pw), "xxxxx")
		}
	}
	return s
}

func redactURL(u *base.URL) string { return (*url.URL)(u).Redacted() }

// pullConn is the registry's view of one connection to a camera.
type pullConn struct {
	name   string
	codec  string
	once   sync.Once
	closed chan struct{}
}

func (c *pullConn) Source() string     { return "rtsp-pull" }
func (c *pullConn) VideoCodec() string { return c.codec }
func (c *pullConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}
