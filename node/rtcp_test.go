package node

import (
	"math"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"

	"github.com/cascade-cdn/cascade/media/mediatest"
)

// videoSSRC is the SSRC of the video track a viewer receives.
func videoSSRC(t *testing.T, v *mediatest.Viewer) uint32 {
	t.Helper()
	for _, r := range v.PC.GetReceivers() {
		if tr := r.Track(); tr != nil && tr.Kind() == webrtc.RTPCodecTypeVideo {
			return uint32(tr.SSRC())
		}
	}
	t.Fatal("the viewer has no video track")
	return 0
}

// TestHostileViewerRTCP: one viewer sends what a broken or hostile client
// could: a NACK for thousands of packets, a flood of keyframe requests,
// REMBs of 0 and of the largest value, TWCC feedback declaring 65 535
// packets, receiver reports answering sender reports never sent, and
// malformed packets. The server does bounded work for each,
// counts what it refused, asks the publisher for at most one keyframe a
// second, and another viewer's frames keep coming, as do the hostile one's.
func TestHostileViewerRTCP(t *testing.T) {
	n := startNode(t)
	publish(t, n, "live", mediatest.PublisherOptions{})
	bad, good := watch(t, n, "live"), watch(t, n, "live")
	for _, v := range []*mediatest.Viewer{bad, good} {
		if _, err := v.FirstVideo(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	st := n.reg.Get("live")
	if st == nil {
		t.Fatal("stream not registered")
	}
	ssrc := videoSSRC(t, bad)
	keyReqs0 := st.Video.Stats().KeyframeRequests
	nacks0 := metricValue(t, n, "cascade_viewer_nacks_total")
	rtx0 := metricValue(t, n, "cascade_viewer_retransmits_total")
	plis0 := metricValue(t, n, "cascade_viewer_plis_total")
	bad0 := metricValue(t, n, "cascade_viewer_bad_rtcp_total")
	goodFrames0, badFrames0 := good.VideoFrames.Load(), bad.VideoFrames.Load()

	// 200 pairs of 17 numbers each: 3 400 retransmissions asked in one
	// compound.
	nack := &rtcp.TransportLayerNack{MediaSSRC: ssrc}
	for i := 0; i < 200; i++ {
		nack.Nacks = append(nack.Nacks, rtcp.NackPair{PacketID: uint16(i * 17), LostPackets: 0xffff})
	}
	send := func(pkts ...rtcp.Packet) {
		t.Helper()
		if err := bad.PC.WriteRTCP(pkts); err != nil {
			t.Fatalf("write RTCP: %v", err)
		}
	}
	send(nack)
	// Receiver reports answering no sender report the server made: one an
	// hour old, one held for longer than there has been. Neither tells a
	// round trip.
	rtt0 := metricValue(t, n, "cascade_viewer_rtt_seconds_sum")
	mid := uint32(uint64(time.Now().Unix()+2_208_988_800) << 16)
	send(&rtcp.ReceiverReport{Reports: []rtcp.ReceptionReport{{SSRC: ssrc, LastSenderReport: mid - 3600<<16}}})
	send(&rtcp.ReceiverReport{Reports: []rtcp.ReceptionReport{{SSRC: ssrc, LastSenderReport: mid, Delay: 60 << 16}}})
	const plis = 50
	for i := 0; i < plis; i++ {
		send(&rtcp.PictureLossIndication{MediaSSRC: ssrc})
	}
	send(&rtcp.ReceiverEstimatedMaximumBitrate{Bitrate: 0, SSRCs: []uint32{ssrc}})
	send(&rtcp.ReceiverEstimatedMaximumBitrate{Bitrate: math.MaxFloat32, SSRCs: []uint32{ssrc}})
	// TWCC feedback declaring 65 535 statuses in 24 bytes: refused by the
	// BWE (too short for its statuses).
	twcc := []byte{0x80 | 15, 205, 0, 5, 0, 0, 0, 1, byte(ssrc >> 24), byte(ssrc >> 16), byte(ssrc >> 8), byte(ssrc), 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0x20, 0x01, 0, 0}
	raw := rtcp.RawPacket(twcc)
	send(&raw)
	// Well-formed feedback (pion's parser takes it) declaring 16 382
	// packets lost, over the BWE's budget of 8 192 statuses per read.
	over := rtcp.RawPacket{0x80 | 15, 205, 0, 6, 0, 0, 0, 1, byte(ssrc >> 24), byte(ssrc >> 16), byte(ssrc >> 8), byte(ssrc), 0, 0, 0x3f, 0xfe, 0, 0, 1, 0, 0x1f, 0xff, 0x1f, 0xff, 0, 0, 0, 0}
	send(&over)
	// A REMB without its "REMB" identifier, addressed to the video: pion
	// drops it before the session sees it.
	send(&rtcp.RawPacket{0x80 | 15, 206, 0, 4, 0, 0, 0, 1, byte(ssrc >> 24), byte(ssrc >> 16), byte(ssrc >> 8), byte(ssrc), 'N', 'O', 'P', 'E', 1, 0, 0, 0})

	eventually(t, "the NACKs and PLIs counted", 5*time.Second, func() bool {
		return metricValue(t, n, "cascade_viewer_nacks_total")-nacks0 >= 200*17 &&
			metricValue(t, n, "cascade_viewer_plis_total")-plis0 >= plis
	})
	// The rejected feedback is counted at the writer's next second.
	eventually(t, "the refused RTCP counted", 5*time.Second, func() bool {
		return metricValue(t, n, "cascade_viewer_bad_rtcp_total")-bad0 >= 2
	})
	if got := metricValue(t, n, "cascade_viewer_nacks_total") - nacks0; got != 200*17 {
		t.Errorf("%v sequence numbers NACKed, want %d", got, 200*17)
	}
	if got := metricValue(t, n, "cascade_viewer_retransmits_total") - rtx0; got > 256 {
		t.Errorf("%v retransmissions for one compound, want at most 256", got)
	}
	if got := metricValue(t, n, "cascade_viewer_rtt_seconds_sum") - rtt0; got > 1 {
		t.Errorf("forged receiver reports added %.1f s of round trips", got)
	}
	if got := st.Video.Stats().KeyframeRequests - keyReqs0; got > 2 {
		t.Errorf("%d keyframe requests sent upstream for %d PLIs in well under 2 s, want at most 2", got, plis)
	}
	// Both viewers keep receiving: a second of frames after all that.
	eventually(t, "frames at both viewers", 10*time.Second, func() bool {
		return good.VideoFrames.Load()-goodFrames0 >= 60 && bad.VideoFrames.Load()-badFrames0 >= 60
	})
	if _, vs := n.Sessions(); vs != 2 {
		t.Errorf("%d viewer sessions, want 2", vs)
	}
}
