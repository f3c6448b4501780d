package h265

// DefaultMaxAU bounds one access unit: a 4K intra frame at high quality
// stays well below it, and hostile input cannot grow memory past it.
const DefaultMaxAU = 4 << 20

// AU is one access unit rebuilt from RTP, in Annex-B form.
type AU struct {
	// Data aliases the assembler's buffer: valid until the next Push.
	Data      []byte
	Timestamp uint32
	// Keyframe: the unit carries a VPS or SPS, or an IRAP slice.
	Keyframe bool
	// Damaged: packets of this unit were lost or malformed; a decoder may
	// conceal the damage, or the caller may drop it and wait for a keyframe.
	Damaged bool
}

// Assembler rebuilds access units from the RTP payloads of one H.265
// stream (RFC 7798: single NAL unit packets, aggregation packets and
// fragmentation units, without DONL fields), noticing losses by sequence
// number. PACI packets are not supported and mark the unit damaged. It is
// not safe for concurrent use.
type Assembler struct {
	// MaxAU bounds a unit's size; 0 means DefaultMaxAU.
	MaxAU int

	buf      []byte
	ts       uint32
	lastSeq  uint16
	started  bool
	inFU     bool
	damaged  bool
	keyframe bool
}

var startCode = []byte{0, 0, 0, 1}

// Push adds one packet. It returns the access unit that this packet's
// marker bit completes, or nil.
func (a *Assembler) Push(seq uint16, ts uint32, marker bool, payload []byte) *AU {
	if a.started && seq != a.lastSeq+1 {
		a.damaged = true // a loss: whatever fragment was open is gone
		a.inFU = false
	}
	if a.started && ts != a.ts && len(a.buf) > 0 {
		// A new unit began without the last one's marker: the marker
		// packet was lost.
		a.reset()
		a.damaged = true
	}
	a.started, a.lastSeq, a.ts = true, seq, ts
	a.add(payload)
	if !marker {
		return nil
	}
	au := &AU{Data: a.buf, Timestamp: ts, Keyframe: a.keyframe, Damaged: a.damaged || a.inFU || len(a.buf) == 0}
	a.reset()
	return au
}

func (a *Assembler) reset() {
	a.buf = a.buf[:0]
	a.inFU, a.damaged, a.keyframe = false, false, false
}

func (a *Assembler) max() int {
	if a.MaxAU > 0 {
		return a.MaxAU
	}
	return DefaultMaxAU
}

// appendNAL starts a new NAL unit in the buffer; nal holds at least its
// two-byte header.
func (a *Assembler) appendNAL(nal []byte) bool {
	if len(a.buf)+len(startCode)+len(nal) > a.max() {
		a.damaged = true
		return false
	}
	a.buf = append(a.buf, startCode...)
	a.buf = append(a.buf, nal...)
	if t := Type(nal[0]); t == NALUVPS || t == NALUSPS || IsIRAP(t) {
		a.keyframe = true
	}
	return true
}

func (a *Assembler) add(p []byte) {
	if len(p) < 2 {
		a.damaged = true
		return
	}
	switch t := Type(p[0]); {
	case t < NALUAP:
		a.appendNAL(p)
	case t == NALUAP:
		b := p[2:]
		if len(b) == 0 {
			a.damaged = true
			return
		}
		for len(b) > 0 {
			if len(b) < 4 {
				a.damaged = true
				return
			}
			size := int(b[0])<<8 | int(b[1])
			if size < 2 || size > len(b)-2 {
				a.damaged = true
				return
			}
			a.appendNAL(b[2 : 2+size])
			b = b[2+size:]
		}
	case t == NALUFU:
		if len(p) < 3 {
			a.damaged = true
			return
		}
		fu := p[2]
		start, end := fu&0x80 != 0, fu&0x40 != 0
		if start {
			if a.inFU { // the previous fragment never ended
				a.damaged = true
			}
			// The NAL header: F and LayerId from the payload header, the
			// type from the FU header (RFC 7798 section 4.4.3).
			if !a.appendNAL([]byte{p[0]&0x81 | (fu&0x3f)<<1, p[1]}) {
				a.inFU = false
				return
			}
			a.inFU = true
		}
		if !a.inFU {
			a.damaged = true // a middle or end without its start
			return
		}
		if len(a.buf)+len(p)-3 > a.max() {
			a.damaged, a.inFU = true, false
			return
		}
		a.buf = append(a.buf, p[3:]...)
		if end {
			a.inFU = false
		}
	case t == NALUPACI:
		a.damaged = true
	default:
		// Types 51-63 are unspecified; RFC 7798 section 4.4 says to ignore them.
	}
}
