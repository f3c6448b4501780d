package h265

import "github.com/cascade-cdn/cascade/media/au"

// DefaultMaxAU bounds one access unit (au.DefaultMax).
const DefaultMaxAU = au.DefaultMax

// AU is one access unit rebuilt from RTP, in Annex-B form.
type AU = au.Unit

// Assembler rebuilds access units from the RTP payloads of one H.265
// stream (RFC 7798: single NAL unit packets, aggregation packets and
// fragmentation units, without DONL fields), noticing losses by sequence
// number. PACI packets are not supported and mark the unit damaged. It is
// not safe for concurrent use.
type Assembler struct {
	// MaxAU bounds a unit's size; 0 means DefaultMaxAU.
	MaxAU int

	b au.Builder
}

// Push adds one packet. It returns the access unit that this packet's
// marker bit completes, or nil.
func (a *Assembler) Push(seq uint16, ts uint32, marker bool, payload []byte) *AU {
	a.b.Max = a.MaxAU
	a.b.Next(seq, ts)
	a.add(payload)
	if !marker {
		return nil
	}
	return a.b.Finish()
}

// appendNAL starts a new NAL unit; nal holds at least its two-byte
// header.
func (a *Assembler) appendNAL(nal []byte) bool {
	if !a.b.StartNAL(nal) {
		return false
	}
	if t := Type(nal[0]); t == NALUVPS || t == NALUSPS || IsIRAP(t) {
		a.b.Keyframe = true
	}
	return true
}

func (a *Assembler) add(p []byte) {
	if len(p) < 2 {
		a.b.Damaged = true
		return
	}
	switch t := Type(p[0]); {
	case t < NALUAP:
		a.appendNAL(p)
	case t == NALUAP:
		b := p[2:]
		if len(b) == 0 {
			a.b.Damaged = true
			return
		}
		for len(b) > 0 {
			if len(b) < 4 {
				a.b.Damaged = true
				return
			}
			size := int(b[0])<<8 | int(b[1])
			if size < 2 || size > len(b)-2 {
				a.b.Damaged = true
				return
			}
			a.appendNAL(b[2 : 2+size])
			b = b[2+size:]
		}
	case t == NALUFU:
		if len(p) < 3 {
			a.b.Damaged = true
			return
		}
		fu := p[2]
		start, end := fu&0x80 != 0, fu&0x40 != 0
		if start {
			if a.b.InFU { // the previous fragment never ended
				a.b.Damaged = true
			}
			// The NAL header: F and LayerId from the payload header, the
			// type from the FU header (RFC 7798 section 4.4.3).
			a.b.InFU = a.appendNAL([]byte{p[0]&0x81 | (fu&0x3f)<<1, p[1]})
			if !a.b.InFU {
				return
			}
		}
		if !a.b.InFU {
			a.b.Damaged = true // a middle or end without its start
			return
		}
		if a.b.Continue(p[3:]) && end {
			a.b.InFU = false
		}
	case t == NALUPACI:
		a.b.Damaged = true
	default:
		// Types 51-63 are unspecified; RFC 7798 section 4.4 says to ignore them.
	}
}
