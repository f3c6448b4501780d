// Package au holds what the H.264 and H.265 depacketisers share: an access
// unit rebuilt from RTP in Annex-B form, with losses noticed by sequence
// number and its size bounded. The codec packages parse their payload
// formats (RFC 6184, RFC 7798) into it.
package au

// DefaultMax bounds one access unit: a 4K intra frame at high quality
// stays well below it, and hostile input cannot grow memory past it.
const DefaultMax = 4 << 20

// Unit is one access unit rebuilt from RTP, in Annex-B form.
type Unit struct {
	// Data aliases the builder's buffer: valid until its next packet.
	Data      []byte
	Timestamp uint32
	// Keyframe: the unit carries parameter sets or a random-access slice
	// (each codec says which).
	Keyframe bool
	// Damaged: packets of this unit were lost or malformed; a decoder may
	// conceal the damage, or the caller may drop it and wait for a keyframe.
	Damaged bool
}

// StartCode opens every NAL unit of a Unit's Data.
var StartCode = []byte{0, 0, 0, 1}

// Builder collects the NAL units of one access unit at a time. A codec's
// assembler calls Next for every packet, then adds its payload with
// StartNAL and Continue (setting Damaged and Keyframe as it parses), and
// Finish on the marker bit. It is not safe for concurrent use.
type Builder struct {
	// Max bounds a unit's size; 0 means DefaultMax.
	Max int
	// InFU: a fragmented NAL unit is open and takes Continue.
	InFU bool
	// Damaged and Keyframe describe the unit being built.
	Damaged  bool
	Keyframe bool

	buf     []byte
	ts      uint32
	lastSeq uint16
	started bool
}

// Next notes a packet's sequence number and timestamp, before its payload
// is added.
func (b *Builder) Next(seq uint16, ts uint32) {
	if b.started && seq != b.lastSeq+1 {
		b.Damaged = true // a loss: whatever fragment was open is gone
		b.InFU = false
	}
	if b.started && ts != b.ts && len(b.buf) > 0 {
		// A new unit began without the last one's marker: the marker
		// packet was lost.
		b.reset()
		b.Damaged = true
	}
	b.started, b.lastSeq, b.ts = true, seq, ts
}

// Finish returns the unit the marker bit completes and starts the next.
func (b *Builder) Finish() *Unit {
	u := &Unit{Data: b.buf, Timestamp: b.ts, Keyframe: b.Keyframe, Damaged: b.Damaged || b.InFU || len(b.buf) == 0}
	b.reset()
	return u
}

func (b *Builder) reset() {
	b.buf = b.buf[:0]
	b.InFU, b.Damaged, b.Keyframe = false, false, false
}

func (b *Builder) max() int {
	if b.Max > 0 {
		return b.Max
	}
	return DefaultMax
}

// StartNAL starts a new NAL unit with nal (its header, and for a whole
// unit its body). Past the size bound it adds nothing, marks the unit
// damaged and returns false.
func (b *Builder) StartNAL(nal []byte) bool {
	if len(b.buf)+len(StartCode)+len(nal) > b.max() {
		b.Damaged = true
		return false
	}
	b.buf = append(b.buf, StartCode...)
	b.buf = append(b.buf, nal...)
	return true
}

// Continue appends a fragment's bytes to the open NAL unit; the caller
// has checked InFU. Past the size bound the fragment is dropped, the NAL
// unit closed and the unit damaged.
func (b *Builder) Continue(frag []byte) bool {
	if len(b.buf)+len(frag) > b.max() {
		b.Damaged, b.InFU = true, false
		return false
	}
	b.buf = append(b.buf, frag...)
	return true
}
