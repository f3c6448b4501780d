package whep

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// localTrack is a webrtc.TrackLocal that writes already-numbered packets.
// pion's TrackLocalStaticRTP copies the header per write and takes a lock;
// a viewer's track has one writer and one binding, so neither is needed.
type localTrack struct {
	id, streamID string
	kind         webrtc.RTPCodecType
	codec        webrtc.RTPCodecCapability
	b            atomic.Pointer[binding]
	// sentPackets and sentOctets are the RTP packets and payload bytes
	// written, for sender reports (they wrap, as the report's fields do).
	sentPackets, sentOctets atomic.Uint32
	bound                   chan struct{} // closed at the first Bind
	bindOnce                sync.Once
}

type binding struct {
	ssrc uint32
	pt   uint8
	w    webrtc.TrackLocalWriter
}

func newLocalTrack(kind webrtc.RTPCodecType, codec webrtc.RTPCodecCapability) *localTrack {
	return &localTrack{id: kind.String(), streamID: "cascade", kind: kind, codec: codec, bound: make(chan struct{})}
}

// Bind implements webrtc.TrackLocal.
func (t *localTrack) Bind(ctx webrtc.TrackLocalContext) (webrtc.RTPCodecParameters, error) {
	for _, c := range ctx.CodecParameters() {
		if strings.EqualFold(c.MimeType, t.codec.MimeType) {
			t.b.Store(&binding{ssrc: uint32(ctx.SSRC()), pt: uint8(c.PayloadType), w: ctx.WriteStream()})
			t.bindOnce.Do(func() { close(t.bound) })
			return c, nil
		}
	}
	return webrtc.RTPCodecParameters{}, webrtc.ErrUnsupportedCodec
}

// Unbind implements webrtc.TrackLocal.
func (t *localTrack) Unbind(webrtc.TrackLocalContext) error {
	t.b.Store(nil)
	return nil
}

func (t *localTrack) ID() string                { return t.id }
func (t *localTrack) RID() string               { return "" }
func (t *localTrack) StreamID() string          { return t.streamID }
func (t *localTrack) Kind() webrtc.RTPCodecType { return t.kind }

// write sends one packet; h is the caller's scratch header.
func (t *localTrack) write(h *rtp.Header, payload []byte) error {
	b := t.b.Load()
	if b == nil {
		return nil // not bound yet, or unbound: nothing to send to
	}
	h.SSRC = b.ssrc
	h.PayloadType = b.pt
	_, err := b.w.WriteRTP(h, payload)
	if err == nil {
		// For sender reports: every packet on the SSRC counts, media,
		// retransmissions and padding alike, as pion's interceptor
		// counted them.
		t.sentPackets.Add(1)
		t.sentOctets.Add(uint32(len(payload)))
	}
	return err
}

// ssrc is the SSRC the track is sent with, or 0 before it is bound.
func (t *localTrack) ssrc() uint32 {
	if b := t.b.Load(); b != nil {
		return b.ssrc
	}
	return 0
}
