package peer

import "encoding/binary"

// twccFeedback is a transport-wide congestion control feedback packet
// (draft-holmer-rmcat-transport-wide-cc-extensions-01, section 3.1), read
// in place: parsing it allocates nothing, where pion's rtcp package
// allocates a chunk per two bytes and a delta per packet received.
//
// parseTWCC accepts exactly what pion's TransportLayerCC.Unmarshal accepts
// (a differential fuzz test holds them together), and each reports the same
// packets received with the same deltas.
type twccFeedback struct {
	base, count uint16
	// ref is the reference time: 24 bits in 64 ms units, wrapping every
	// 12.4 days (see refClock).
	ref    uint32
	chunks []byte // the packet status chunks
	deltas []byte // the receive deltas and any padding
}

const (
	twccHeader   = 20 // RTCP header, two SSRCs, base, count, reference, fb count
	twccDeltaUs  = 250
	symSmall     = 1
	symLarge     = 2
	runChunk     = 0
	chunkBytes   = 2
	vectorTwoBit = 1
)

// NextRTCP splits the first packet off a compound RTCP buffer by the
// length in its header. ok is false when buf does not start with a whole
// packet (too short, or a length past its end).
func NextRTCP(buf []byte) (p, rest []byte, ok bool) {
	if len(buf) < 4 {
		return nil, buf, false
	}
	n := (int(binary.BigEndian.Uint16(buf[2:4])) + 1) * 4
	if n > len(buf) {
		return nil, buf, false
	}
	return buf[:n], buf[n:], true
}

// parseTWCC reads p, one RTCP packet (not a compound), as TWCC feedback.
func parseTWCC(p []byte) (fb twccFeedback, ok bool) {
	if len(p) < twccHeader || p[0]>>6 != 2 || p[0]&0x1f != 15 || p[1] != 205 {
		return fb, false
	}
	total := 4 * (int(binary.BigEndian.Uint16(p[2:4])) + 1)
	if total < twccHeader || total > len(p) {
		return fb, false
	}
	p = p[:total]
	fb.base = binary.BigEndian.Uint16(p[12:14])
	fb.count = binary.BigEndian.Uint16(p[14:16])
	fb.ref = uint32(p[16])<<16 | uint32(p[17])<<8 | uint32(p[18])
	pos, done, need := twccHeader, 0, 0
	for done < int(fb.count) {
		// As pion: a chunk must leave at least one byte after it.
		if pos+chunkBytes >= total {
			return fb, false
		}
		n, small, large := chunk(binary.BigEndian.Uint16(p[pos:]), int(fb.count)-done)
		done += n
		need += small + 2*large
		pos += chunkBytes
	}
	if need > total-pos {
		return fb, false
	}
	fb.chunks, fb.deltas = p[twccHeader:pos], p[pos:]
	return fb, true
}

// chunk returns how many of at most left statuses c covers, and how many
// of them were received with a small and with a large delta.
func chunk(c uint16, left int) (n, small, large int) {
	if c>>15 == runChunk {
		n = min(int(c&0x1fff), left)
		switch c >> 13 & 3 {
		case symSmall:
			small = n
		case symLarge:
			large = n
		}
		return n, small, large
	}
	if c>>14&1 == vectorTwoBit {
		n = min(7, left)
		for i := 0; i < n; i++ {
			switch c >> (12 - 2*i) & 3 {
			case symSmall:
				small++
			case symLarge:
				large++
			}
		}
		return n, small, large
	}
	n = min(14, left)
	for i := 0; i < n; i++ {
		small += int(c >> (13 - i) & 1)
	}
	return n, small, 0
}

// symbol is the status of the i-th packet a chunk covers.
func symbol(c uint16, i int) uint16 {
	switch {
	case c>>15 == runChunk:
		return c >> 13 & 3
	case c>>14&1 == vectorTwoBit:
		return c >> (12 - 2*i) & 3
	default:
		return c >> (13 - i) & 1
	}
}

// received calls fn for each packet fb reports received, in order, with
// its receive time in µs: ref (the reference time in µs, unwrapped by the
// caller) plus the deltas so far. Its work is bounded by the packet's
// size: a run of packets not received is skipped in one step.
func (fb *twccFeedback) received(ref int64, fn func(seq uint16, recv int64)) {
	seq, left, d, recv := fb.base, int(fb.count), fb.deltas, ref
	for k := 0; left > 0; k += chunkBytes {
		c := binary.BigEndian.Uint16(fb.chunks[k:])
		n, small, large := chunk(c, left)
		left -= n
		if small+large == 0 {
			seq += uint16(n)
			continue
		}
		for i := 0; i < n; i++ {
			switch symbol(c, i) {
			case symSmall:
				recv += int64(d[0]) * twccDeltaUs
				d = d[1:]
				fn(seq, recv)
			case symLarge:
				recv += int64(int16(binary.BigEndian.Uint16(d))) * twccDeltaUs
				d = d[2:]
				fn(seq, recv)
			}
			seq++
		}
	}
}

// refClock unwraps the 24-bit reference times of one viewer's feedback
// onto a continuous µs clock, as pion's feedback adapter does: each is
// taken in the epoch nearest the previous one.
type refClock struct {
	last int64 // unwrapped, 64 ms units
	set  bool
}

func (c *refClock) unwrap(ref uint32) int64 {
	if !c.set {
		c.last, c.set = int64(ref), true
	} else {
		c.last += int64((ref-uint32(c.last)+1<<23)&0xffffff) - 1<<23
	}
	return c.last * 64000
}
