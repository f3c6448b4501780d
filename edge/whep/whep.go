// Package whep is WHEP playback: the endpoint that turns a viewer's offer
// into a pion session fed by a stream's hubs, with one writer goroutine per
// viewer, NACKs answered from the track's shared retransmission buffer and
// keyframe requests coalesced per stream.
package whep

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/peer"
	"github.com/cascade-cdn/cascade/wish"
)

// Source is what a viewer plays: a stream's hubs.
type Source struct {
	Video, Audio *media.Hub
	// AddViewers, if set, is told of each viewer that joins (+1) and leaves (-1).
	AddViewers func(int64)
	// Rendition, if set, finds a transcoded rung's hub by name; it also
	// returns every name the stream has, for the error a client gets.
	Rendition func(name string) (*media.Hub, []string)
}

// Streams finds the stream a viewer asks for. Lookup must not block.
type Streams interface {
	Lookup(name string) (Source, bool)
}

// Endpoint accepts WHEP viewers.
type Endpoint struct {
	eng     *peer.Engine
	streams Streams
	log     *slog.Logger
	m       *metrics
}

type metrics struct {
	viewers     prometheus.Gauge
	packets     *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	drops       *prometheus.CounterVec
	nacks       *prometheus.CounterVec
	retransmits *prometheus.CounterVec
	plis        *prometheus.CounterVec
}

// New returns a WHEP endpoint serving streams.
func New(eng *peer.Engine, streams Streams, pr prometheus.Registerer, log *slog.Logger) *Endpoint {
	sk := []string{"stream", "kind"}
	m := &metrics{
		viewers:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_viewers", Help: "Connected WHEP viewers."}),
		packets:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_egress_packets_total", Help: "RTP packets sent to viewers."}, sk),
		bytes:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_egress_bytes_total", Help: "RTP payload bytes sent to viewers."}, sk),
		drops:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_viewer_queue_drops_total", Help: "Packets dropped because a viewer's queue was full."}, sk),
		nacks:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_viewer_nacks_total", Help: "Sequence numbers viewers asked to be retransmitted."}, []string{"stream"}),
		retransmits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_viewer_retransmits_total", Help: "Packets retransmitted from the shared buffer."}, []string{"stream"}),
		plis:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_viewer_plis_total", Help: "Keyframe requests (PLI/FIR) from viewers, before coalescing."}, []string{"stream"}),
	}
	pr.MustRegister(m.viewers, m.packets, m.bytes, m.drops, m.nacks, m.retransmits, m.plis)
	return &Endpoint{eng: eng, streams: streams, log: log.With("component", "whep"), m: m}
}

// Forget drops the per-stream metrics of an ended stream.
func (e *Endpoint) Forget(stream string) {
	l := prometheus.Labels{"stream": stream}
	for _, v := range []*prometheus.CounterVec{e.m.packets, e.m.bytes, e.m.drops, e.m.nacks, e.m.retransmits, e.m.plis} {
		v.DeletePartialMatch(l)
	}
}

// checkOffer finds which kinds the viewer can receive.
func checkOffer(offer string) (video, audio bool, err error) {
	ms, err := wish.InspectOffer(offer)
	if err != nil {
		return false, false, err
	}
	if wish.Count(ms, "video") > 1 || wish.Count(ms, "audio") > 1 {
		return false, false, wish.Errorf(422, "no_codec", "one video and one audio section at most")
	}
	for _, m := range ms {
		switch m.Kind {
		case "video":
			if !m.HasFmtp("H264", "packetization-mode=1", "profile-level-id=42e0") {
				return false, false, wish.Errorf(422, "no_codec", "video must accept H264 42e01f with packetization-mode=1")
			}
			video = true
		case "audio":
			if !m.Has("OPUS") {
				return false, false, wish.Errorf(422, "no_codec", "audio must accept Opus")
			}
			audio = true
		}
	}
	if !video && !audio {
		return false, false, wish.ErrNoCodec
	}
	return video, audio, nil
}

// Offer implements wish.Endpoint.
func (e *Endpoint) Offer(ctx context.Context, o wish.Offer) (wish.Session, string, error) {
	src, ok := e.streams.Lookup(o.Stream)
	if !ok {
		return nil, "", wish.ErrNotFound
	}
	wantVideo, wantAudio, err := checkOffer(o.SDP)
	if err != nil {
		return nil, "", err
	}
	// ?rendition=NAME pins the viewer to a rung; without it (or "auto",
	// until per-viewer ABR exists) the viewer gets the source.
	if name := o.Query.Get("rendition"); name != "" && name != "auto" && name != "source" {
		var hub *media.Hub
		var names []string
		if src.Rendition != nil {
			hub, names = src.Rendition(name)
		}
		if hub == nil {
			return nil, "", wish.Errorf(404, "unknown_rendition", "no rendition %.40q; this stream has: %s", name, strings.Join(names, ", "))
		}
		src.Video = hub
	}
	pc, err := e.eng.Viewer().NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, "", err
	}
	s := &session{
		e: e, pc: pc, stream: o.Stream, src: src, done: make(chan struct{}), heard: make(chan struct{}), started: time.Now(),
		ended: o.Ended,
		log:   e.log.With("stream", o.Stream, "remote", o.Remote),
	}
	if wantVideo && src.Video != nil {
		if s.video, err = s.addTrack(webrtc.RTPCodecTypeVideo, src.Video, peer.ViewerH264()); err != nil {
			s.abort()
			return nil, "", err
		}
	}
	if wantAudio && src.Audio != nil {
		if s.audio, err = s.addTrack(webrtc.RTPCodecTypeAudio, src.Audio, peer.ViewerOpus()); err != nil {
			s.abort()
			return nil, "", err
		}
	}
	answer, err := peer.Answer(ctx, pc, o.SDP)
	if err != nil {
		s.abort()
		return nil, "", wish.Errorf(400, "bad_sdp", "cannot answer offer: %v", err)
	}
	s.ICE = peer.NewICE(pc, o.SDP)
	// Subscribe last: from here on the hubs queue packets for this viewer.
	for _, out := range []*output{s.video, s.audio} {
		if out != nil {
			if out.sub = out.hub.Subscribe(); out.sub == nil {
				s.abort()
				return nil, "", wish.ErrNotFound // the stream ended meanwhile
			}
		}
	}
	// Only now: an abort above closes pc, and that must not run Close.
	pc.OnConnectionStateChange(s.onState)
	e.m.viewers.Inc()
	if src.AddViewers != nil {
		src.AddViewers(1)
	}
	s.wg.Add(1)
	go s.write()
	s.log.Info("viewer connected")
	return s, answer, nil
}

// output is one track of one viewer.
type output struct {
	kind  string
	hub   *media.Hub
	sub   *media.Subscriber
	track *localTrack

	// Owned by the writer goroutine.
	hdr     rtp.Header
	off     uint16 // viewer seq = hub seq + off
	lastOut uint16
	begun   bool
	dropped uint64

	// offsets publishes off to the RTCP reader, which maps NACKed viewer
	// sequence numbers back to hub ones: current offset | previous
	// offset<<16 | first viewer seq of the current offset<<32. Written only
	// when off changes.
	offsets atomic.Uint64

	packets, bytes, drops prometheus.Counter
}

func (s *session) addTrack(kind webrtc.RTPCodecType, hub *media.Hub, codec webrtc.RTPCodecCapability) (*output, error) {
	o := &output{kind: kind.String(), hub: hub, track: newLocalTrack(kind, codec)}
	sender, err := s.pc.AddTrack(o.track)
	if err != nil {
		return nil, err
	}
	m := s.e.m
	o.packets = m.packets.WithLabelValues(s.stream, o.kind)
	o.bytes = m.bytes.WithLabelValues(s.stream, o.kind)
	o.drops = m.drops.WithLabelValues(s.stream, o.kind)
	s.wg.Add(1) // Offer's goroutine: nothing can Wait before it returns
	go s.readRTCP(sender, o)
	return o, nil
}

// send writes one packet, closing gaps the hub made on purpose so the
// viewer's sequence numbers stay continuous.
func (o *output) send(e media.Entry) error {
	p := e.Packet
	if !o.begun || e.Resync {
		next := o.lastOut + 1
		off := next - p.SequenceNumber
		if !o.begun {
			off, next = 0, p.SequenceNumber
		}
		o.offsets.Store(uint64(off) | uint64(o.off)<<16 | uint64(next)<<32)
		o.off, o.begun = off, true
	}
	seq := p.SequenceNumber + o.off
	o.hdr = rtp.Header{Version: 2, Marker: p.Marker, SequenceNumber: seq, Timestamp: p.Timestamp}
	o.lastOut = seq
	o.packets.Inc()
	o.bytes.Add(float64(len(p.Payload)))
	return o.track.write(&o.hdr, p.Payload)
}

// hubSeq maps a viewer sequence number back to the hub's.
func (o *output) hubSeq(viewer uint16) uint16 {
	v := o.offsets.Load()
	cur, prev, since := uint16(v), uint16(v>>16), uint16(v>>32)
	if int16(viewer-since) < 0 {
		return viewer - prev
	}
	return viewer - cur
}

// session is one WHEP viewer.
type session struct {
	e       *Endpoint
	pc      *webrtc.PeerConnection
	stream  string
	src     Source
	log     *slog.Logger
	video   *output
	audio   *output
	started time.Time

	heard     chan struct{} // closed at the first RTCP from the viewer
	heardOnce sync.Once
	*peer.ICE // trickle and ICE restart (wish.Session)
	connected atomic.Bool
	lastRTCP  atomic.Int64
	done      chan struct{}
	closeOnce sync.Once
	ended     func() // tells the resource table; may be nil
	wg        sync.WaitGroup
}

func (s *session) onState(st webrtc.PeerConnectionState) {
	switch st {
	case webrtc.PeerConnectionStateConnected:
		s.lastRTCP.Store(time.Now().UnixNano())
		s.connected.Store(true)
	case webrtc.PeerConnectionStateFailed, webrtc.PeerConnectionStateClosed:
		go s.Close()
	}
}

// listenWait is the longest a new viewer's first packets wait for the
// viewer's first RTCP after DTLS completes.
const listenWait = 500 * time.Millisecond

// maxRetransmitsPerReport bounds the work one NACK can cause.
const maxRetransmitsPerReport = 256

// readRTCP reads a sender's RTCP: NACKs are answered from the hub's shared
// buffer, PLIs become one coalesced keyframe request per stream.
func (s *session) readRTCP(sender *webrtc.RTPSender, o *output) {
	defer s.wg.Done()
	var hdr rtp.Header
	nacks := s.e.m.nacks.WithLabelValues(s.stream)
	rtx := s.e.m.retransmits.WithLabelValues(s.stream)
	plis := s.e.m.plis.WithLabelValues(s.stream)
	for {
		pkts, _, err := sender.ReadRTCP()
		if err != nil {
			return
		}
		s.lastRTCP.Store(time.Now().UnixNano())
		s.heardOnce.Do(func() { close(s.heard) })
		budget := maxRetransmitsPerReport
		for _, p := range pkts {
			switch p := p.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				plis.Inc()
				o.hub.RequestKeyframe()
			case *rtcp.TransportLayerNack:
				for _, pair := range p.Nacks {
					for _, seq := range pair.PacketList() {
						nacks.Inc()
						if budget == 0 {
							continue
						}
						budget--
						if pkt := o.hub.Retransmit(o.hubSeq(seq)); pkt != nil {
							hdr = rtp.Header{Version: 2, Marker: pkt.Marker, SequenceNumber: seq, Timestamp: pkt.Timestamp}
							if o.track.write(&hdr, pkt.Payload) == nil {
								rtx.Inc()
							}
						}
					}
				}
			}
		}
	}
}

// write is the viewer's one writer: it drains both subscriptions, and once
// a second checks the session's timers and drop counters.
func (s *session) write() {
	defer s.wg.Done()
	var vWake, aWake, vDone, aDone <-chan struct{}
	if s.video != nil {
		vWake, vDone = s.video.sub.Wake(), s.video.sub.Done()
	}
	if s.audio != nil {
		aWake, aDone = s.audio.sub.Wake(), s.audio.sub.Done()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	// pion binds tracks once DTLS is up; until then the hubs queue for us,
	// so the cached GOP that starts this viewer on a keyframe is not lost.
	for _, o := range []*output{s.video, s.audio} {
		if o == nil {
			continue
		}
		for bound := false; !bound; {
			select {
			case <-s.done:
				return
			case <-o.track.bound:
				bound = true
			case now := <-tick.C:
				if reason := s.expired(now); reason != "" {
					s.log.Warn("closing viewer", "reason", reason)
					go s.Close()
					return
				}
			}
		}
	}
	// DTLS being done on our side does not mean the peer's SRTP receivers
	// are up: pion peers start them a moment later and drop what arrives
	// before. The cached GOP is what makes the first frame decodable, so
	// hold it until the peer's first RTCP proves it is listening (or a
	// short while, for peers that are slow to send any).
	select {
	case <-s.done:
		return
	case <-s.heard:
	case <-time.After(listenWait):
	}
	batch := make([]media.Entry, 0, 64)
	for {
		var o *output
		select {
		case <-s.done:
			return
		case <-vDone:
			s.log.Info("stream ended")
			go s.Close()
			return
		case <-aDone:
			go s.Close()
			return
		case <-vWake:
			o = s.video
		case <-aWake:
			o = s.audio
		case now := <-tick.C:
			if reason := s.expired(now); reason != "" {
				s.log.Warn("closing viewer", "reason", reason)
				go s.Close()
				return
			}
			continue
		}
		batch = o.sub.Pop(batch[:0])
		for _, e := range batch {
			if err := o.send(e); err != nil {
				// The transport is closed; onState ends the session.
				break
			}
		}
		clear(batch)
	}
}

// expired applies the zombie timers and reports drops, at most once a second.
func (s *session) expired(now time.Time) string {
	cfg := s.e.eng.Config()
	if !s.connected.Load() {
		if now.Sub(s.started) > cfg.HandshakeTimeout {
			return "handshake timeout"
		}
		return ""
	}
	if now.Sub(time.Unix(0, s.lastRTCP.Load())) > cfg.ICEFailedTimeout {
		return "no RTCP from viewer"
	}
	for _, o := range []*output{s.video, s.audio} {
		if o == nil {
			continue
		}
		if d := o.sub.Dropped(); d > o.dropped {
			o.drops.Add(float64(d - o.dropped))
			s.log.Warn("viewer too slow; dropped packets", "kind", o.kind, "dropped", d-o.dropped)
			o.dropped = d
		}
	}
	return ""
}

// abort undoes a half-built session.
func (s *session) abort() {
	s.pc.Close()
	for _, o := range []*output{s.video, s.audio} {
		if o != nil && o.sub != nil {
			o.sub.Close()
		}
	}
	s.wg.Wait()
}

// Close ends the viewer at once. Idempotent; safe from any goroutine but
// the session's own (they use go s.Close()).
func (s *session) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.pc.Close()
		for _, o := range []*output{s.video, s.audio} {
			if o != nil {
				o.sub.Close()
			}
		}
		s.e.m.viewers.Dec()
		if s.src.AddViewers != nil {
			s.src.AddViewers(-1)
		}
		if s.ended != nil {
			s.ended()
		}
		s.log.Info("viewer closed")
	})
	s.wg.Wait()
	return nil
}
