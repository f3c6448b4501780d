package media

import "time"

// Kind is the media kind of a track.
type Kind uint8

// Kinds of track.
const (
	Video Kind = iota + 1
	Audio
)

func (k Kind) String() string {
	switch k {
	case Video:
		return "video"
	case Audio:
		return "audio"
	}
	return "unknown"
}

// Packet is one RTP packet as a Hub publishes it.
//
// A Packet handed to Hub.Write belongs to the hub from then on; once written
// it is immutable and shared by every subscriber, so nobody may change it.
// Header extensions and CSRCs of the source are not kept: their IDs belong to
// the publisher's negotiation, not the viewer's.
type Packet struct {
	// SequenceNumber and Timestamp are in the hub's numbering: continuous
	// across publisher takeovers, whatever the source used.
	SequenceNumber uint16
	Timestamp      uint32
	Marker         bool
	Payload        []byte

	// Keyframe is set on the first packet of a decodable entry point (for
	// H.264, the first packet of an access unit carrying SPS or an IDR).
	Keyframe bool
	// Arrival is when the packet reached the hub.
	Arrival time.Time
}
