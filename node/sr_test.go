package node

import (
	"errors"
	"io"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"

	"github.com/cascade-cdn/cascade/media/mediatest"
)

// seenReport is a sender report with what the viewer had when it came.
type seenReport struct {
	sr      rtcp.SenderReport
	at      time.Time
	packets int64  // video packets received so far
	lastTS  uint32 // timestamp of the latest video packet
}

// ntpToTime is the inverse of an NTP timestamp (RFC 3550, section 4).
func ntpToTime(ntp uint64) time.Time {
	sec := int64(ntp>>32) - 2_208_988_800
	frac := float64(ntp&0xffffffff) / (1 << 32)
	return time.Unix(sec, int64(frac*1e9))
}

// TestSenderReports: each of a viewer's tracks gets an RTCP sender report
// about once a second. Its NTP time is the server's clock (this machine's),
// its RTP time advances at the track's clock rate and sits near the
// timestamps the viewer is receiving, and its counts follow what was sent.
// (The session makes these reports itself, without pion's interceptor.)
// The viewer's receiver reports answering them give its round trip.
func TestSenderReports(t *testing.T) {
	n := startNode(t)
	publish(t, n, "live", mediatest.PublisherOptions{})
	v := watch(t, n, "live")
	if _, err := v.FirstVideo(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	reports := map[webrtc.RTPCodecType][]seenReport{}
	var wg sync.WaitGroup
	for _, r := range v.PC.GetReceivers() {
		tr := r.Track()
		if tr == nil {
			continue
		}
		kind, ssrc := tr.Kind(), uint32(tr.SSRC())
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				pkts, _, err := r.ReadRTCP()
				if err != nil {
					if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
						t.Logf("read RTCP: %v", err)
					}
					return
				}
				now := time.Now()
				for _, p := range pkts {
					if sr, ok := p.(*rtcp.SenderReport); ok && sr.SSRC == ssrc {
						mu.Lock()
						reports[kind] = append(reports[kind], seenReport{*sr, now, v.VideoPackets.Load(), v.LastVideoTimestamp.Load()})
						mu.Unlock()
					}
				}
			}
		}()
	}
	eventually(t, "three sender reports on each track", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(reports[webrtc.RTPCodecTypeVideo]) >= 3 && len(reports[webrtc.RTPCodecTypeAudio]) >= 3
	})
	// The viewer's receiver reports answer them: the round trip they
	// tell, on loopback, is a few milliseconds.
	eventually(t, "a round trip from receiver reports", 5*time.Second, func() bool {
		return metricValue(t, n, "cascade_viewer_rtt_seconds_count") > 0
	})
	if avg := metricValue(t, n, "cascade_viewer_rtt_seconds_sum") / metricValue(t, n, "cascade_viewer_rtt_seconds_count"); avg > 0.1 {
		t.Errorf("round trip on loopback %.3f s, from receiver reports", avg)
	}
	v.PC.Close()
	wg.Wait()

	for kind, clock := range map[webrtc.RTPCodecType]float64{webrtc.RTPCodecTypeVideo: 90000, webrtc.RTPCodecTypeAudio: 48000} {
		rs := reports[kind]
		for i, r := range rs {
			if d := r.at.Sub(ntpToTime(r.sr.NTPTime)); math.Abs(d.Seconds()) > 0.5 {
				t.Errorf("%s report %d: NTP time %v off the receive time by %v", kind, i, ntpToTime(r.sr.NTPTime), d)
			}
			if i == 0 {
				continue
			}
			p := rs[i-1]
			dt := ntpToTime(r.sr.NTPTime).Sub(ntpToTime(p.sr.NTPTime)).Seconds()
			if dt < 0.5 || dt > 2 {
				t.Errorf("%s reports %v apart, want about 1 s", kind, dt)
				continue
			}
			if rate := float64(r.sr.RTPTime-p.sr.RTPTime) / dt; math.Abs(rate/clock-1) > 0.1 {
				t.Errorf("%s report %d: RTP time advanced %.0f a second, want %.0f", kind, i, rate, clock)
			}
			if r.sr.PacketCount <= p.sr.PacketCount || r.sr.OctetCount <= p.sr.OctetCount {
				t.Errorf("%s report %d: counts %d/%d after %d/%d", kind, i, r.sr.PacketCount, r.sr.OctetCount, p.sr.PacketCount, p.sr.OctetCount)
			}
			if kind != webrtc.RTPCodecTypeVideo {
				continue
			}
			// The report's RTP time is now on the track's clock: within a
			// few frames of what the viewer is receiving on loopback.
			if d := int32(r.sr.RTPTime - r.lastTS); d < -9000 || d > 18000 {
				t.Errorf("video report %d: RTP time %d, the viewer's latest timestamp %d (%+.0f ms)", i, r.sr.RTPTime, r.lastTS, float64(d)/90)
			}
			if got, want := int64(r.sr.PacketCount), r.packets; got < want-100 || got > want+100 {
				t.Errorf("video report %d: %d packets sent, the viewer had received %d", i, got, want)
			}
		}
	}
}
