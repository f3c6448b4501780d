// Package whep is WHEP playback: the endpoint that turns a viewer's offer
// into a session fed by a stream's hubs over the viewer's own transport
// (peer/lite), with one writer goroutine per viewer, NACKs answered from
// the track's shared retransmission buffer and keyframe requests coalesced
// per stream.
package whep

import (
	"context"
	"encoding/binary"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/peer"
	"github.com/cascade-cdn/cascade/peer/lite"
	"github.com/cascade-cdn/cascade/wish"
)

// Source is what a viewer plays: a stream's hubs.
type Source struct {
	// Video is the source rendition's hub, used when there is no Ladder.
	Video, Audio *media.Hub
	// AddViewers, if set, is told of each viewer that joins (+1) and leaves (-1).
	AddViewers func(int64)
	// Ladder, if set, returns the stream's renditions now, best first (the
	// ladder changes when the transcoder re-plans it).
	Ladder func() []Rendition
}

// Rendition is one rung a viewer may be sent.
type Rendition struct {
	Name          string
	Width, Height int
	Bitrate       int // bit/s; 0 if not known yet
	Hub           *media.Hub
}

// ladder returns the source's renditions, or its one source rendition.
func (src Source) ladder() []Rendition {
	if src.Ladder != nil {
		if rs := src.Ladder(); len(rs) > 0 {
			return rs
		}
	}
	if src.Video == nil {
		return nil
	}
	return []Rendition{{Name: "source", Hub: src.Video}}
}

// Streams finds the stream a viewer asks for. Lookup may wait a few
// seconds (an on-demand camera starting) but no longer.
type Streams interface {
	Lookup(name string) (Source, bool)
}

// Endpoint accepts WHEP viewers.
type Endpoint struct {
	eng     *peer.Engine
	streams Streams
	log     *slog.Logger
	m       *metrics
	place   atomic.Pointer[func(wish.Offer) error]
	// egress counts the media bytes sent to viewers (RTP payload, repairs
	// included), for the load a clustered node gossips: one atomic add per
	// packet, where the per-stream Prometheus series would need a Gather.
	egress atomic.Uint64
}

// EgressBytes returns the RTP payload bytes sent to viewers so far.
func (e *Endpoint) EgressBytes() uint64 { return e.egress.Load() }

// countingCounter is a viewer's bytes series that also adds to the
// endpoint's total.
type countingCounter struct {
	prometheus.Counter
	total *atomic.Uint64
}

func (c countingCounter) Add(v float64) {
	c.Counter.Add(v)
	c.total.Add(uint64(v))
}

// SetPlacement sets a check run first on every offer: it may answer with a
// redirect to another node (wish.Redirect) or a refusal.
func (e *Endpoint) SetPlacement(fn func(wish.Offer) error) { e.place.Store(&fn) }

type metrics struct {
	rungViewers   *prometheus.GaugeVec
	switches      *prometheus.CounterVec
	keyAsks       *prometheus.CounterVec
	estimate      prometheus.Histogram
	rtt           prometheus.Histogram
	probes        *prometheus.CounterVec
	probeEnds     *prometheus.CounterVec
	firstFrame    prometheus.Histogram
	pausedSeconds prometheus.Counter
	audioOnly     prometheus.Counter
	eventsDropped prometheus.Counter
	badRTCP       prometheus.Counter
	refused       *prometheus.CounterVec

	viewers     prometheus.Gauge
	packets     *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	drops       *prometheus.CounterVec
	nacks       *prometheus.CounterVec
	retransmits *prometheus.CounterVec
	fills       *prometheus.CounterVec
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
		fills: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_viewer_nack_fills_total",
			Help: "NACKed numbers answered with a one-byte padding packet instead of a resend: lost probe padding (padding), or media of a rung the viewer had left (rung_left)."}, []string{"stream", "reason"}),
		plis: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_viewer_plis_total", Help: "Keyframe requests (PLI/FIR) from viewers, before coalescing."}, []string{"stream"}),
	}
	m.rungViewers = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cascade_viewer_rendition", Help: "Viewers on each rendition now."}, []string{"stream", "rendition"})
	m.switches = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_abr_switches_total", Help: "Rendition switches completed, by direction and reason."}, []string{"direction", "reason"})
	m.keyAsks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_abr_keyframe_asks_total",
		Help: "Early keyframes switches asked the source for, by direction (down, resume, or up when the rung's next keyframe was more than 250 ms off), before the hub's coalescing."}, []string{"direction"})
	m.estimate = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cascade_abr_estimate_bps", Help: "Viewers' usable bandwidth estimates, sampled once a second per viewer.",
		Buckets: prometheus.ExponentialBuckets(100e3, 2, 10)})
	m.rtt = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cascade_viewer_rtt_seconds", Help: "Viewers' round-trip times, from their receiver reports (about one a second per viewer).",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 10)})
	m.probes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_abr_probes_total", Help: "Bandwidth probes before climbing, by outcome."}, []string{"outcome"})
	m.probeEnds = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_abr_probe_ends_total",
		Help: "Bandwidth probes by how they ended: ok, gcc-fall, gcc-leap, saturated, loss, short (below the bar by its end) or cancelled."}, []string{"how"})
	m.firstFrame = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cascade_viewer_first_frame_seconds", Help: "Time from a viewer's WHEP POST to its first video packet sent.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 8)})
	m.pausedSeconds = prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_abr_video_paused_seconds_total", Help: "Viewer-seconds of video paused (audio only) for lack of bandwidth."})
	m.audioOnly = prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_abr_audio_only_total", Help: "Times a viewer's video was paused for lack of bandwidth."})
	m.eventsDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_viewer_events_dropped_total", Help: "Session events not delivered because the player's stream was full."})
	m.badRTCP = prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_viewer_bad_rtcp_total", Help: "Malformed RTCP from viewers, and transport-wide feedback the bandwidth estimator refused (malformed, or over its per-read budget), dropped."})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_viewer_refused_packets_total",
		Help: "Packets from viewers refused before use: failed authentication or format (unauthenticated), or over the per-viewer rate limit (rate_limited)."}, []string{"reason"})
	pr.MustRegister(m.badRTCP, m.refused)
	pr.MustRegister(m.viewers, m.packets, m.bytes, m.drops, m.nacks, m.retransmits, m.fills, m.plis,
		m.rungViewers, m.switches, m.keyAsks, m.estimate, m.rtt, m.probes, m.probeEnds, m.firstFrame, m.pausedSeconds, m.audioOnly, m.eventsDropped)
	return &Endpoint{eng: eng, streams: streams, log: log.With("component", "whep"), m: m}
}

// Forget drops the per-stream metrics of an ended stream.
func (e *Endpoint) Forget(stream string) {
	l := prometheus.Labels{"stream": stream}
	for _, v := range []*prometheus.CounterVec{e.m.packets, e.m.bytes, e.m.drops, e.m.nacks, e.m.retransmits, e.m.fills, e.m.plis} {
		v.DeletePartialMatch(l)
	}
	e.m.rungViewers.DeletePartialMatch(l)
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
	if fn := e.place.Load(); fn != nil {
		if err := (*fn)(o); err != nil {
			return nil, "", err
		}
	}
	src, ok := e.streams.Lookup(o.Stream)
	if !ok {
		return nil, "", wish.ErrNotFound
	}
	wantVideo, wantAudio, err := checkOffer(o.SDP)
	if err != nil {
		return nil, "", err
	}
	lim, err := limits(o.Query)
	if err != nil {
		return nil, "", err
	}
	ladder := src.ladder()
	if lim.Pin != "" && lim.Pin != "auto" && rendition(ladder, lim.Pin) == nil {
		return nil, "", wish.Errorf(404, "unknown_rendition", "no rendition %.40q; this stream has: %s", lim.Pin, strings.Join(names(ladder), ", "))
	}
	t, answer, err := lite.New(e.eng, lite.Params{Offer: o.SDP, Video: wantVideo && len(ladder) > 0, Audio: wantAudio && src.Audio != nil,
		Log: e.log.With("stream", o.Stream, "remote", o.Remote)})
	if err != nil {
		return nil, "", err
	}
	s := &session{
		e: e, t: t, stream: o.Stream, src: src, done: make(chan struct{}), heard: make(chan struct{}), started: time.Now(),
		wake:  make(chan struct{}, 1),
		ended: o.Ended, evSubs: map[chan wish.Event]struct{}{},
		log: e.log.With("stream", o.Stream, "remote", o.Remote),
		rc: rtcpCounters{nacks: e.m.nacks.WithLabelValues(o.Stream), retransmits: e.m.retransmits.WithLabelValues(o.Stream),
			plis: e.m.plis.WithLabelValues(o.Stream), fills: [...]prometheus.Counter{
				fillPadding: e.m.fills.WithLabelValues(o.Stream, "padding"), fillLeft: e.m.fills.WithLabelValues(o.Stream, "rung_left")}},
	}
	if b := t.BWE(); b != nil {
		s.bwe = b
		// Set before any media flows; the controller is made just below.
		b.OnDelivered(func(now time.Time, d peer.Delivery) {
			if c := s.abr.ctl; c != nil {
				c.OnDelivered(now, d.Bytes, d.Packets)
				c.OnReceived(now, d.RecvWire, d.RecvSpan)
			}
		})
	}
	if tr := t.Video(); tr != nil {
		first, err := s.startABR(ladder, lim)
		if err != nil {
			s.abort()
			return nil, "", err
		}
		s.video = s.newOutput(tr, first.Hub)
		s.video.name = first.Name
	}
	if tr := t.Audio(); tr != nil {
		s.audio = s.newOutput(tr, src.Audio)
	}
	// Subscribe last: from here on the hubs queue packets for this viewer.
	for _, out := range []*output{s.video, s.audio} {
		if out != nil {
			if out.sub = out.hub.SubscribeWith(s.wake, false); out.sub == nil {
				s.abort()
				return nil, "", wish.ErrNotFound // the stream ended meanwhile
			}
		}
	}
	if s.video != nil {
		s.holdRung(s.video.name)
		s.heldName = s.video.name
	}
	e.m.viewers.Inc()
	if src.AddViewers != nil {
		src.AddViewers(1)
	}
	t.Start(s.handleRTCP)
	s.wg.Add(1)
	go s.write()
	s.log.Info("viewer connected")
	return s, answer, nil
}

// newOutput is the output of track tr, sending hub.
func (s *session) newOutput(tr *lite.Track, hub *media.Hub) *output {
	o := newOutput(tr.Kind, hub, &track{w: s.t, tr: tr}, s.wake)
	m := s.e.m
	o.packets = m.packets.WithLabelValues(s.stream, o.kind)
	o.bytes = countingCounter{m.bytes.WithLabelValues(s.stream, o.kind), &s.e.egress}
	o.drops = m.drops.WithLabelValues(s.stream, o.kind)
	return o
}

// session is one WHEP viewer.
type session struct {
	e       *Endpoint
	t       *lite.Transport
	stream  string
	src     Source
	log     *slog.Logger
	video   *output
	audio   *output
	started time.Time
	abr     viewerABR // the rendition choice; video only
	bwe     estimator // nil without one
	// rejected is the BWE's refused feedback counted so far (writer goroutine).
	rejected uint64
	// heldRung is the rung counted in the viewers-per-rung gauge (writer
	// goroutine); heldName the one events report (evMu).
	heldRung  string
	rungGauge prometheus.Gauge
	heldName  string

	evMu   sync.Mutex // guards evSubs
	evSubs map[chan wish.Event]struct{}

	heard     chan struct{} // closed at the first RTCP from the viewer
	heardOnce sync.Once
	// rc are the stream's RTCP series; rtxHdr the scratch header of
	// retransmissions (both used under the transport's receive path).
	rc        rtcpCounters
	rtxHdr    rtp.Header
	refused   lite.Stats // the transport's refusals counted so far (writer goroutine)
	connected bool       // DTLS is done (writer goroutine)
	done      chan struct{}
	// wake is signalled by every subscription of the session.
	wake      chan struct{}
	closeOnce sync.Once
	ended     func() // tells the resource table; may be nil
	wg        sync.WaitGroup
}

// ICE's side of wish.Session: the transport's.
func (s *session) Trickle(f wish.Fragment) error           { return s.t.Trickle(f) }
func (s *session) Restart(f wish.Fragment) (string, error) { return s.t.Restart(f) }
func (s *session) RemoteUfrag() string                     { return s.t.RemoteUfrag() }

// listenWait is the longest a new viewer's first packets wait for the
// viewer's first RTCP after DTLS completes.
const listenWait = 500 * time.Millisecond

// maxRetransmitsPerReport bounds the work one NACK can cause.
const maxRetransmitsPerReport = 256

// handleRTCP takes a compound RTCP packet from the viewer (its transport
// has authenticated it, and the BWE has read its transport-wide
// feedback): NACKs are answered from the hubs' shared buffers, PLIs become
// one coalesced keyframe request per stream, and loss reports, NACK counts
// and REMB feed the viewer's rendition choice. It runs on the transport's
// receive path, one packet at a time, and never blocks.
func (s *session) handleRTCP(now time.Time, buf []byte) {
	s.heardOnce.Do(func() { close(s.heard) })
	budget := maxRetransmitsPerReport
	for b := buf; len(b) > 0; {
		p, rest, ok := peer.NextRTCP(b)
		if !ok || p[0]>>6 != 2 {
			s.e.m.badRTCP.Inc()
			return
		}
		b = rest
		if !s.onRTCP(now, p, &budget) {
			s.e.m.badRTCP.Inc()
		}
	}
}

// sendReports sends the tracks' RTCP sender reports, once a second: the
// session makes them itself, where pion's sender-report interceptor would
// lock a mutex on every packet and run a goroutine per viewer.
func (s *session) sendReports(now time.Time) {
	var pkts [2]rtcp.Packet
	n := 0
	for _, o := range []*output{s.video, s.audio} {
		if o == nil {
			continue
		}
		if sr := o.senderReport(now); sr != nil {
			pkts[n] = sr
			n++
		}
	}
	if n == 0 {
		return
	}
	raw, err := rtcp.Marshal(pkts[:n])
	if err == nil {
		// A failed write is the transport closing: the writer sees it
		// end.
		_ = s.t.WriteRTCP(raw)
	}
}

// countRejected adds the transport-wide feedback the viewer's BWE refused
// since the last call (malformed, or over its budget) to the bad RTCP, and
// the packets the transport refused to their counters.
func (s *session) countRejected() {
	st := s.t.Stats()
	addSince(s.e.m.refused, "unauthenticated", st.Bad, s.refused.Bad)
	addSince(s.e.m.refused, "rate_limited", st.Limited, s.refused.Limited)
	s.refused = st
	if b, ok := s.bwe.(interface{ Rejected() uint64 }); ok {
		if n := b.Rejected(); n > s.rejected {
			s.e.m.badRTCP.Add(float64(n - s.rejected))
			s.rejected = n
		}
	}
}

// addSince adds to v's series for label what a running total grew by
// since it was last, when it grew.
func addSince(v *prometheus.CounterVec, label string, total, last uint64) {
	if total > last {
		v.WithLabelValues(label).Add(float64(total - last))
	}
}

// rtcpCounters are a session's series of the per-stream RTCP metrics.
type rtcpCounters struct {
	nacks, retransmits, plis prometheus.Counter
	fills                    [fillKinds]prometheus.Counter // by fillReason
}

// onRTCP acts on one RTCP packet p of a viewer's compound: keyframe
// requests, NACKs (answered from the shared buffers, at most budget
// retransmissions per compound), receiver reports' loss and REMB. It
// reports false for a packet it should understand but cannot parse.
func (s *session) onRTCP(now time.Time, p []byte, budget *int) bool {
	format := p[0] & 0x1f
	switch rtcp.PacketType(p[1]) {
	case rtcp.TypePayloadSpecificFeedback:
		switch format {
		case rtcp.FormatPLI, rtcp.FormatFIR:
			// The media source (RFC 4585 section 6.1; a FIR names it in
			// its entry, RFC 5104 section 4.3.1.1).
			at := 8
			if format == rtcp.FormatFIR {
				at = 12
			}
			if len(p) < at+4 {
				return false
			}
			s.rc.plis.Inc()
			if o := s.output(binary.BigEndian.Uint32(p[at:])); o != nil {
				if h := o.current(); h != nil {
					h.RequestKeyframe()
				}
			}
		case rtcp.FormatREMB:
			var r rtcp.ReceiverEstimatedMaximumBitrate
			if r.Unmarshal(p) != nil {
				return false
			}
			s.abr.onREMB(now, float64(r.Bitrate))
		}
	case rtcp.TypeTransportSpecificFeedback:
		if format != rtcp.FormatTLN {
			return true // TWCC: the BWE's
		}
		var nack rtcp.TransportLayerNack
		if nack.Unmarshal(p) != nil {
			return false
		}
		o := s.output(nack.MediaSSRC)
		if o == nil {
			return true
		}
		n := 0
		hdr := &s.rtxHdr
		for _, pair := range nack.Nacks {
			for _, seq := range pair.PacketList() {
				n++
				if *budget == 0 {
					continue
				}
				*budget--
				pkt, off, filled := o.lookup(seq, hdr)
				if filled != fillNone {
					s.rc.fills[filled].Inc()
				}
				if pkt != nil {
					*hdr = rtp.Header{Version: 2, Marker: pkt.Marker, SequenceNumber: seq, Timestamp: pkt.Timestamp + off,
						Extensions: hdr.Extensions[:0]} // reused, as in output.send
					if o.track.write(hdr, pkt.Payload) == nil {
						s.rc.retransmits.Inc()
						s.e.egress.Add(uint64(len(pkt.Payload)))
					}
				}
			}
		}
		s.rc.nacks.Add(float64(n))
		if o == s.video {
			s.abr.onNACK(now, n)
		}
	case rtcp.TypeReceiverReport:
		if s.video == nil {
			return true
		}
		var rr rtcp.ReceiverReport
		if rr.Unmarshal(p) != nil {
			return false
		}
		ssrc := s.video.track.ssrc()
		rttSeen := false
		for _, r := range rr.Reports {
			if r.SSRC == ssrc {
				s.abr.onLoss(now, float64(r.FractionLost)/256)
			}
			// Either track's report tells the transport's round trip.
			if rttSeen || s.output(r.SSRC) == nil {
				continue
			}
			if rtt, ok := rttFromReport(now, r.LastSenderReport, r.Delay); ok {
				rttSeen = true
				s.e.m.rtt.Observe(rtt.Seconds())
				s.abr.onRTT(now, rtt)
			}
		}
	}
	return true
}

// padTrack is the output a probe's padding rides: the audio's once it
// flows, if the viewer counts audio in its transport-wide feedback.
// Padding takes sequence numbers of its track, and a receiver assembles a
// video frame only once it has every number before it, so padding lost to
// a link that fell under a probe stalled the video until its repairs
// crossed the full queue. An audio receiver plays by timestamp and asks
// for no repairs. Owned by the writer goroutine.
func (s *session) padTrack() *output {
	if s.audio != nil && s.audio.begun && s.audio.track.tr.TWCC {
		return s.audio
	}
	return s.video
}

// output is the track sent with ssrc, or nil.
func (s *session) output(ssrc uint32) *output {
	for _, o := range []*output{s.video, s.audio} {
		if o != nil && o.track.ssrc() == ssrc {
			return o
		}
	}
	return nil
}

// keptEntries is the capacity of the writer's buffer between bursts: a
// frame or two of packets.
const keptEntries = 64

// abrTick is how often the writer consults the viewer's rendition choice.
const abrTick = 100 * time.Millisecond

// idleTick is the writer's timer once media flows: the tick runs on the
// first wake-up of a frame or audio packet that finds it due, and the
// timer only stands in when media stops. Set to abrTick it would fire
// just before that wake-up nearly every time (the wake-up comes after the
// tick is due, the timer at the instant it is): ten goroutine wake-ups a
// second per viewer, most of them waking an idle thread. Media wakes the
// writer at least every 33 ms.
const idleTick = abrTick + abrTick/2

// write is the viewer's one writer: it drains the subscriptions, switches
// renditions at keyframes, pads probes, and checks the session's timers.
//
// Every subscription of the session signals one wake channel, so one
// select case serves them all, and the controller's tick runs on the
// wake-up of a frame that finds it due: a timer fires only when media
// stops. Each is a goroutine wake-up fewer per viewer, tens of thousands
// a second on a busy node.
func (s *session) write() {
	defer s.wg.Done()
	defer func() {
		for _, o := range []*output{s.video, s.audio} {
			if o != nil {
				o.close()
			}
		}
		s.abr.closed(s)
		s.countRejected() // what came in since the last second's count
	}()
	tick := time.NewTimer(abrTick)
	defer tick.Stop()
	// Until DTLS is done the hubs queue for us, so the cached GOP that
	// starts this viewer on a keyframe is not lost.
	for ready := false; !ready; {
		select {
		case <-s.done:
			return
		case <-s.t.Done():
			s.transportEnded()
			return
		case <-s.t.Ready():
			ready = true
			s.connected = true
		case now := <-tick.C:
			if reason := s.expired(now); reason != "" {
				s.log.Warn("closing viewer", "reason", reason)
				go s.Close()
				return
			}
			tick.Reset(abrTick)
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
	s.abr.started(time.Now())
	w := writer{buf: make([]media.Entry, 0, keptEntries), nextTick: time.Now().Add(abrTick)}
	defer w.stopProbe()
	tick.Reset(idleTick)
	for {
		if cap(w.buf) > keptEntries {
			// A burst (a joining viewer's cached GOP, a backlog behind the
			// pacer) grew it: let that go rather than keep it per viewer.
			w.buf = make([]media.Entry, 0, keptEntries)
		}
		// What the last round queued goes now, as one burst, before the
		// writer waits again.
		s.t.Flush()
		var now time.Time
		select {
		case <-s.done:
			return
		case <-s.t.Done():
			s.transportEnded()
			return
		case <-s.wake:
			if !s.serve(&w) {
				go s.Close()
				return
			}
			if now = time.Now(); now.Before(w.nextTick) {
				continue
			}
		case now = <-w.probeC:
			s.abr.pad(now, s.padTrack())
			continue
		case now = <-tick.C:
		}
		if !s.tick(&w, now) {
			go s.Close()
			return
		}
		tick.Reset(idleTick)
	}
}

// writer is the write goroutine's state between rounds.
type writer struct {
	buf      []media.Entry
	nextTick time.Time
	ticks    int
	probe    *time.Ticker // while the controller probes
	probeC   <-chan time.Time
}

func (w *writer) stopProbe() {
	if w.probe != nil {
		w.probe.Stop()
		w.probe, w.probeC = nil, nil
	}
}

// serve sends what the subscriptions queued and completes a pending
// switch. It reports false when the stream has ended.
func (s *session) serve(w *writer) bool {
	var n int
	if a := s.audio; a != nil && a.sub.Closed() {
		s.log.Info("stream ended")
		return false
	}
	if v := s.video; v != nil && !time.Now().Before(v.holdUntil) {
		if v.sub != nil && v.sub.Closed() {
			// The rung's hub closed: the ladder was re-planned, or the
			// stream ended. Move to what the ladder has now.
			v.pause()
			if !s.abr.rungGone(time.Now(), s) {
				s.log.Info("stream ended")
				return false
			}
		}
		if v.next != nil {
			var switched bool
			w.buf, switched, n, _ = v.trySwitch(w.buf)
			now := time.Now()
			s.abr.sent(now, n, s)
			if switched {
				s.abr.switched(now, s)
			}
		}
		if v.sub != nil {
			w.buf, n, _ = v.drain(w.buf)
			s.abr.sent(time.Now(), n, s)
		}
	}
	if a := s.audio; a != nil {
		w.buf, n, _ = a.drain(w.buf)
		s.abr.onSent(time.Now(), n)
		a.count()
	}
	if v := s.video; v != nil {
		v.count()
	}
	return true
}

// tick runs the controller every abrTick and the session's once-a-second
// duties every tenth tick. It reports false when the session must close.
func (s *session) tick(w *writer, now time.Time) bool {
	w.nextTick = now.Add(abrTick)
	if s.video != nil {
		probing := s.abr.tick(now, s)
		switch {
		case probing && w.probe == nil:
			w.probe = time.NewTicker(padEvery)
			w.probeC = w.probe.C
		case !probing && w.probe != nil:
			w.stopProbe()
		}
	}
	if w.ticks++; w.ticks%10 == 0 {
		s.sendReports(now)
		s.countRejected()
		if reason := s.expired(now); reason != "" {
			s.log.Warn("closing viewer", "reason", reason)
			return false
		}
	}
	return true
}

// transportEnded closes the session whose transport ended by itself (the
// viewer closed DTLS, or the handshake failed).
func (s *session) transportEnded() {
	if err := s.t.Err(); err != nil {
		s.log.Info("viewer transport ended", "reason", err)
	}
	go s.Close()
}

// expired applies the zombie timers and reports drops, at most once a second.
func (s *session) expired(now time.Time) string {
	cfg := s.e.eng.Config()
	if !s.connected {
		if now.Sub(s.started) > cfg.HandshakeTimeout {
			return "handshake timeout"
		}
		return ""
	}
	// Consent checks (RFC 7675) and RTCP both count.
	if now.Sub(s.t.Heard()) > cfg.ICEFailedTimeout {
		return "no consent or RTCP from viewer"
	}
	for _, o := range []*output{s.video, s.audio} {
		if o == nil {
			continue
		}
		if d := o.countDrops(); d > 0 {
			s.log.Warn("viewer too slow; dropped packets", "kind", o.kind, "dropped", d)
		}
	}
	return ""
}

// abort undoes a half-built session.
func (s *session) abort() {
	s.t.Close()
	for _, o := range []*output{s.video, s.audio} {
		if o != nil {
			o.close()
		}
	}
	s.wg.Wait()
}

// Close ends the viewer at once. Idempotent; safe from any goroutine but
// the session's own (they use go s.Close()).
func (s *session) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.t.Close()
		s.e.m.viewers.Dec()
		if s.src.AddViewers != nil {
			s.src.AddViewers(-1)
		}
		if s.ended != nil {
			s.ended()
		}
		s.log.Info("viewer closed")
	})
	s.wg.Wait() // the writer closes its subscriptions as it returns
	return nil
}
