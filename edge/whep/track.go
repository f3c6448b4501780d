package whep

import (
	"github.com/pion/rtp"

	"github.com/cascade-cdn/cascade/peer/lite"
)

// rtpWriter is where a viewer's tracks send: the viewer's transport
// (lite.Transport), or a test's recorder. WriteRTP queues a packet, with
// h's SSRC and payload type set from tr, and Flush sends what is queued;
// neither may block on the network.
type rtpWriter interface {
	WriteRTP(tr *lite.Track, h *rtp.Header, payload []byte) error
	Flush()
}

// track is one track of a viewer: what the transport negotiated for it,
// and where it writes.
type track struct {
	w  rtpWriter
	tr *lite.Track
}

// write sends one packet; h is the caller's scratch header.
func (k *track) write(h *rtp.Header, payload []byte) error { return k.w.WriteRTP(k.tr, h, payload) }

// flush sends what write queued.
func (k *track) flush() { k.w.Flush() }

// ssrc is the SSRC the track is sent with.
func (k *track) ssrc() uint32 { return k.tr.SSRC }
