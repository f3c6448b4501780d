package lite

import (
	"encoding/hex"
	"strconv"
	"strings"

	"github.com/pion/sdp/v3"

	"github.com/cascade-cdn/cascade/wish"
)

// TransportCCURI names the transport-wide sequence number header extension
// (draft-holmer-rmcat-transport-wide-cc-extensions-01, section 2).
const TransportCCURI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

// offer is what the answer needs from a viewer's offer.
type offer struct {
	ufrag, pwd string
	// fpHash and fp are the viewer's certificate fingerprint
	// (RFC 8122): the hash's name in lower case and its bytes.
	fpHash string
	fp     []byte
	// active: the viewer asked to be the DTLS server (a=setup:passive),
	// so Cascade dials; otherwise Cascade is the server.
	active bool
	rsize  bool // a=rtcp-rsize
	twccID uint8
	medias []offerMedia
}

// offerMedia is one m-section.
type offerMedia struct {
	kind  string // "video", "audio", "application", ...
	proto string
	fmt0  string // the first format, for a rejection
	mid   string
	// recv: the viewer will receive (sendrecv or recvonly).
	recv bool
	// pt is the payload type to send with: H.264 constrained baseline with
	// packetization-mode 1 for video, Opus for audio; -1 if none.
	pt int
	// twcc: the section offers transport-wide sequence numbers, so the
	// viewer counts its packets in its feedback.
	twcc bool
}

// parseOffer reads the parts of an offer the answer is made from. Errors
// are wish errors with the HTTP status they deserve.
func parseOffer(s string) (*offer, error) {
	// The parsed description is not kept: a viewer holds only what its
	// answer and transport need.
	o := &offer{}
	d := &sdp.SessionDescription{}
	if err := d.UnmarshalString(s); err != nil {
		return nil, wish.ErrBadSDP
	}
	if len(d.MediaDescriptions) == 0 || len(d.MediaDescriptions) > 16 {
		return nil, wish.Errorf(400, "bad_sdp", "offer must have between 1 and 16 media sections")
	}
	// Credentials, fingerprint and setup may be at session level or in
	// the sections; with BUNDLE they are the same in every section.
	attr := func(md *sdp.MediaDescription, key string) string {
		if v, ok := md.Attribute(key); ok {
			return v
		}
		v, _ := d.Attribute(key)
		return v
	}
	for i, md := range d.MediaDescriptions {
		// Strings are cloned: a substring would keep the whole offer.
		m := offerMedia{kind: strings.Clone(md.MediaName.Media), proto: strings.Join(md.MediaName.Protos, "/"), pt: -1, recv: true}
		if len(md.MediaName.Formats) > 0 {
			m.fmt0 = strings.Clone(md.MediaName.Formats[0])
		}
		m.mid, _ = md.Attribute("mid")
		m.mid = strings.Clone(m.mid)
		if m.mid == "" {
			m.mid = strconv.Itoa(i)
		}
		for _, a := range md.Attributes {
			switch a.Key {
			case "sendonly", "inactive":
				m.recv = false
			case "extmap":
				_, uri, ok := parseExtmap(a.Value)
				m.twcc = m.twcc || ok && uri == TransportCCURI
			}
		}
		if md.MediaName.Port.Value == 0 {
			m.recv = false // the viewer rejected it already
		}
		switch m.kind {
		case "video":
			m.pt = findCodec(md, "H264", func(fmtp string) bool {
				return strings.Contains(fmtp, "packetization-mode=1") && strings.Contains(fmtp, "profile-level-id=42e0")
			})
		case "audio":
			m.pt = findCodec(md, "OPUS", nil)
		}
		if m.pt >= 0 && o.ufrag == "" {
			// The first section taken sets the transport (max-bundle).
			o.ufrag, o.pwd = strings.Clone(attr(md, "ice-ufrag")), strings.Clone(attr(md, "ice-pwd"))
			fp := attr(md, "fingerprint")
			setup := attr(md, "setup")
			var err error
			if o.fpHash, o.fp, err = parseFingerprint(fp); err != nil {
				return nil, err
			}
			switch setup {
			case "", "actpass", "active":
			case "passive":
				o.active = true
			default:
				return nil, wish.Errorf(400, "bad_sdp", "unsupported a=setup:%.20s", setup)
			}
			for _, a := range md.Attributes {
				switch a.Key {
				case "extmap":
					if id, uri, ok := parseExtmap(a.Value); ok && uri == TransportCCURI {
						o.twccID = id
					}
				case "rtcp-rsize":
					o.rsize = true
				}
			}
		}
		o.medias = append(o.medias, m)
	}
	if o.ufrag == "" {
		return nil, wish.ErrNoCodec
	}
	if len(o.ufrag) < 4 || len(o.ufrag) > 256 || len(o.pwd) < 22 || len(o.pwd) > 256 {
		return nil, wish.Errorf(400, "bad_sdp", "offer lacks valid ICE credentials")
	}
	return o, nil
}

// findCodec returns the first payload type of md with encoding name
// (upper case) whose fmtp line (lower case) passes ok, or -1.
func findCodec(md *sdp.MediaDescription, name string, ok func(fmtp string) bool) int {
	fmtps := map[string]string{}
	for _, a := range md.Attributes {
		if a.Key == "fmtp" {
			pt, rest, _ := strings.Cut(a.Value, " ")
			fmtps[pt] = strings.ToLower(rest)
		}
	}
	for _, a := range md.Attributes {
		if a.Key != "rtpmap" {
			continue
		}
		pt, rest, _ := strings.Cut(a.Value, " ")
		enc, _, _ := strings.Cut(rest, "/")
		n, err := strconv.Atoi(pt)
		if err != nil || n < 0 || n > 127 || !strings.EqualFold(enc, name) {
			continue
		}
		if ok == nil || ok(fmtps[pt]) {
			return n
		}
	}
	return -1
}

// parseExtmap reads "ID[/direction] URI [attributes]".
func parseExtmap(v string) (uint8, string, bool) {
	f := strings.Fields(v)
	if len(f) < 2 {
		return 0, "", false
	}
	idStr, _, _ := strings.Cut(f[0], "/")
	id, err := strconv.Atoi(idStr)
	if err != nil || id < 1 || id > 14 { // one-byte header extensions (RFC 8285)
		return 0, "", false
	}
	return uint8(id), f[1], true
}

// parseFingerprint reads "sha-256 AB:CD:...".
func parseFingerprint(v string) (string, []byte, error) {
	hash, value, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok {
		return "", nil, wish.Errorf(400, "bad_sdp", "offer lacks a valid a=fingerprint")
	}
	hash = strings.ToLower(hash)
	if hashFor(hash) == 0 {
		return "", nil, wish.Errorf(400, "bad_sdp", "unsupported fingerprint hash %.20q", hash)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(value), ":", ""))
	if err != nil || len(b) == 0 || len(b) > 64 {
		return "", nil, wish.Errorf(400, "bad_sdp", "offer lacks a valid a=fingerprint")
	}
	return hash, b, nil
}
