package node

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/cascade-cdn/cascade/media/mediatest"
	"github.com/cascade-cdn/cascade/peer"
	"github.com/cascade-cdn/cascade/wish"
)

// TestICERestartKeepsMedia restarts ICE on a connected viewer the way RFC
// 9725 section 4.3.2 describes: the client sends its new credentials and
// candidates in a PATCH, applies the server's answer fragment, and media
// keeps flowing over the new ICE session.
func TestICERestartKeepsMedia(t *testing.T) {
	n := startNode(t)
	publish(t, n, "live", mediatest.PublisherOptions{})
	v := watch(t, n, "live")
	eventually(t, "frames before the restart", 10*time.Second, func() bool { return v.VideoFrames.Load() > 10 })

	oldUfrag := peer.Ufrag(v.PC.RemoteDescription().SDP)
	states := make(chan webrtc.ICEConnectionState, 16)
	v.PC.OnICEConnectionStateChange(func(s webrtc.ICEConnectionState) {
		select {
		case states <- s:
		default:
		}
	})
	offer, err := v.PC.CreateOffer(&webrtc.OfferOptions{ICERestart: true})
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(v.PC)
	if err := v.PC.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	local := v.PC.LocalDescription().SDP
	var frag strings.Builder
	for _, l := range strings.Split(local, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "a=ice-ufrag:") || strings.HasPrefix(l, "a=ice-pwd:") || strings.HasPrefix(l, "a=candidate:") {
			if !strings.Contains(frag.String(), l) {
				frag.WriteString(l + "\r\n")
			}
		}
	}
	resp := do(t, n, "PATCH", v.Location, "application/trickle-ice-sdpfrag", frag.String(), map[string]string{"If-Match": "*"})
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("PATCH restart: %d %s", resp.StatusCode, body)
	}
	answerFrag, err := wish.ParseFragment(string(body))
	if err != nil {
		t.Fatal(err)
	}
	if answerFrag.Ufrag == "" || answerFrag.Ufrag == oldUfrag {
		t.Fatalf("server kept its ICE credentials (%q)", answerFrag.Ufrag)
	}
	// The answer is the previous one with the new credentials and candidates.
	prev := v.PC.RemoteDescription().SDP
	var answer strings.Builder
	for _, l := range strings.SplitAfter(prev, "\n") {
		t := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(t, "a=ice-ufrag:"):
			answer.WriteString("a=ice-ufrag:" + answerFrag.Ufrag + "\r\n")
		case strings.HasPrefix(t, "a=ice-pwd:"):
			answer.WriteString("a=ice-pwd:" + answerFrag.Pwd + "\r\n")
		case strings.HasPrefix(t, "a=candidate:"), strings.HasPrefix(t, "a=end-of-candidates"):
		default:
			answer.WriteString(l)
		}
	}
	if err := v.PC.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer.String()}); err != nil {
		t.Fatal(err)
	}
	for _, c := range answerFrag.Candidates {
		mid := "0"
		if err := v.PC.AddICECandidate(webrtc.ICECandidateInit{Candidate: c.Value, SDPMid: &mid}); err != nil {
			t.Fatal(err)
		}
	}
	// The new ICE session checks and connects with the server's new
	// credentials; media goes on over it.
	deadline := time.After(15 * time.Second)
	for reconnected := false; !reconnected; {
		select {
		case s := <-states:
			reconnected = s == webrtc.ICEConnectionStateConnected || s == webrtc.ICEConnectionStateCompleted
			if s == webrtc.ICEConnectionStateFailed {
				t.Fatal("ICE failed after the restart")
			}
		case <-deadline:
			t.Fatal("ICE did not reconnect after the restart")
		}
	}
	before := v.VideoFrames.Load()
	eventually(t, "frames after the restart", 15*time.Second, func() bool { return v.VideoFrames.Load() > before+30 })
}
