package wish

import (
	"bufio"
	"strconv"
	"strings"
)

// Fragment is a parsed application/trickle-ice-sdpfrag body (RFC 8840
// section 9): ICE credentials and candidates, grouped by m-section.
type Fragment struct {
	Ufrag, Pwd string
	Candidates []Candidate
	// EndOfCandidates is set when the peer has finished gathering.
	EndOfCandidates bool
}

// Candidate is one a=candidate line with the m-section it belongs to.
type Candidate struct {
	Mid        string
	MLineIndex uint16
	// Value is the candidate attribute without "a=", e.g. "candidate:1 1 udp ...".
	Value string
}

// Limits on fragments: one peer has few m-sections and a handful of
// candidates; anything larger is not a peer we need to serve.
const (
	maxFragmentLines      = 200
	maxFragmentCandidates = 64
	maxFragmentLine       = 1024
)

// ParseFragment parses an SDP fragment. It accepts the lines RFC 8840 allows
// (a=ice-ufrag, a=ice-pwd, a=ice-options, m=, a=mid, a=candidate,
// a=end-of-candidates) and ignores other attributes.
func ParseFragment(body string) (Fragment, error) {
	var f Fragment
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 0, 256), maxFragmentLine)
	mline, mid := -1, ""
	lines := 0
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if line == "" {
			continue
		}
		if lines++; lines > maxFragmentLines {
			return f, Errorf(400, "bad_fragment", "fragment has too many lines")
		}
		switch {
		case strings.HasPrefix(line, "m="):
			mline++
			mid = ""
		case strings.HasPrefix(line, "a=mid:"):
			mid = line[len("a=mid:"):]
		case strings.HasPrefix(line, "a=ice-ufrag:"):
			f.Ufrag = line[len("a=ice-ufrag:"):]
		case strings.HasPrefix(line, "a=ice-pwd:"):
			f.Pwd = line[len("a=ice-pwd:"):]
		case strings.HasPrefix(line, "a=candidate:"):
			if len(f.Candidates) == maxFragmentCandidates {
				return f, ErrTooManyICE
			}
			if strings.Count(line, " ") < 7 {
				return f, Errorf(400, "bad_fragment", "malformed candidate line")
			}
			idx := mline
			if idx < 0 {
				idx = 0
			}
			f.Candidates = append(f.Candidates, Candidate{Mid: mid, MLineIndex: uint16(idx), Value: line[2:]})
		case line == "a=end-of-candidates":
			f.EndOfCandidates = true
		case strings.HasPrefix(line, "a="):
			// ice-options, group and the like: not needed.
		default:
			return f, Errorf(400, "bad_fragment", "unexpected line in fragment: %.40q", line)
		}
	}
	if err := sc.Err(); err != nil {
		return f, Errorf(400, "bad_fragment", "fragment line too long")
	}
	if (f.Ufrag == "") != (f.Pwd == "") {
		return f, Errorf(400, "bad_fragment", "fragment has ice-ufrag without ice-pwd or the reverse")
	}
	if len(f.Ufrag) > 256 || len(f.Pwd) > 256 {
		return f, Errorf(400, "bad_fragment", "ICE credentials too long")
	}
	return f, nil
}

// FormatFragment writes the answer fragment for an ICE restart (RFC 9725
// section 4.3.2): new credentials and the local candidates, under the
// bundle-tagged m-section only, as max-bundle allows.
func FormatFragment(ufrag, pwd, mid string, candidates []string) string {
	var b strings.Builder
	b.WriteString("a=ice-ufrag:" + ufrag + "\r\n")
	b.WriteString("a=ice-pwd:" + pwd + "\r\n")
	b.WriteString("m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n")
	b.WriteString("a=mid:" + mid + "\r\n")
	for _, c := range candidates {
		b.WriteString("a=" + c + "\r\n")
	}
	b.WriteString("a=end-of-candidates\r\n")
	return b.String()
}

// etag returns a strong entity tag for a session generation.
func etag(session string, gen int) string {
	return `"` + session + "-" + strconv.Itoa(gen) + `"`
}
