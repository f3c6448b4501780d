package transcode

import (
	"testing"

	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/transcode/av"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

// rtpRecords encodes RTP payloads as one fuzz input: per packet a flags
// byte (bit 0: marker, bit 1: a packet was lost before this one), a 16-bit
// length and the payload.
func rtpRecords(payloads [][]byte, markers []bool) []byte {
	var b []byte
	for i, p := range payloads {
		var flags byte
		if markers[i] {
			flags = 1
		}
		b = append(b, flags, byte(len(p)>>8), byte(len(p)))
		b = append(b, p...)
	}
	return b
}

// FuzzH265Source feeds hostile RTP payloads through the H.265 path a
// camera's stream takes (RFC 7798 depacketizing, then libavcodec's hevc
// decoder): whatever the bytes, errors or frames of a sane size, never a
// crash, and bounded work. Seeds are the first access units of a real
// libx265 encode, whole and cut short.
func FuzzH265Source(f *testing.F) {
	aus, _, _ := transcodetest.Make(f, transcodetest.Clip{Codec: "H265", Seconds: "0.2", Size: "320x240"})
	pay := payH265(f)
	var all []byte
	for i, au := range aus[:3] {
		payloads, _ := pay(au)
		markers := make([]bool, len(payloads))
		markers[len(markers)-1] = true
		rec := rtpRecords(payloads, markers)
		f.Add(rec)
		if i == 0 {
			f.Add(rec[:len(rec)/2]) // an IDR cut short
		}
		all = append(all, rec...)
	}
	f.Add(all)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 256<<10 {
			return
		}
		asm, err := newAssembler("H265")
		if err != nil {
			t.Fatal(err)
		}
		dec, err := av.NewDecoder("H265")
		if err != nil {
			t.Fatal(err)
		}
		defer dec.Close()
		var seq uint16
		for ts := uint32(0); len(in) >= 3; {
			flags, n := in[0], int(in[1])<<8|int(in[2])
			in = in[3:]
			n = min(n, len(in))
			pk := &media.Packet{SequenceNumber: seq, Timestamp: ts, Marker: flags&1 != 0, Payload: in[:n]}
			in = in[n:]
			seq++
			if flags&2 != 0 {
				seq++
			}
			au, auTS, _ := asm.push(pk)
			if pk.Marker {
				ts += 3000
			}
			if len(au) == 0 {
				continue
			}
			_ = dec.Decode(au, int64(auTS), func(fr *av.Frame) error {
				if fr.Width() <= 0 || fr.Height() <= 0 || fr.Width() > 1<<15 || fr.Height() > 1<<15 {
					t.Fatalf("frame of %dx%d", fr.Width(), fr.Height())
				}
				return nil
			})
		}
	})
}
