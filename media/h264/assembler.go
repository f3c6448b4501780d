package h264

// DefaultMaxAU bounds one access unit: a 4K intra frame at high quality
// stays well below it, and hostile input cannot grow memory past it.
const DefaultMaxAU = 4 << 20

// AU is one access unit rebuilt from RTP, in Annex-B form.
type AU struct {
	// Data aliases the assembler's buffer: valid until the next Push.
	Data      []byte
	Timestamp uint32
	// Keyframe: the unit carries an SPS or an IDR slice.
	Keyframe bool
	// Damaged: packets of this unit were lost or malformed; a decoder may
	// conceal the damage, or the caller may drop it and wait for a keyframe.
	Damaged bool
}

// Assembler rebuilds access units from the RTP payloads of one H.264
// stream (RFC 6184: single NAL unit, STAP-A and FU-A packets), noticing
// losses by sequence number. It is not safe for concurrent use.
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

// appendNAL starts a new NAL unit in the buffer with its header byte.
func (a *Assembler) appendNAL(nal []byte) {
	if len(a.buf)+len(startCode)+len(nal) > a.max() {
		a.damaged = true
		return
	}
	a.buf = append(a.buf, startCode...)
	a.buf = append(a.buf, nal...)
	switch nal[0] & 0x1f {
	case NALUSPS, NALUIDR:
		a.keyframe = true
	}
}

func (a *Assembler) add(p []byte) {
	if len(p) == 0 {
		a.damaged = true
		return
	}
	switch t := p[0] & 0x1f; {
	case t >= 1 && t <= 23:
		a.appendNAL(p)
	case t == NALUSTAPA:
		b := p[1:]
		for len(b) > 0 {
			if len(b) < 3 {
				a.damaged = true
				return
			}
			size := int(b[0])<<8 | int(b[1])
			if size == 0 || size > len(b)-2 {
				a.damaged = true
				return
			}
			a.appendNAL(b[2 : 2+size])
			b = b[2+size:]
		}
	case t == NALUFUA:
		if len(p) < 3 {
			a.damaged = true
			return
		}
		start, end := p[1]&0x80 != 0, p[1]&0x40 != 0
		if start {
			if a.inFU { // the previous fragment never ended
				a.damaged = true
			}
			a.appendNAL([]byte{p[0]&0xe0 | p[1]&0x1f})
			a.inFU = true
		}
		if !a.inFU {
			a.damaged = true // a middle or end without its start
			return
		}
		if len(a.buf)+len(p)-2 > a.max() {
			a.damaged, a.inFU = true, false
			return
		}
		a.buf = append(a.buf, p[2:]...)
		if end {
			a.inFU = false
		}
	default: // STAP-B, MTAP, FU-B and reserved types: not in packetization-mode 1
		a.damaged = true
	}
}
