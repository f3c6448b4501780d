// Package relay is the edge side of the origin-edge relay: it reads a
// stream's ladder from a parent node (the origin, or another edge) over
// the RTSP relay read, into local hubs that WHEP viewers subscribe to.
//
// Each rendition is pulled over its own RTSP session, started when a
// viewer on this node subscribes to that rung and stopped a while after
// the last one leaves, so an edge carries only the rungs its viewers'
// ABR currently needs. Audio is pulled while the stream is relayed. A
// broken session reconnects with backoff, to whatever parent the caller
// names then, while viewers stay subscribed to the local hubs and resume
// at the next keyframe.
package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bluenviron/gortsplib/v5"
	"github.com/bluenviron/gortsplib/v5/pkg/base"
	"github.com/bluenviron/gortsplib/v5/pkg/description"
	"github.com/bluenviron/gortsplib/v5/pkg/format"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascade-cdn/cascade/media"
)

// RenditionAttr is the SDP attribute the origin names its rungs with (see
// origin/rtsp.RenditionAttr; edge code does not import origin code).
const RenditionAttr = "x-cascade-rendition"

// User is the RTSP user a relay reader presents, with the cluster secret.
const User = "cascade"

// Timings.
const (
	// linger keeps a rung's session after its last viewer left, so a
	// viewer bouncing between rungs does not reconnect each time.
	linger = 10 * time.Second
	// checkEvery is how often wanted rungs are started and stopped.
	checkEvery = 250 * time.Millisecond
	minBackoff = 500 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// Rung is one rendition as the parent describes it.
type Rung struct {
	Name          string
	Width, Height int
	Bitrate       int
	Hub           *media.Hub
}

// Parent names the RTSP base URL ("rtsp://host:port") to read from now.
type Parent func() (string, error)

// Metrics are the relay's counters, shared by every Pull of a node.
type Metrics struct {
	sessions *prometheus.GaugeVec   // kind: rung, audio
	bytes    prometheus.Counter     // payload bytes in
	errors   *prometheus.CounterVec // reason
	waiting  prometheus.Gauge       // sessions waiting to reconnect
	streams  *prometheus.GaugeVec   // state: active, idle
	garbage  prometheus.Counter     // packets refused
}

// NewMetrics registers the relay metrics.
func NewMetrics(pr prometheus.Registerer) *Metrics {
	m := &Metrics{
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cascade_relay_sessions", Help: "RTSP sessions pulling from a parent node, by kind (rung, audio)."}, []string{"kind"}),
		bytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_relay_bytes_in_total", Help: "RTP payload bytes pulled from parent nodes."}),
		errors:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_relay_errors_total", Help: "Relay sessions that failed or broke, by reason."}, []string{"reason"}),
	}
	m.waiting = prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_relay_reconnecting", Help: "Relay sessions waiting to reconnect to a parent (backoff) after a failure."})
	m.streams = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cascade_relay_streams", Help: "Streams relayed from a parent, by state (active: watched here or read by edges below; idle: nobody, dropped after relay.idle_timeout)."}, []string{"state"})
	m.garbage = prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_relay_bad_packets_total", Help: "Packets from a relay parent refused as malformed (not RTP, or not the media's payload type)."})
	m.streams.WithLabelValues("active")
	m.streams.WithLabelValues("idle")
	pr.MustRegister(m.sessions, m.bytes, m.errors, m.waiting, m.streams, m.garbage)
	return m
}

// SetStreams sets the relayed streams by state.
func (m *Metrics) SetStreams(active, idle int) {
	m.streams.WithLabelValues("active").Set(float64(active))
	m.streams.WithLabelValues("idle").Set(float64(idle))
}

// Pull relays one stream from a parent.
type Pull struct {
	stream string
	parent Parent
	secret string
	m      *Metrics
	log    *slog.Logger

	rungs []*rungFeed
	audio *media.Hub
	done  chan struct{}
	// lastGarbage rate-limits the log of refused packets (unix ns).
	lastGarbage atomic.Int64
	wg          sync.WaitGroup
	once        sync.Once
}

type rungFeed struct {
	Rung
	index int // of its media in the parent's description

	// Owned by the manager goroutine.
	running  chan struct{} // closed to stop the session; nil when stopped
	finished chan struct{}
	unwanted time.Time
}

// Start describes stream on the parent and starts relaying its audio; its
// video rungs start as viewers subscribe. It fails if the parent does not
// have the stream.
func Start(stream string, parent Parent, secret string, m *Metrics, log *slog.Logger) (*Pull, error) {
	p := &Pull{stream: stream, parent: parent, secret: secret, m: m, done: make(chan struct{}),
		log: log.With("component", "relay", "stream", stream)}
	desc, body, err := p.describe()
	if err != nil {
		return nil, err
	}
	attrs := renditionLines(body)
	audioIdx := -1
	vi := 0
	for i, md := range desc.Medias {
		switch md.Type {
		case description.MediaTypeVideo:
			codec := "H264"
			if _, ok := md.Formats[0].(*format.H265); ok {
				codec = "H265"
			}
			r := Rung{Name: fmt.Sprintf("rung%d", vi)}
			if vi < len(attrs) {
				r = attrs[vi]
			}
			r.Hub = media.NewHub(media.DefaultHubConfig(media.Video, codec, 90000))
			p.rungs = append(p.rungs, &rungFeed{Rung: r, index: i})
			vi++
		case description.MediaTypeAudio:
			if audioIdx < 0 {
				audioIdx = i
			}
		}
	}
	if len(p.rungs) == 0 {
		return nil, errors.New("relay: the parent offers no video")
	}
	p.audio = media.NewHub(media.DefaultHubConfig(media.Audio, "opus", 48000))
	if audioIdx >= 0 {
		p.wg.Add(1)
		go p.run("audio", audioIdx, p.audio, p.done, nil)
	}
	p.wg.Add(1)
	go p.manage()
	p.log.Info("relay started", "rungs", len(p.rungs))
	return p, nil
}

// Rungs returns the relayed renditions, best first.
func (p *Pull) Rungs() []Rung {
	out := make([]Rung, len(p.rungs))
	for i, r := range p.rungs {
		out[i] = r.Rung
	}
	return out
}

// Audio is the relayed audio's hub.
func (p *Pull) Audio() *media.Hub { return p.audio }

// Done is closed when the relay is closed.
func (p *Pull) Done() <-chan struct{} { return p.done }

// Pulled returns the names of the rungs being pulled now.
func (p *Pull) Pulled() []string {
	var out []string
	for _, r := range p.rungs {
		if r.Hub.Subscribers() > 0 {
			out = append(out, r.Name)
		}
	}
	return out
}

// Close stops every session and ends the local hubs (their viewers end).
func (p *Pull) Close() {
	p.once.Do(func() {
		close(p.done)
		p.wg.Wait()
		for _, r := range p.rungs {
			r.Hub.Close()
		}
		p.audio.Close()
		p.log.Info("relay stopped")
	})
}

// manage starts a rung's session when a viewer subscribes to its hub and
// stops it a while after the last one left.
func (p *Pull) manage() {
	defer p.wg.Done()
	t := time.NewTicker(checkEvery)
	defer t.Stop()
	defer func() {
		for _, r := range p.rungs {
			p.stopRung(r)
		}
	}()
	for {
		select {
		case <-p.done:
			return
		case now := <-t.C:
			for _, r := range p.rungs {
				// The relay's own feed is not a subscriber: viewers are.
				wanted := r.Hub.Subscribers() > 0
				switch {
				case wanted && r.running == nil:
					r.running, r.finished = make(chan struct{}), make(chan struct{})
					p.wg.Add(1)
					go p.run(r.Name, r.index, r.Hub, r.running, r.finished)
					r.unwanted = time.Time{}
				case wanted:
					r.unwanted = time.Time{}
				case r.running != nil && r.unwanted.IsZero():
					r.unwanted = now
				case r.running != nil && now.Sub(r.unwanted) > linger:
					p.stopRung(r)
				}
			}
		}
	}
}

func (p *Pull) stopRung(r *rungFeed) {
	if r.running != nil {
		close(r.running)
		<-r.finished
		r.running, r.finished = nil, nil
	}
}

// run keeps one media's session up until stop, reconnecting with backoff.
func (p *Pull) run(name string, index int, hub *media.Hub, stop <-chan struct{}, finished chan struct{}) {
	defer p.wg.Done()
	if finished != nil {
		defer close(finished)
	}
	kind := "rung"
	if name == "audio" {
		kind = "audio"
	}
	backoff := minBackoff
	for {
		began := time.Now()
		err := p.session(index, hub, stop, kind)
		select {
		case <-stop:
			return
		case <-p.done:
			return
		default:
		}
		p.m.errors.WithLabelValues(reason(err)).Inc()
		if time.Since(began) > maxBackoff {
			backoff = minBackoff
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		p.log.Warn("relay session broke; reconnecting", "media", name, "in", wait.Round(time.Millisecond), "err", err)
		p.m.waiting.Inc()
		select {
		case <-stop:
			p.m.waiting.Dec()
			return
		case <-p.done:
			p.m.waiting.Dec()
			return
		case <-time.After(wait):
		}
		p.m.waiting.Dec()
		backoff = min(backoff*2, maxBackoff)
	}
}

func reason(err error) string {
	switch {
	case err == nil:
		return "ended"
	case strings.Contains(err.Error(), "401"):
		return "auth"
	case strings.Contains(err.Error(), "404"):
		return "not_found"
	case strings.Contains(err.Error(), "layout"):
		return "layout"
	}
	return "network"
}

// url builds the stream's URL on the current parent, with credentials.
func (p *Pull) url() (*base.URL, error) {
	parent, err := p.parent()
	if err != nil {
		return nil, err
	}
	u, err := base.ParseURL(strings.TrimRight(parent, "/") + "/" + p.stream)
	if err != nil {
		return nil, err
	}
	if p.secret != "" {
		u.User = url.UserPassword(User, p.secret)
	}
	return u, nil
}

func (p *Pull) client(u *base.URL) *gortsplib.Client {
	tcp := gortsplib.ProtocolTCP // through firewalls, and no reordering
	return &gortsplib.Client{Scheme: u.Scheme, Host: u.Host, Protocol: &tcp, ReadTimeout: 5 * time.Second,
		// A parent that sends garbage: what does not decode (not RTP, an
		// unknown payload type) is dropped, counted and logged, rate-limited;
		// the session goes on. A frame over gortsplib's MaxPacketSize (1,472
		// bytes, more than any packet made for WebRTC) breaks the session,
		// which reconnects with backoff.
		OnDecodeError: func(err error) { p.refuse("decode", err) }}
}

// refuse counts a packet refused from the parent and logs the first one
// of each few seconds.
func (p *Pull) refuse(why string, err error) {
	p.m.garbage.Inc()
	now := time.Now().UnixNano()
	if last := p.lastGarbage.Load(); now-last > int64(5*time.Second) && p.lastGarbage.CompareAndSwap(last, now) {
		p.log.Warn("refusing bad packets from the relay parent", "why", why, "err", err)
	}
}

// describe fetches the stream's description from the parent.
func (p *Pull) describe() (*description.Session, []byte, error) {
	u, err := p.url()
	if err != nil {
		return nil, nil, err
	}
	c := p.client(u)
	if err := c.Start(); err != nil {
		return nil, nil, err
	}
	defer c.Close()
	desc, res, err := c.Describe(u)
	if err != nil {
		return nil, nil, err
	}
	return desc, res.Body, nil
}

// session reads one media until it breaks or stop. Each session is a new
// source of the hub: after a reconnect (perhaps to another parent, with
// other numbering) viewers continue the hub's numbering and resume at the
// next keyframe.
func (p *Pull) session(index int, hub *media.Hub, stop <-chan struct{}, kind string) error {
	u, err := p.url()
	if err != nil {
		return err
	}
	c := p.client(u)
	if err := c.Start(); err != nil {
		return err
	}
	defer c.Close()
	desc, _, err := c.Describe(u)
	if err != nil {
		return err
	}
	if index >= len(desc.Medias) {
		return errors.New("the parent's ladder layout changed")
	}
	md := desc.Medias[index]
	if _, err := c.Setup(desc.BaseURL, md, 0, 0); err != nil {
		return err
	}
	src := hub.NewSource()
	c.OnPacketRTP(md, md.Formats[0], func(pkt *rtp.Packet) {
		if len(pkt.Payload) == 0 {
			return
		}
		p.m.bytes.Add(float64(len(pkt.Payload)))
		// Within a session the parent's numbering goes through, gaps
		// (losses) included.
		src.Write(&media.Packet{SequenceNumber: pkt.SequenceNumber, Timestamp: pkt.Timestamp, Marker: pkt.Marker,
			Payload: append([]byte(nil), pkt.Payload...)})
	})
	if _, err := c.Play(nil); err != nil {
		return err
	}
	p.m.sessions.WithLabelValues(kind).Inc()
	defer p.m.sessions.WithLabelValues(kind).Dec()
	p.log.Debug("relay session playing", "media", index, "parent", u.Host)
	waited := make(chan error, 1)
	go func() { waited <- c.Wait() }()
	select {
	case err = <-waited:
	case <-stop:
		c.Close()
	case <-p.done:
		c.Close()
	}
	return err
}

// renditionLines reads the rung attributes of a DESCRIBE answer, in media
// order: "a=x-cascade-rendition:720p width=1280 height=720 bitrate=2500000".
func renditionLines(sdp []byte) []Rung {
	var out []Rung
	for l := range strings.SplitSeq(string(sdp), "\n") {
		l = strings.TrimSpace(l)
		v, ok := strings.CutPrefix(l, "a="+RenditionAttr+":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 || len(f[0]) > 64 {
			continue
		}
		r := Rung{Name: f[0]}
		for _, kv := range f[1:] {
			k, val, _ := strings.Cut(kv, "=")
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 || n > 1<<30 {
				continue
			}
			switch k {
			case "width":
				r.Width = n
			case "height":
				r.Height = n
			case "bitrate":
				r.Bitrate = n
			}
		}
		out = append(out, r)
		if len(out) == 32 {
			break
		}
	}
	return out
}
