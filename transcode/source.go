package transcode

import (
	"fmt"

	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/media/h264"
	"github.com/cascade-cdn/cascade/media/h265"
)

// assembler rebuilds the source codec's access units from its RTP packets.
// It belongs to the pipeline goroutine.
type assembler interface {
	// push adds one packet and returns the Annex-B access unit its marker
	// bit completes (valid until the next push), with the unit's RTP
	// timestamp and whether a decoder may start there; au is nil until a
	// unit completes.
	push(pk *media.Packet) (au []byte, ts uint32, key bool)
}

// newAssembler returns an assembler for a hub's codec (its RTP encoding
// name): "H264" (RFC 6184) or "H265" (RFC 7798).
func newAssembler(codec string) (assembler, error) {
	switch codec {
	case "H264":
		return &h264Assembler{}, nil
	case "H265":
		return &h265Assembler{}, nil
	}
	return nil, fmt.Errorf("transcode: cannot transcode %q video (H264 or H265 only)", codec)
}

type h264Assembler struct{ a h264.Assembler }

func (x *h264Assembler) push(pk *media.Packet) ([]byte, uint32, bool) {
	au := x.a.Push(pk.SequenceNumber, pk.Timestamp, pk.Marker, pk.Payload)
	if au == nil {
		return nil, 0, false
	}
	return au.Data, au.Timestamp, au.Keyframe
}

type h265Assembler struct{ a h265.Assembler }

func (x *h265Assembler) push(pk *media.Packet) ([]byte, uint32, bool) {
	au := x.a.Push(pk.SequenceNumber, pk.Timestamp, pk.Marker, pk.Payload)
	if au == nil {
		return nil, 0, false
	}
	return au.Data, au.Timestamp, au.Keyframe
}
