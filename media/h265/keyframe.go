package h265

// NAL unit types used here (ITU-T H.265 table 7-1) and RTP packetization
// types (RFC 7798 section 4.4).
const (
	NALUBLAWLP   = 16 // first IRAP type
	NALUIDRWRADL = 19
	NALUIDRNLP   = 20
	NALUCRA      = 21 // last IRAP type in use
	NALUIRAPMax  = 23 // reserved IRAP types end here
	NALUVPS      = 32
	NALUSPS      = 33
	NALUPPS      = 34
	NALUAUD      = 35
	NALUAP       = 48 // aggregation packet
	NALUFU       = 49 // fragmentation unit
	NALUPACI     = 50
)

// Type returns the NAL unit type of a two-byte H.265 NAL unit header's
// first byte.
func Type(b0 byte) byte { return b0 >> 1 & 0x3f }

// IsIRAP reports whether t is an intra random access point (BLA, IDR or
// CRA): a decoder may start there.
func IsIRAP(t byte) bool { return t >= NALUBLAWLP && t <= NALUIRAPMax }

// Contents says which parameter sets and slices start in one RTP payload.
type Contents struct {
	VPS, SPS, PPS bool
	// IRAP is set when a random-access slice starts in this payload (for
	// a fragmentation unit, only on the fragment with the start bit).
	IRAP bool
}

// Keyframe reports whether a decoder may start at this payload: it carries
// a parameter set (which precedes a keyframe) or the start of an IRAP slice.
func (c Contents) Keyframe() bool { return c.VPS || c.SPS || c.IRAP }

// Inspect reads the NAL unit types that start in an RTP H.265 payload
// (single NAL unit, aggregation packet or fragmentation unit, RFC 7798
// sections 4.4.1-4.4.3, without DONL fields: sprop-max-don-diff is 0).
// Malformed aggregates are read as far as they are well formed.
func Inspect(payload []byte) Contents {
	var c Contents
	if len(payload) < 2 {
		return c
	}
	switch t := Type(payload[0]); t {
	case NALUAP:
		b := payload[2:]
		for len(b) >= 4 {
			size := int(b[0])<<8 | int(b[1])
			if size < 2 || size > len(b)-2 {
				break
			}
			c.add(Type(b[2]))
			b = b[2+size:]
		}
	case NALUFU:
		if len(payload) >= 3 && payload[2]&0x80 != 0 { // start bit
			c.add(payload[2] & 0x3f)
		}
	default:
		c.add(t)
	}
	return c
}

func (c *Contents) add(t byte) {
	switch {
	case t == NALUVPS:
		c.VPS = true
	case t == NALUSPS:
		c.SPS = true
	case t == NALUPPS:
		c.PPS = true
	case IsIRAP(t):
		c.IRAP = true
	}
}

// IsKeyframe reports whether a decoder may start at this RTP payload.
func IsKeyframe(payload []byte) bool { return Inspect(payload).Keyframe() }
