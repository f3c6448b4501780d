package h264

// NAL unit types used here (ITU-T H.264 table 7-1) and RTP packetization
// types (RFC 6184 section 5.2).
const (
	NALUSlice = 1
	NALUIDR   = 5
	NALUSEI   = 6
	NALUSPS   = 7
	NALUPPS   = 8
	NALUAUD   = 9
	NALUSTAPA = 24
	NALUFUA   = 28
)

// Contents says which parameter sets and slices start in one RTP payload.
type Contents struct {
	SPS, PPS bool
	// IDR is set when an IDR slice starts in this payload (for FU-A, only on
	// the fragment with the start bit).
	IDR bool
}

// Keyframe reports whether a decoder may start at this payload: it carries
// an SPS or the start of an IDR slice.
func (c Contents) Keyframe() bool { return c.SPS || c.IDR }

// Inspect reads the NAL unit types that start in an RTP H.264 payload
// (single NAL unit, STAP-A or FU-A, RFC 6184 sections 5.6-5.8). Malformed
// aggregates are read as far as they are well formed.
func Inspect(payload []byte) Contents {
	var c Contents
	if len(payload) < 1 {
		return c
	}
	switch t := payload[0] & 0x1f; t {
	case NALUSTAPA:
		// STAP-A: header, then (16-bit size, NAL unit)*.
		b := payload[1:]
		for len(b) >= 3 {
			size := int(b[0])<<8 | int(b[1])
			if size == 0 || size > len(b)-2 {
				break
			}
			c.add(b[2] & 0x1f)
			b = b[2+size:]
		}
	case NALUFUA:
		if len(payload) < 2 {
			return c
		}
		if payload[1]&0x80 != 0 { // start bit
			c.add(payload[1] & 0x1f)
		}
	default:
		c.add(t)
	}
	return c
}

func (c *Contents) add(t byte) {
	switch t {
	case NALUSPS:
		c.SPS = true
	case NALUPPS:
		c.PPS = true
	case NALUIDR:
		c.IDR = true
	}
}

// IsKeyframe reports whether a decoder may start at this RTP payload.
func IsKeyframe(payload []byte) bool { return Inspect(payload).Keyframe() }

// FindSPS returns the first SPS NAL unit that is whole in an RTP payload
// (single NAL unit or inside a STAP-A), or nil. The result aliases payload.
func FindSPS(payload []byte) []byte {
	if len(payload) < 1 {
		return nil
	}
	switch payload[0] & 0x1f {
	case NALUSPS:
		return payload
	case NALUSTAPA:
		b := payload[1:]
		for len(b) >= 3 {
			size := int(b[0])<<8 | int(b[1])
			if size == 0 || size > len(b)-2 {
				return nil
			}
			if b[2]&0x1f == NALUSPS {
				return b[2 : 2+size]
			}
			b = b[2+size:]
		}
	}
	return nil
}
