package lite

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// The answer's codecs. Video is always offered as constrained baseline
// (DESIGN.md), whatever the offer's payload type called it.
const (
	h264Fmtp = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
	opusFmtp = "minptime=10;useinbandfec=1"
	cname    = "cascade"
)

// answer writes the SDP answer to o (RFC 8829 section 5.3): one bundle
// of the first usable video and audio sections, the others rejected;
// Cascade is ICE-lite (RFC 8445 section 2.5) and sends only. It sets the
// tracks' MID and payload type from the sections they are sent in; a kind
// with no track is answered inactive.
func answer(o *offer, ufrag, pwd, fingerprint string, candidates []string, video, audio *Track) string {
	var b strings.Builder
	var id [8]byte
	rand.Read(id[:])
	fmt.Fprintf(&b, "v=0\r\no=- %d 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", binary.BigEndian.Uint64(id[:])>>1)
	b.WriteString("a=ice-lite\r\n")
	taken := map[string]bool{}
	var bundle []string
	accepted := make([]bool, len(o.medias))
	for i, m := range o.medias {
		if m.pt >= 0 && !taken[m.kind] {
			taken[m.kind] = true
			accepted[i] = true
			bundle = append(bundle, m.mid)
		}
	}
	b.WriteString("a=group:BUNDLE " + strings.Join(bundle, " ") + "\r\n")
	b.WriteString("a=msid-semantic: WMS " + cname + "\r\n")
	setup := "passive"
	if o.active {
		setup = "active"
	}
	first := true
	for i, m := range o.medias {
		if !accepted[i] {
			// Rejected (RFC 8829 section 5.3.1): port 0, nothing else.
			fmts := m.fmt0
			if fmts == "" {
				fmts = "0"
			}
			proto := m.proto
			if proto == "" {
				proto = "UDP/TLS/RTP/SAVPF"
			}
			fmt.Fprintf(&b, "m=%s 0 %s %s\r\nc=IN IP4 0.0.0.0\r\na=mid:%s\r\na=inactive\r\n", m.kind, proto, fmts, m.mid)
			continue
		}
		pt := strconv.Itoa(m.pt)
		fmt.Fprintf(&b, "m=%s 9 UDP/TLS/RTP/SAVPF %s\r\nc=IN IP4 0.0.0.0\r\n", m.kind, pt)
		b.WriteString("a=ice-ufrag:" + ufrag + "\r\na=ice-pwd:" + pwd + "\r\n")
		b.WriteString("a=fingerprint:" + fingerprint + "\r\na=setup:" + setup + "\r\n")
		b.WriteString("a=mid:" + m.mid + "\r\n")
		if o.twccID != 0 && m.twcc {
			// Only where offered (RFC 8285, section 6).
			fmt.Fprintf(&b, "a=extmap:%d %s\r\n", o.twccID, TransportCCURI)
		}
		tr := video
		if m.kind == "audio" {
			tr = audio
		}
		if tr != nil && m.recv {
			tr.MID, tr.PT, tr.TWCC = m.mid, uint8(m.pt), o.twccID != 0 && m.twcc
			b.WriteString("a=sendonly\r\n")
			fmt.Fprintf(&b, "a=msid:%s %s\r\n", cname, tr.Kind)
		} else {
			b.WriteString("a=inactive\r\n")
		}
		b.WriteString("a=rtcp-mux\r\na=rtcp-mux-only\r\n")
		if o.rsize {
			b.WriteString("a=rtcp-rsize\r\n")
		}
		if m.kind == "video" {
			fmt.Fprintf(&b, "a=rtpmap:%s H264/90000\r\n", pt)
			for _, fb := range []string{"nack", "nack pli", "ccm fir", "transport-cc"} {
				fmt.Fprintf(&b, "a=rtcp-fb:%s %s\r\n", pt, fb)
			}
			fmt.Fprintf(&b, "a=fmtp:%s %s\r\n", pt, h264Fmtp)
		} else {
			fmt.Fprintf(&b, "a=rtpmap:%s opus/48000/2\r\n", pt)
			fmt.Fprintf(&b, "a=rtcp-fb:%s transport-cc\r\n", pt)
			fmt.Fprintf(&b, "a=fmtp:%s %s\r\n", pt, opusFmtp)
		}
		if tr != nil && m.recv {
			fmt.Fprintf(&b, "a=ssrc:%d cname:%s\r\na=ssrc:%d msid:%s %s\r\n", tr.SSRC, cname, tr.SSRC, cname, tr.Kind)
		}
		if first {
			// One candidate list serves the bundle (RFC 8843 section 7.1.2).
			for _, c := range candidates {
				b.WriteString("a=" + c + "\r\n")
			}
			b.WriteString("a=end-of-candidates\r\n")
			first = false
		}
	}
	return b.String()
}
