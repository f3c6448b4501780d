// Package mediatest provides real pion peers for tests and the load tool:
// a WHIP publisher that sends synthetic H.264 and Opus, and a WHEP viewer
// that records what it receives. Named like net/http/httptest.
package mediatest

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"

	"github.com/cascade-cdn/cascade/media/h264"
)

// SPS720p and PPS720p are a real x264 constrained-baseline parameter set
// for 1280x720 (encoded by ffmpeg/libx264 from testsrc2).
var (
	SPS720p = mustHex("6742c01fd9005005bb0110000003001000000303c0f1832480")
	PPS720p = mustHex("68cb83cb20")
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// API returns a pion API for a client peer restricted to loopback, with
// pion's default codecs and interceptors (NACK, reports, TWCC).
func API() (*webrtc.API, error) { return NewAPI(Net{}) }

// Net chooses how a client peer reaches the server.
type Net struct {
	// TCP makes the peer use ICE-TCP only.
	TCP bool
	// Conn, if set, carries all of the peer's UDP: closing it silences the
	// peer at once, without the DTLS close a PeerConnection.Close sends.
	Conn net.PacketConn
}

// NewAPI returns a client pion API using n.
func NewAPI(n Net) (*webrtc.API, error) {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		return nil, err
	}
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(m, ir); err != nil {
		return nil, err
	}
	var se webrtc.SettingEngine
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	if n.TCP {
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeTCP4})
	}
	if n.Conn != nil {
		se.SetICEUDPMux(webrtc.NewICEUDPMux(nil, n.Conn))
	}
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetIncludeLoopbackCandidate(true)
	se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se)), nil
}

// Post sends an SDP offer and returns the answer and Location. A non-201
// answer is a *StatusError.
func Post(ctx context.Context, url, token, offer string) (answer, location string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(offer))
	if err != nil {
		return "", "", err
	}
	req.Header.Set("Content-Type", "application/sdp")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusCreated {
		return "", "", &StatusError{Code: resp.StatusCode, Body: string(body)}
	}
	return string(body), resp.Header.Get("Location"), nil
}

// StatusError is an HTTP answer other than 201.
type StatusError struct {
	Code int
	Body string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.Code, strings.TrimSpace(e.Body))
}

// negotiate creates an offer, waits for gathering, POSTs it and applies
// the answer. With noCandidates the offer carries no candidates, as OBS
// 30+ sends them: the server must learn the peer from its checks.
func negotiate(ctx context.Context, pc *webrtc.PeerConnection, url, token string, noCandidates bool) (string, error) {
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		return "", err
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		return "", err
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	sdp := pc.LocalDescription().SDP
	if noCandidates {
		sdp = StripCandidates(sdp)
	}
	answer, loc, err := Post(ctx, url, token, sdp)
	if err != nil {
		return "", err
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		return "", err
	}
	return loc, nil
}

// StripCandidates removes a=candidate and a=end-of-candidates lines.
func StripCandidates(sdp string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(sdp, "\n") {
		if strings.HasPrefix(line, "a=candidate:") || strings.HasPrefix(line, "a=end-of-candidates") {
			continue
		}
		b.WriteString(line)
	}
	return b.String()
}

// Delete sends DELETE to base+location and returns the status code.
func Delete(base, location string) (int, error) {
	req, err := http.NewRequest(http.MethodDelete, base+location, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// PublisherOptions shape a synthetic publisher.
type PublisherOptions struct {
	Token string
	// Bitrate is the video bit rate (default 2 Mbps); FPS the frame rate
	// (default 30); GOP the keyframe interval in frames (default FPS).
	Bitrate, FPS, GOP int
	// NoCandidates strips candidates from the offer, like OBS 30+.
	NoCandidates bool
	// NoAudio publishes video only.
	NoAudio bool
	// AccessUnits, if set, are real Annex-B access units sent in a loop
	// instead of synthetic slices (which no decoder accepts).
	AccessUnits [][]byte
	// Net restricts the publisher's transport (ICE-TCP only, say).
	Net Net
}

// Publisher is a pion WHIP client sending synthetic H.264 (real SPS/PPS,
// IDR and P slices of realistic sizes) and Opus.
type Publisher struct {
	PC       *webrtc.PeerConnection
	Location string
	Frames   atomic.Int64

	opts   PublisherOptions
	video  *webrtc.TrackLocalStaticSample
	audio  *webrtc.TrackLocalStaticSample
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Publish connects a publisher to url (".../whip/stream") and starts
// sending once connected.
func Publish(ctx context.Context, url string, o PublisherOptions) (*Publisher, error) {
	if o.Bitrate == 0 {
		o.Bitrate = 2_000_000
	}
	if o.FPS == 0 {
		o.FPS = 30
	}
	if o.GOP == 0 {
		o.GOP = o.FPS
	}
	api, err := NewAPI(o.Net)
	if err != nil {
		return nil, err
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	p := &Publisher{PC: pc, opts: o}
	p.video, _ = webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
		SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"}, "video", "pub")
	if _, err := pc.AddTransceiverFromTrack(p.video, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		pc.Close()
		return nil, err
	}
	if !o.NoAudio {
		p.audio, _ = webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "pub")
		if _, err := pc.AddTransceiverFromTrack(p.audio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
			pc.Close()
			return nil, err
		}
	}
	connected := make(chan struct{})
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(connected) })
		}
	})
	if p.Location, err = negotiate(ctx, pc, url, o.Token, o.NoCandidates); err != nil {
		pc.Close()
		return nil, err
	}
	select {
	case <-connected:
	case <-ctx.Done():
		pc.Close()
		return nil, fmt.Errorf("publisher: not connected: %w", ctx.Err())
	}
	sctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.wg.Add(1)
	go p.send(sctx)
	return p, nil
}

// send writes frames in real time until ctx ends.
func (p *Publisher) send(ctx context.Context) {
	defer p.wg.Done()
	o := p.opts
	frameDur := time.Second / time.Duration(o.FPS)
	avg := o.Bitrate / 8 / o.FPS
	rng := rand.New(rand.NewPCG(1, 2))
	tick := time.NewTicker(frameDur)
	defer tick.Stop()
	audioEvery := 20 * time.Millisecond
	lastAudio := time.Now()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var frame []byte
		if len(o.AccessUnits) > 0 {
			frame = o.AccessUnits[n%len(o.AccessUnits)]
		} else if n%o.GOP == 0 {
			// An IDR of about a fifth of a second's bits, as encoders make.
			frame = annexB(SPS720p, PPS720p, slice(0x65, o.Bitrate/8/5, rng))
		} else {
			frame = annexB(slice(0x41, avg*(80+rng.IntN(40))/100, rng))
		}
		if p.video.WriteSample(media.Sample{Data: frame, Duration: frameDur}) != nil {
			return
		}
		p.Frames.Add(1)
		for p.audio != nil && time.Since(lastAudio) >= audioEvery {
			lastAudio = lastAudio.Add(audioEvery)
			p.audio.WriteSample(media.Sample{Data: slice(0xfc, 80, rng), Duration: audioEvery})
		}
	}
}

func slice(header byte, size int, rng *rand.Rand) []byte {
	if size < 2 {
		size = 2
	}
	b := make([]byte, size)
	b[0] = header
	for i := 1; i < size; i++ {
		b[i] = byte(rng.IntN(255) + 1) // no zero bytes, so no start-code emulation
	}
	return b
}

func annexB(nals ...[]byte) []byte {
	var b bytes.Buffer
	for _, n := range nals {
		b.Write([]byte{0, 0, 0, 1})
		b.Write(n)
	}
	return b.Bytes()
}

// Close stops sending and closes the peer (without a DELETE).
func (p *Publisher) Close() error {
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
	return p.PC.Close()
}

// Viewer is a pion WHEP client that records what it receives.
type Viewer struct {
	PC       *webrtc.PeerConnection
	Location string

	VideoPackets atomic.Int64
	AudioPackets atomic.Int64
	// VideoFrames counts packets with the marker bit (ends of frames).
	VideoFrames atomic.Int64
	Keyframes   atomic.Int64
	// LastVideoTimestamp is the RTP timestamp of the latest video packet
	// (not kept with Discard).
	LastVideoTimestamp atomic.Uint32

	mu          sync.Mutex
	first       *rtp.Packet
	firstKey    bool
	ext         uint64 // extended sequence number of the latest packet
	seen        map[uint64]struct{}
	keep        int
	keyTS       []uint32 // RTP timestamps of keyframes, in arrival order
	asm         h264.Assembler
	aus         [][]byte
	gotVideo    chan struct{}
	gotVideoSet sync.Once
	wg          sync.WaitGroup
}

// ViewerOptions shape a viewer.
type ViewerOptions struct {
	Net          Net
	NoCandidates bool
	// Discard skips the per-packet bookkeeping (load runs count packets only).
	Discard bool
	// Query is appended to the WHEP URL, e.g. "?rendition=360p".
	Query string
	// KeepAccessUnits keeps up to this many rebuilt video access units.
	KeepAccessUnits int
}

// Watch connects a viewer to url (".../whep/stream").
func Watch(ctx context.Context, url string, o ViewerOptions) (*Viewer, error) {
	api, err := NewAPI(o.Net)
	if err != nil {
		return nil, err
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	v := &Viewer{PC: pc, gotVideo: make(chan struct{}), seen: map[uint64]struct{}{}}
	for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
		if _, err := pc.AddTransceiverFromKind(k, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			pc.Close()
			return nil, err
		}
	}
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		v.wg.Add(1)
		go v.read(tr, o.Discard)
	})
	v.keep = o.KeepAccessUnits
	if v.Location, err = negotiate(ctx, pc, url+o.Query, "", o.NoCandidates); err != nil {
		pc.Close()
		return nil, err
	}
	return v, nil
}

func (v *Viewer) read(tr *webrtc.TrackRemote, discard bool) {
	defer v.wg.Done()
	video := tr.Kind() == webrtc.RTPCodecTypeVideo
	buf := make([]byte, 1500)
	var p rtp.Packet
	for {
		n, _, err := tr.Read(buf)
		if err != nil {
			return
		}
		if !video {
			v.AudioPackets.Add(1)
			continue
		}
		v.VideoPackets.Add(1)
		if discard {
			continue
		}
		if p.Unmarshal(buf[:n]) != nil {
			continue
		}
		key := isKeyframe(p.Payload)
		v.mu.Lock()
		if v.first == nil {
			c := p.Clone()
			v.first, v.firstKey = c, key
			v.gotVideoSet.Do(func() { close(v.gotVideo) })
			v.ext = uint64(p.SequenceNumber) + 1<<32
		} else {
			v.ext = uint64(int64(v.ext) + int64(int16(p.SequenceNumber-uint16(v.ext))))
		}
		v.seen[v.ext] = struct{}{}
		if len(v.aus) < v.keep {
			if au := v.asm.Push(p.SequenceNumber, p.Timestamp, p.Marker, p.Payload); au != nil && !au.Damaged {
				v.aus = append(v.aus, slices.Clone(au.Data))
			}
		}
		v.mu.Unlock()
		if key {
			v.Keyframes.Add(1)
			v.mu.Lock()
			if n := len(v.keyTS); n == 0 || v.keyTS[n-1] != p.Timestamp {
				v.keyTS = append(v.keyTS, p.Timestamp)
			}
			v.mu.Unlock()
		}
		if p.Marker {
			v.VideoFrames.Add(1)
		}
		v.LastVideoTimestamp.Store(p.Timestamp)
	}
}

// isKeyframe is deliberately written apart from media/h264, so the tests
// of the server do not trust the server's own parser.
func isKeyframe(payload []byte) bool {
	if len(payload) < 2 {
		return false
	}
	switch payload[0] & 0x1f {
	case 5, 7:
		return true
	case 24: // STAP-A: any aggregated SPS or IDR (an AUD may come first)
		for b := payload[1:]; len(b) > 2; {
			size := int(b[0])<<8 | int(b[1])
			if size == 0 || 2+size > len(b) {
				return false
			}
			if t := b[2] & 0x1f; t == 5 || t == 7 {
				return true
			}
			b = b[2+size:]
		}
		return false
	case 28: // FU-A start of an IDR
		return payload[1]&0x80 != 0 && payload[1]&0x1f == 5
	}
	return false
}

// FirstVideo waits for the first video packet and reports whether it
// starts a keyframe.
func (v *Viewer) FirstVideo(ctx context.Context) (keyframe bool, err error) {
	select {
	case <-v.gotVideo:
	case <-ctx.Done():
		return false, errors.New("viewer: no video received")
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.firstKey {
		return false, fmt.Errorf("first video packet seq %d starts % x", v.first.SequenceNumber, v.first.Payload[:min(8, len(v.first.Payload))])
	}
	return true, nil
}

// AccessUnits returns the video access units kept so far (see
// ViewerOptions.KeepAccessUnits), undamaged ones only.
func (v *Viewer) AccessUnits() [][]byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.aus)
}

// KeyframeTimestamps returns the RTP timestamps of the keyframes received.
func (v *Viewer) KeyframeTimestamps() []uint32 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.keyTS)
}

// MissingSeqs counts video sequence numbers between the first and the
// latest received that never arrived, retransmissions included: a jump in
// the sender's numbering shows here, a packet lost and repaired does not.
// It also describes the first few holes.
func (v *Viewer) MissingSeqs() (int, []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	lo, hi := uint64(math.MaxUint64), uint64(0)
	for s := range v.seen {
		lo, hi = min(lo, s), max(hi, s)
	}
	missing := 0
	var holes []string
	for s := lo; s < hi; s++ {
		if _, ok := v.seen[s]; !ok {
			missing++
			if len(holes) < 8 {
				holes = append(holes, fmt.Sprint(uint16(s)))
			}
		}
	}
	return missing, holes
}

// Close closes the peer and waits for its readers.
func (v *Viewer) Close() error {
	err := v.PC.Close()
	v.wg.Wait()
	return err
}
