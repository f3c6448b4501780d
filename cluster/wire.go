package cluster

import (
	"encoding/binary"
	"math"
	"unicode/utf8"
)

// The wire format of metadata, directory broadcasts and push/pull state is
// a hand-rolled binary one: a leading kind and version byte, then unsigned
// varints and length-prefixed strings. Every length is checked against the
// bytes left and a per-field limit before anything is allocated, so a
// hostile peer can make the decoder fail but never allocate much or panic.
// Decoders ignore bytes after the fields they know: a later version of the
// same major layout may append fields, and an incompatible one changes the
// version byte, which older nodes refuse.

// writer appends fields to a byte slice.
type writer struct{ b []byte }

func (w *writer) byte(v byte)      { w.b = append(w.b, v) }
func (w *writer) uvarint(v uint64) { w.b = binary.AppendUvarint(w.b, v) }
func (w *writer) u64(v uint64)     { w.b = binary.BigEndian.AppendUint64(w.b, v) }
func (w *writer) str(s string) {
	w.uvarint(uint64(len(s)))
	w.b = append(w.b, s...)
}
func (w *writer) strs(ss []string) {
	w.uvarint(uint64(len(ss)))
	for _, s := range ss {
		w.str(s)
	}
}

// reader consumes fields from a byte slice. The first error sticks: later
// reads return zero values, and the caller checks err once at the end.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.b = nil
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 1 {
		r.fail(errShort)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(errShort)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) u64() uint64 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 8 {
		r.fail(errShort)
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

// count reads a list length and checks it against max and against the
// bytes left (every element takes at least one byte).
func (r *reader) count(max int) int {
	n := r.uvarint()
	if r.err != nil {
		return 0
	}
	if n > uint64(max) || n > uint64(len(r.b)) {
		r.fail(errTooMany)
		return 0
	}
	return int(n)
}

// str reads a string of at most max bytes that must be valid UTF-8 with no
// control characters.
func (r *reader) str(max int) string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(max) {
		r.fail(errTooLong)
		return ""
	}
	if n > uint64(len(r.b)) {
		r.fail(errShort)
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	if !printable(s) {
		r.fail(errBadString)
		return ""
	}
	return s
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// clampUint converts a decoded varint to an int without overflow.
func clampUint(v uint64, max int) int {
	if v > uint64(max) {
		return max
	}
	return int(v)
}

// cpuScale is the fixed-point scale of CPU load on the wire (basis points).
const cpuScale = 10000

func encodeCPU(v float64) uint64 {
	switch {
	case math.IsNaN(v) || v <= 0:
		return 0
	case v >= maxCPU:
		return maxCPU * cpuScale
	}
	return uint64(math.Round(v * cpuScale))
}

func decodeCPU(v uint64) float64 {
	if v > maxCPU*cpuScale {
		v = maxCPU * cpuScale
	}
	return float64(v) / cpuScale
}
