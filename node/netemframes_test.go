package node

import (
	"slices"
	"testing"
)

// TestNetemFramesAcrossPadding: the lab player assembles frames as
// libwebrtc's packet buffer does around padding. Padding between frames
// (a probe's) breaks nothing; padding that fills a frame's lost first
// packet, or one inside it (the node's answer to a NACK for a rung the
// viewer left), leaves that frame incomplete, and the frames after it
// undecodable until a keyframe.
func TestNetemFramesAcrossPadding(t *testing.T) {
	fuA := func(start, end bool) []byte { // FU-A of a non-IDR slice
		h := byte(1)
		if start {
			h |= 0x80
		}
		if end {
			h |= 0x40
		}
		return []byte{0x5c, h, 0}
	}
	sps := []byte{0x67, 0x42, 0xc0, 0x1e, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0x84}
	pad := &rxPacket{pad: true}
	frame := func(ts uint32, n int) []*rxPacket { // a delta frame of n packets
		var ps []*rxPacket
		for i := range n {
			ps = append(ps, &rxPacket{ts: ts, marker: i == n-1, payload: fuA(i == 0, i == n-1)})
		}
		return ps
	}
	for _, c := range []struct {
		name string
		pkts []*rxPacket
		want []bool // each frame's Complete
	}{
		{"probe padding between frames", slices.Concat(frame(3000, 3), []*rxPacket{pad, pad}, frame(6000, 3)), []bool{true, true}},
		{"a frame's first packet filled with padding", slices.Concat(frame(3000, 3), []*rxPacket{pad}, frame(6000, 3)[1:], frame(9000, 2)), []bool{true, false, true}},
		{"a packet inside a frame filled with padding", slices.Concat(frame(3000, 3), frame(6000, 3)[:1], []*rxPacket{pad}, frame(6000, 3)[2:], frame(9000, 2)), []bool{true, false, true}},
	} {
		v := &netemViewer{pkts: map[uint64]*rxPacket{}}
		key := &rxPacket{ts: 0, marker: true, key: true, payload: sps}
		for i, p := range append([]*rxPacket{key}, c.pkts...) {
			p.at = int64(i)
			v.pkts[uint64(1000+i)] = p
		}
		rep := v.report(false)
		var got []bool
		for _, f := range rep.Frames[1:] {
			got = append(got, f.Complete)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: frames complete %v, want %v", c.name, got, c.want)
		}
		if last := rep.Frames[len(rep.Frames)-1]; !c.want[1] && last.Decodable {
			t.Errorf("%s: the frame after the broken one is decodable", c.name)
		}
	}
}
