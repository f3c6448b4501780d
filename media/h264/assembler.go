package h264

import "github.com/cascade-cdn/cascade/media/au"

// DefaultMaxAU bounds one access unit (au.DefaultMax).
const DefaultMaxAU = au.DefaultMax

// AU is one access unit rebuilt from RTP, in Annex-B form.
type AU = au.Unit

// Assembler rebuilds access units from the RTP payloads of one H.264
// stream (RFC 6184: single NAL unit, STAP-A and FU-A packets), noticing
// losses by sequence number. It is not safe for concurrent use.
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

// appendNAL starts a new NAL unit; nal holds at least its header byte.
func (a *Assembler) appendNAL(nal []byte) bool {
	if !a.b.StartNAL(nal) {
		return false
	}
	switch nal[0] & 0x1f {
	case NALUSPS, NALUIDR:
		a.b.Keyframe = true
	}
	return true
}

func (a *Assembler) add(p []byte) {
	if len(p) == 0 {
		a.b.Damaged = true
		return
	}
	switch t := p[0] & 0x1f; {
	case t >= 1 && t <= 23:
		a.appendNAL(p)
	case t == NALUSTAPA:
		b := p[1:]
		for len(b) > 0 {
			if len(b) < 3 {
				a.b.Damaged = true
				return
			}
			size := int(b[0])<<8 | int(b[1])
			if size == 0 || size > len(b)-2 {
				a.b.Damaged = true
				return
			}
			a.appendNAL(b[2 : 2+size])
			b = b[2+size:]
		}
	case t == NALUFUA:
		if len(p) < 3 {
			a.b.Damaged = true
			return
		}
		start, end := p[1]&0x80 != 0, p[1]&0x40 != 0
		if start {
			if a.b.InFU { // the previous fragment never ended
				a.b.Damaged = true
			}
			a.b.InFU = a.appendNAL([]byte{p[0]&0xe0 | p[1]&0x1f})
			if !a.b.InFU {
				return
			}
		}
		if !a.b.InFU {
			a.b.Damaged = true // a middle or end without its start
			return
		}
		if a.b.Continue(p[2:]) && end {
			a.b.InFU = false
		}
	default: // STAP-B, MTAP, FU-B and reserved types: not in packetization-mode 1
		a.b.Damaged = true
	}
}
