package whep

import (
	"github.com/pion/rtp"

	"github.com/cascade-cdn/cascade/peer/lite"
)

// rtpWriter is where a viewer's tracks send: the viewer's transport
// (lite.Transport), or a test's recorder. WriteRTP sets h's SSRC and
// payload type from tr; it must not block on the network.
type rtpWriter interface {
	WriteRTP(tr *lite.Track, h *rtp.Header, payload []byte) error
}

// track is one track of a viewer: what the transport negotiated for it,
// and where it writes.
type track struct {
	w  rtpWriter
	tr *lite.Track
}

// write sends one packet; h is the caller's scratch header.
func (k *track) write(h *rtp.Header, payload []byte) error { return k.w.WriteRTP(k.tr, h, payload) }

// ssrc is the SSRC the track is sent with.
func (k *track) ssrc() uint32 { return k.tr.SSRC }
