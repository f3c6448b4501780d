package wish

import (
	"slices"
	"strings"

	"github.com/pion/sdp/v3"
)

// Media is one m-section of an offer, as far as endpoints care.
type Media struct {
	Kind string // "video", "audio", "application"
	// Codecs are the rtpmap encoding names, upper case ("H264", "OPUS").
	Codecs []string
	// Fmtp holds the fmtp lines by codec name, for H264 packetization-mode.
	Fmtp      map[string][]string
	Direction string // "sendrecv", "sendonly", "recvonly", "inactive"
}

// Has reports whether the section offers codec.
func (m Media) Has(codec string) bool { return slices.Contains(m.Codecs, codec) }

// HasFmtp reports whether one of codec's payload types has an fmtp line
// containing every one of params (e.g. "packetization-mode=1"); fmtp lines
// are compared in lower case.
func (m Media) HasFmtp(codec string, params ...string) bool {
	for _, f := range m.Fmtp[codec] {
		ok := true
		for _, p := range params {
			ok = ok && strings.Contains(f, p)
		}
		if ok {
			return true
		}
	}
	return false
}

// InspectOffer parses an offer into its m-sections. An offer pion's parser
// refuses, or one with no media, is ErrBadSDP.
func InspectOffer(offer string) ([]Media, error) {
	var d sdp.SessionDescription
	if err := d.UnmarshalString(offer); err != nil {
		return nil, ErrBadSDP
	}
	if len(d.MediaDescriptions) == 0 || len(d.MediaDescriptions) > 16 {
		return nil, Errorf(400, "bad_sdp", "offer must have between 1 and 16 media sections")
	}
	out := make([]Media, 0, len(d.MediaDescriptions))
	for _, md := range d.MediaDescriptions {
		m := Media{Kind: md.MediaName.Media, Direction: "sendrecv", Fmtp: map[string][]string{}}
		names := map[string]string{} // payload type -> codec
		for _, a := range md.Attributes {
			switch a.Key {
			case "sendrecv", "sendonly", "recvonly", "inactive":
				m.Direction = a.Key
			case "rtpmap":
				pt, rest, ok := strings.Cut(a.Value, " ")
				name, _, _ := strings.Cut(rest, "/")
				if ok && name != "" {
					name = strings.ToUpper(name)
					names[pt] = name
					m.Codecs = append(m.Codecs, name)
				}
			}
		}
		for _, a := range md.Attributes {
			if a.Key == "fmtp" {
				pt, rest, _ := strings.Cut(a.Value, " ")
				if name := names[pt]; name != "" {
					m.Fmtp[name] = append(m.Fmtp[name], strings.ToLower(rest))
				}
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// Count returns how many sections of kind the offer has.
func Count(ms []Media, kind string) int {
	n := 0
	for _, m := range ms {
		if m.Kind == kind {
			n++
		}
	}
	return n
}
