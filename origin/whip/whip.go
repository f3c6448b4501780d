// Package whip is WHIP ingest (RFC 9725): the endpoint that turns a
// publisher's offer into a pion session whose tracks feed a stream's hubs.
package whip

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/media/h264"
	"github.com/cascade-cdn/cascade/origin/auth"
	"github.com/cascade-cdn/cascade/origin/registry"
	"github.com/cascade-cdn/cascade/peer"
	"github.com/cascade-cdn/cascade/wish"
)

// Endpoint accepts WHIP publishers.
type Endpoint struct {
	eng  *peer.Engine
	reg  *registry.Registry
	auth auth.Config
	log  *slog.Logger
	m    *metrics

	place atomic.Pointer[func(wish.Offer) error]
	// pulled reports the streams a configured pull source feeds: a WHIP
	// publisher must not take those over (RTSP publishers get 403 too).
	pulled atomic.Pointer[func(stream string) bool]
}

// SetPullSources sets the test for streams fed by a pull source; offers
// for them are refused with 403.
func (e *Endpoint) SetPullSources(has func(stream string) bool) { e.pulled.Store(&has) }

// SetPlacement sets a check run first on every offer: it may answer with a
// redirect to another node (wish.Redirect) or a refusal.
func (e *Endpoint) SetPlacement(fn func(wish.Offer) error) { e.place.Store(&fn) }

type metrics struct {
	packets *prometheus.CounterVec
	bytes   *prometheus.CounterVec
}

// New returns a WHIP endpoint publishing into reg.
func New(eng *peer.Engine, reg *registry.Registry, a auth.Config, pr prometheus.Registerer, log *slog.Logger) *Endpoint {
	m := &metrics{
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_ingest_packets_total", Help: "RTP packets received from publishers."}, []string{"stream", "kind"}),
		bytes:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_ingest_bytes_total", Help: "RTP payload bytes received from publishers."}, []string{"stream", "kind"}),
	}
	pr.MustRegister(m.packets, m.bytes)
	return &Endpoint{eng: eng, reg: reg, auth: a, log: log.With("component", "whip"), m: m}
}

// Forget drops the per-stream metrics of an ended stream.
func (e *Endpoint) Forget(stream string) {
	e.m.packets.DeletePartialMatch(prometheus.Labels{"stream": stream})
	e.m.bytes.DeletePartialMatch(prometheus.Labels{"stream": stream})
}

// checkOffer enforces what a publisher may send: at most one H.264 video
// (packetization-mode 1) and one Opus audio.
func checkOffer(offer string) error {
	ms, err := wish.InspectOffer(offer)
	if err != nil {
		return err
	}
	if wish.Count(ms, "video") > 1 || wish.Count(ms, "audio") > 1 {
		return wish.Errorf(422, "no_codec", "one video and one audio track at most")
	}
	for _, m := range ms {
		switch m.Kind {
		case "video":
			if !m.HasFmtp("H264", "packetization-mode=1") {
				return wish.Errorf(422, "no_codec", "video must be H264 with packetization-mode=1")
			}
		case "audio":
			if !m.Has("OPUS") {
				return wish.Errorf(422, "no_codec", "audio must be Opus")
			}
		}
	}
	if wish.Count(ms, "video")+wish.Count(ms, "audio") == 0 {
		return wish.ErrNoCodec
	}
	return nil
}

// Offer implements wish.Endpoint.
func (e *Endpoint) Offer(ctx context.Context, o wish.Offer) (wish.Session, string, error) {
	if fn := e.place.Load(); fn != nil {
		if err := (*fn)(o); err != nil {
			return nil, "", err
		}
	}
	if err := e.auth.CheckPublish(o.Stream, o.Token); err != nil {
		return nil, "", wish.ErrUnauth
	}
	if fn := e.pulled.Load(); fn != nil && (*fn)(o.Stream) {
		return nil, "", wish.Errorf(403, "pull_source", "stream %q is fed by a pull source", o.Stream)
	}
	if err := checkOffer(o.SDP); err != nil {
		return nil, "", err
	}
	pc, err := e.eng.Publisher().NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, "", err
	}
	s := &session{
		e: e, pc: pc, stream: o.Stream, done: make(chan struct{}), pli: make(chan uint32, 1), ended: o.Ended,
		log: e.log.With("stream", o.Stream, "remote", o.Remote),
	}
	answer, err := peer.Answer(ctx, pc, o.SDP)
	if err != nil {
		pc.Close()
		return nil, "", wish.Errorf(400, "bad_sdp", "cannot answer offer: %v", errors.Unwrap(err))
	}
	s.ICE = peer.NewICE(pc, o.SDP)
	s.st = e.reg.Publish(o.Stream, s)
	// Only now, with the stream known: a failed answer above closes pc, and
	// that must not run Close. Tracks cannot arrive before the peer has
	// our answer, so nothing is missed.
	pc.OnTrack(s.onTrack)
	pc.OnConnectionStateChange(s.onState)
	s.wg.Add(1)
	go s.run()
	s.log.Info("publisher connected")
	return s, answer, nil
}

// session is one WHIP publisher.
type session struct {
	e      *Endpoint
	pc     *webrtc.PeerConnection
	st     *registry.Stream
	stream string
	log    *slog.Logger

	*peer.ICE // trickle and ICE restart (wish.Session)
	connected atomic.Bool
	pli       chan uint32 // SSRC to send a PLI to; capacity 1
	wg        sync.WaitGroup
	closeOnce sync.Once
	ended     func() // tells the resource table; may be nil
	done      chan struct{}

	mu     sync.Mutex // orders goroutine starts before Close's wait
	closed bool
}

func (s *session) Source() string     { return "whip" }
func (s *session) VideoCodec() string { return "H264" }

func (s *session) onState(st webrtc.PeerConnectionState) {
	switch st {
	case webrtc.PeerConnectionStateConnected:
		s.connected.Store(true)
	case webrtc.PeerConnectionStateFailed, webrtc.PeerConnectionStateClosed:
		go s.Close()
	}
}

// run sends keyframe requests and enforces the handshake timeout.
func (s *session) run() {
	defer s.wg.Done()
	handshake := time.NewTimer(s.e.eng.Config().HandshakeTimeout)
	defer handshake.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-handshake.C:
			if !s.connected.Load() {
				s.log.Warn("handshake timed out")
				go s.Close()
			}
		case ssrc := <-s.pli:
			// OBS ignores these; browsers honour them.
			s.pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: ssrc}})
		}
	}
}

func (s *session) onTrack(tr *webrtc.TrackRemote, rcv *webrtc.RTPReceiver) {
	var hub *media.Hub
	switch tr.Kind() {
	case webrtc.RTPCodecTypeVideo:
		hub = s.st.Video
		ssrc := uint32(tr.SSRC())
		hub.SetKeyframeRequester(func() {
			select {
			case s.pli <- ssrc:
			default:
			}
		})
	case webrtc.RTPCodecTypeAudio:
		hub = s.st.Audio
	default:
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.wg.Add(2)
	go s.readRTCP(rcv)
	go s.read(tr, hub, hub.NewSource())
}

// readRTCP drains the receiver so its interceptors see sender reports.
func (s *session) readRTCP(rcv *webrtc.RTPReceiver) {
	defer s.wg.Done()
	for {
		if _, _, err := rcv.ReadRTCP(); err != nil {
			return
		}
	}
}

// read is the one reader of an inbound track: it hands each packet to the
// hub, which never blocks.
func (s *session) read(tr *webrtc.TrackRemote, hub *media.Hub, src *media.Source) {
	defer s.wg.Done()
	kind := tr.Kind().String()
	packets := s.e.m.packets.WithLabelValues(s.stream, kind)
	bytes := s.e.m.bytes.WithLabelValues(s.stream, kind)
	buf := make([]byte, 1500)
	var h rtp.Header
	for {
		n, _, err := tr.Read(buf)
		if err != nil {
			return
		}
		hl, err := h.Unmarshal(buf[:n])
		if err != nil {
			continue
		}
		end := n
		if h.Padding && n > hl {
			end -= int(buf[n-1])
		}
		if end <= hl {
			continue // padding-only probe
		}
		p := &media.Packet{
			SequenceNumber: h.SequenceNumber, Timestamp: h.Timestamp, Marker: h.Marker,
			Payload: append([]byte(nil), buf[hl:end]...),
		}
		if hub.Config().Kind == media.Video {
			if sps := h264.FindSPS(p.Payload); sps != nil {
				if info, err := h264.ParseSPS(sps); err == nil {
					s.st.SetVideoSize(info.Width, info.Height)
				}
			}
		}
		s.st.Touch()
		src.Write(p)
		packets.Inc()
		bytes.Add(float64(len(p.Payload)))
	}
}

// Close ends the session: the stream enters its grace period unless a new
// publisher already took it over.
func (s *session) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.done)
		s.pc.Close()
		s.e.reg.Unpublish(s.st, s)
		if s.ended != nil {
			s.ended()
		}
		s.log.Info("publisher closed")
	})
	s.wg.Wait()
	return nil
}
