package peer

import (
	"context"
	"regexp"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/cascade-cdn/cascade/wish"
)

var (
	ufragLine = regexp.MustCompile(`(?m)^a=ice-ufrag:(.*?)\r?$`)
	pwdLine   = regexp.MustCompile(`(?m)^a=ice-pwd:(.*?)\r?$`)
	candLine  = regexp.MustCompile(`(?m)^a=(candidate:.*|end-of-candidates)\r?\n`)
)

// Ufrag returns the first ICE username fragment of an SDP, or "".
func Ufrag(sdp string) string {
	if m := ufragLine.FindStringSubmatch(sdp); m != nil {
		return m[1]
	}
	return ""
}

// ICE gives a session the PATCH side of wish.Session: trickle, ICE restart
// and the remote credentials that tell one from the other. WHIP and WHEP
// sessions embed it.
type ICE struct {
	pc          *webrtc.PeerConnection
	remoteUfrag atomic.Value // string
}

// NewICE starts tracking pc, whose remote offer was offer.
func NewICE(pc *webrtc.PeerConnection, offer string) *ICE {
	i := &ICE{pc: pc}
	i.remoteUfrag.Store(Ufrag(offer))
	return i
}

// RemoteUfrag is the remote's current ICE username fragment.
func (i *ICE) RemoteUfrag() string { v, _ := i.remoteUfrag.Load().(string); return v }

// Trickle adds remote candidates.
func (i *ICE) Trickle(f wish.Fragment) error { return Trickle(i.pc, f) }

// Restart restarts ICE with f's credentials and returns the answer fragment.
func (i *ICE) Restart(f wish.Fragment) (string, error) {
	frag, err := RestartICE(i.pc, f)
	if err == nil {
		i.remoteUfrag.Store(f.Ufrag)
	}
	return frag, err
}

// Trickle adds the fragment's candidates to pc (RFC 8840).
func Trickle(pc *webrtc.PeerConnection, f wish.Fragment) error {
	for _, c := range f.Candidates {
		init := webrtc.ICECandidateInit{Candidate: c.Value}
		if c.Mid != "" {
			mid := c.Mid
			init.SDPMid = &mid
		} else {
			idx := c.MLineIndex
			init.SDPMLineIndex = &idx
		}
		if err := pc.AddICECandidate(init); err != nil {
			return wish.Errorf(400, "bad_fragment", "candidate refused: %v", err)
		}
	}
	return nil
}

// RestartICE restarts ICE with the credentials of f (RFC 9725 section
// 4.3.2): the previous offer is re-applied with the new credentials, which
// makes pion restart its agent, and the answer's new credentials and
// candidates are returned as a fragment.
func RestartICE(pc *webrtc.PeerConnection, f wish.Fragment) (string, error) {
	rd := pc.RemoteDescription()
	if rd == nil {
		return "", wish.Errorf(409, "bad_state", "session has no remote description")
	}
	offer := ufragLine.ReplaceAllLiteralString(rd.SDP, "a=ice-ufrag:"+f.Ufrag+"\r")
	offer = pwdLine.ReplaceAllLiteralString(offer, "a=ice-pwd:"+f.Pwd+"\r")
	offer = candLine.ReplaceAllLiteralString(offer, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Answer(ctx, pc, offer); err != nil {
		return "", wish.Errorf(400, "ice_restart", "ICE restart failed: %v", err)
	}
	if err := Trickle(pc, f); err != nil {
		return "", err
	}
	ufrag, pwd, mid, cands := LocalCandidates(pc)
	return wish.FormatFragment(ufrag, pwd, mid, cands), nil
}
