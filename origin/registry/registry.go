// Package registry maps stream names to their hubs and owns the life of a
// stream: who publishes it, takeover by a new publisher, the watchdog that
// notices a silent publisher, and the grace period that keeps viewers
// attached while a publisher reconnects.
package registry

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascade-cdn/cascade/media"
)

// Config is the stream lifecycle configuration (config key "streams").
type Config struct {
	// GracePeriod keeps a stream and its viewers after its publisher left,
	// so a publisher that reconnects keeps them.
	GracePeriod time.Duration `yaml:"grace_period"`
	// SilenceTimeout marks a publisher gone when no media arrived for this long.
	SilenceTimeout time.Duration `yaml:"silence_timeout"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{GracePeriod: 10 * time.Second, SilenceTimeout: 5 * time.Second}
}

// Publisher is the registry's view of a stream's source.
type Publisher interface {
	// Source names the ingest protocol: "whip", "rtsp-publish", "rtsp-pull".
	Source() string
	// VideoCodec is the RTP encoding name of the video it writes to the
	// stream's video hub: "H264" or "H265".
	VideoCodec() string
	// Close ends the publisher; it must call Registry.Unpublish (directly
	// or later) and must not block on the registry's lock.
	Close() error
}

// Stream is one live stream: its hubs outlive any one publisher.
type Stream struct {
	Name  string
	Video *media.Hub
	Audio *media.Hub

	lastMedia atomic.Int64 // unix nanos of the last packet from the publisher
	viewers   atomic.Int64
	bitrate   atomic.Int64 // video bits per second, over the last second

	// Owned by the registry's watchdog.
	rateBytes uint64
	rateAt    time.Time

	mu         sync.Mutex
	publisher  Publisher
	since      time.Time
	graceEnd   time.Time // zero while published
	holds      int       // Hold calls not yet released: the stream outlives its grace
	held       string    // the source kind of the last holder, for the API
	width      int
	height     int
	renditions []Rendition
}

// Rendition is a transcoded rung of a stream, served from its own hub.
type Rendition struct {
	Name          string
	Width, Height int
	Bitrate       int
	// Passthrough is set on "source" while it is the publisher's own stream.
	Passthrough bool
	Hub         *media.Hub
}

// SetRenditions replaces the stream's transcoded rungs (the transcoder
// calls it when it plans or re-plans the ladder).
func (s *Stream) SetRenditions(rs []Rendition) {
	s.mu.Lock()
	s.renditions = rs
	s.mu.Unlock()
}

// Renditions returns the stream's transcoded rungs, highest first.
func (s *Stream) Renditions() []Rendition {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.renditions
}

// Touch records that media arrived from the publisher. Cheap enough for
// every packet.
func (s *Stream) Touch() { s.lastMedia.Store(time.Now().UnixNano()) }

// AddViewers changes the viewer count by n.
func (s *Stream) AddViewers(n int64) { s.viewers.Add(n) }

// SetVideoSize records the source picture size (from its SPS).
func (s *Stream) SetVideoSize(w, h int) {
	s.mu.Lock()
	s.width, s.height = w, h
	s.mu.Unlock()
}

// VideoBitrate is the source video bit rate over the last second.
func (s *Stream) VideoBitrate() int64 { return s.bitrate.Load() }

// measure updates the bit rate; the watchdog calls it.
func (s *Stream) measure(now time.Time) {
	b := s.Video.Stats().Bytes
	if dt := now.Sub(s.rateAt); dt >= time.Second {
		if !s.rateAt.IsZero() {
			s.bitrate.Store(int64(float64(b-s.rateBytes) * 8 / dt.Seconds()))
		}
		s.rateBytes, s.rateAt = b, now
	}
}

// Info is a snapshot of a stream for the API.
type Info struct {
	Name          string
	Source        string // "" while no publisher is connected
	Since         time.Time
	Width, Height int
	Viewers       int64
	Video, Audio  media.HubStats
}

// Info returns a snapshot.
func (s *Stream) Info() Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := Info{Name: s.Name, Since: s.since, Width: s.width, Height: s.height,
		Viewers: s.viewers.Load(), Video: s.Video.Stats(), Audio: s.Audio.Stats()}
	switch {
	case s.publisher != nil:
		i.Source = s.publisher.Source()
	case s.holds > 0:
		i.Source = s.held // reconnecting
	}
	return i
}

// VideoCodec is the RTP encoding name of the stream's video hub.
func (s *Stream) VideoCodec() string { return s.Video.Config().Codec }

// Registry holds every stream of this node. Its methods are safe for
// concurrent use; none blocks on network I/O.
type Registry struct {
	cfg Config
	log *slog.Logger

	streams    prometheus.Gauge
	publishers prometheus.Gauge
	takeovers  prometheus.Counter
	silent     prometheus.Counter

	onEnd   atomic.Pointer[func(string)]
	onStart atomic.Pointer[func(*Stream)]

	mu      sync.Mutex
	byName  map[string]*Stream
	closed  bool
	stop    chan struct{}
	stopped chan struct{}
}

// New starts a registry and its watchdog.
func New(cfg Config, reg prometheus.Registerer, log *slog.Logger) *Registry {
	r := &Registry{
		cfg: cfg, log: log.With("component", "registry"),
		byName: map[string]*Stream{}, stop: make(chan struct{}), stopped: make(chan struct{}),
		streams:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_streams", Help: "Streams on this node, published or in their grace period."}),
		publishers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_publishers", Help: "Connected publishers."}),
		takeovers:  prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_publisher_takeovers_total", Help: "Publishes that replaced a live publisher."}),
		silent:     prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_publisher_silent_total", Help: "Publishers dropped for sending no media."}),
	}
	reg.MustRegister(r.streams, r.publishers, r.takeovers, r.silent)
	go r.watch()
	return r
}

// Publish makes p the publisher of name, creating the stream or taking it
// over from its current publisher (which is closed; viewers stay).
//
// A publisher whose video codec differs from the stream's (an H.265 camera
// taking over from an H.264 WHIP publisher) cannot continue its hubs: the
// old stream ends, its viewers are closed (players reconnect), and a new
// stream starts.
func (r *Registry) Publish(name string, p Publisher) *Stream {
	r.mu.Lock()
	s, created, replaced := r.lookupOrCreate(name, p.VideoCodec())
	s.mu.Lock()
	old := s.publisher
	s.publisher, s.since, s.graceEnd = p, time.Now(), time.Time{}
	s.Touch()
	s.mu.Unlock()
	r.mu.Unlock()

	if replaced != nil {
		r.log.Warn("video codec changed: ending the stream so viewers reconnect", "stream", name,
			"from", replaced.VideoCodec(), "to", p.VideoCodec())
		replaced.mu.Lock()
		rp := replaced.publisher
		replaced.publisher, replaced.holds = nil, 0
		replaced.mu.Unlock()
		if rp != nil {
			r.publishers.Dec()
			rp.Close()
		}
		r.end(replaced)
	}
	if fn := r.onStart.Load(); created && fn != nil {
		(*fn)(s)
	}
	if old != nil {
		r.takeovers.Inc()
		r.log.Info("publisher taken over", "stream", name, "source", p.Source())
		// Viewers stay: the new publisher takes the hubs with NewSource,
		// which revokes the old one's writes and renumbers the new source to
		// follow it; video resumes at its first keyframe.
		old.Close()
	} else {
		r.publishers.Inc()
		r.log.Info("stream published", "stream", name, "source", p.Source())
	}
	return s
}

// lookupOrCreate returns the stream called name with a video hub of codec,
// creating it if needed. A stream of another codec is unlinked and returned
// as replaced, for the caller to end. r.mu must be held.
func (r *Registry) lookupOrCreate(name, codec string) (s *Stream, created bool, replaced *Stream) {
	s = r.byName[name]
	if s != nil && s.VideoCodec() == codec {
		return s, false, nil
	}
	if s != nil {
		replaced = s
		r.streams.Dec()
	}
	s = &Stream{
		Name:  name,
		Video: media.NewHub(media.DefaultHubConfig(media.Video, codec, 90000)),
		Audio: media.NewHub(media.DefaultHubConfig(media.Audio, "opus", 48000)),
	}
	r.byName[name] = s
	r.streams.Inc()
	return s, true, replaced
}

// Hold keeps s from ending while its publisher is away, until release is
// called: a pull source holds its stream for as long as it keeps
// reconnecting to its camera, so viewers stay attached however long that
// takes. kind names the holder for the API ("rtsp-pull").
func (r *Registry) Hold(s *Stream, kind string) (release func()) {
	s.mu.Lock()
	s.holds++
	s.held = kind
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.holds--
			if s.holds == 0 && s.publisher == nil {
				s.graceEnd = time.Now().Add(r.cfg.GracePeriod)
			}
			s.mu.Unlock()
		})
	}
}

// Unpublish records that p left s. If p is still its publisher, the stream
// enters its grace period. It is a no-op for a publisher already replaced.
func (r *Registry) Unpublish(s *Stream, p Publisher) {
	s.mu.Lock()
	if s.publisher != p {
		s.mu.Unlock()
		return
	}
	s.publisher = nil
	s.graceEnd = time.Now().Add(r.cfg.GracePeriod)
	s.mu.Unlock()
	r.publishers.Dec()
	r.log.Info("publisher left; grace period", "stream", s.Name, "grace", r.cfg.GracePeriod)
}

// Get returns the stream called name, or nil.
func (r *Registry) Get(name string) *Stream {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byName[name]
}

// List returns every stream.
func (r *Registry) List() []*Stream {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Stream, 0, len(r.byName))
	for _, s := range r.byName {
		out = append(out, s)
	}
	return out
}

// watch closes silent publishers and ends streams whose grace ran out.
func (r *Registry) watch() {
	defer close(r.stopped)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case now := <-tick.C:
			r.sweep(now)
		}
	}
}

func (r *Registry) sweep(now time.Time) {
	var silent []Publisher
	var ended []*Stream
	r.mu.Lock()
	for name, s := range r.byName {
		s.measure(now)
		s.mu.Lock()
		switch {
		case s.publisher != nil && now.Sub(time.Unix(0, s.lastMedia.Load())) > r.cfg.SilenceTimeout:
			silent = append(silent, s.publisher)
		case s.publisher == nil && s.holds == 0 && !s.graceEnd.IsZero() && now.After(s.graceEnd):
			delete(r.byName, name)
			ended = append(ended, s)
		}
		s.mu.Unlock()
	}
	r.mu.Unlock()
	for _, p := range silent {
		r.silent.Inc()
		r.log.Warn("publisher silent; closing it", "source", p.Source(), "timeout", r.cfg.SilenceTimeout)
		p.Close()
	}
	for _, s := range ended {
		r.end(s)
	}
}

func (r *Registry) end(s *Stream) {
	r.streams.Dec()
	r.log.Info("stream ended", "stream", s.Name)
	s.Video.Close()
	s.Audio.Close()
	if fn := r.onEnd.Load(); fn != nil {
		(*fn)(s.Name)
	}
}

// OnStart sets a function called with each stream as it is created (before
// its first packet), so a transcoder can attach to it. It must not block.
func (r *Registry) OnStart(fn func(*Stream)) { r.onStart.Store(&fn) }

// OnEnd sets a function called with the name of each stream that ends, so
// per-stream metrics can be forgotten. It must not block.
func (r *Registry) OnEnd(fn func(name string)) { r.onEnd.Store(&fn) }

// Close stops the watchdog, closes every publisher and ends every stream.
// Idempotent.
func (r *Registry) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	close(r.stop)
	r.mu.Unlock()
	<-r.stopped

	for _, s := range r.List() {
		s.mu.Lock()
		p := s.publisher
		s.mu.Unlock()
		if p != nil {
			p.Close()
		}
	}
	r.mu.Lock()
	all := r.byName
	r.byName = map[string]*Stream{}
	r.mu.Unlock()
	for _, s := range all {
		r.end(s)
	}
}
