package wish

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var fragmentCases = []struct {
	name  string
	body  string
	ok    bool
	ufrag string
	cands int
	end   bool
}{
	{"trickle one candidate", "a=mid:0\r\na=candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host\r\n", true, "", 1, false},
	{"restart with candidates", "a=ice-ufrag:AbCd\r\na=ice-pwd:0123456789abcdefghijkl\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n" +
		"a=candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host\r\na=end-of-candidates\r\n", true, "AbCd", 1, true},
	{"ice-options ignored", "a=ice-options:trickle\r\na=mid:0\r\n", true, "", 0, false},
	{"LF line endings", "a=mid:0\na=candidate:1 1 udp 1 192.0.2.1 5000 typ host\n", true, "", 1, false},
	{"ufrag without pwd", "a=ice-ufrag:AbCd\r\n", false, "", 0, false},
	{"garbage line", "hello world\r\n", false, "", 0, false},
	{"short candidate", "a=candidate:1 1 udp\r\n", false, "", 0, false},
	{"too many candidates", strings.Repeat("a=candidate:1 1 udp 1 192.0.2.1 5000 typ host\r\n", 65), false, "", 0, false},
	{"line too long", "a=mid:" + strings.Repeat("x", 2000) + "\r\n", false, "", 0, false},
	{"empty", "", true, "", 0, false},
}

func TestParseFragment(t *testing.T) {
	for _, c := range fragmentCases {
		f, err := ParseFragment(c.body)
		if c.ok != (err == nil) {
			t.Errorf("%s: err %v", c.name, err)
			continue
		}
		if err != nil {
			if e, ok := err.(*Error); !ok || e.Status != 400 {
				t.Errorf("%s: error %v is not a 400", c.name, err)
			}
			continue
		}
		if f.Ufrag != c.ufrag || len(f.Candidates) != c.cands || f.EndOfCandidates != c.end {
			t.Errorf("%s: got %+v", c.name, f)
		}
	}
}

func FuzzParseFragment(f *testing.F) {
	for _, c := range fragmentCases {
		f.Add(c.body)
	}
	f.Fuzz(func(t *testing.T, body string) {
		fr, err := ParseFragment(body)
		if err != nil {
			return
		}
		if len(fr.Candidates) > maxFragmentCandidates || (fr.Ufrag == "") != (fr.Pwd == "") {
			t.Fatalf("accepted %+v", fr)
		}
		// What we write back must parse again.
		back := FormatFragment("u", "p", "0", nil)
		if _, err := ParseFragment(back); err != nil {
			t.Fatal(err)
		}
	})
}

func readOffers(t testing.TB) map[string]string {
	files, _ := filepath.Glob("testdata/*.sdp")
	if len(files) == 0 {
		t.Fatal("no testdata offers")
	}
	out := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = string(b)
	}
	return out
}

func TestInspectOffer(t *testing.T) {
	offers := readOffers(t)
	obs, err := InspectOffer(offers["obs-whip.sdp"])
	if err != nil {
		t.Fatal(err)
	}
	if Count(obs, "video") != 1 || Count(obs, "audio") != 1 {
		t.Fatalf("OBS offer: %+v", obs)
	}
	for _, m := range obs {
		if m.Kind == "video" && !m.HasFmtp("H264", "packetization-mode=1") {
			t.Error("OBS H264 packetization-mode=1 not found")
		}
		if m.Direction != "sendonly" {
			t.Errorf("OBS %s direction %q", m.Kind, m.Direction)
		}
	}
	ff, err := InspectOffer(offers["firefox-whep.sdp"])
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ff {
		if m.Kind == "video" {
			if !m.HasFmtp("H264", "packetization-mode=1", "profile-level-id=42e0") {
				t.Error("Firefox H264 42e01f/mode 1 not found")
			}
			if m.HasFmtp("H264", "packetization-mode=2") {
				t.Error("matched a parameter that is not there")
			}
		}
		if m.Kind == "audio" && !m.Has("OPUS") {
			t.Error("Firefox Opus not found")
		}
	}
	for _, bad := range []string{"", "hello", "v=0\r\n"} {
		if _, err := InspectOffer(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func FuzzInspectOffer(f *testing.F) {
	for _, o := range readOffers(f) {
		f.Add(o)
	}
	f.Fuzz(func(t *testing.T, offer string) {
		ms, err := InspectOffer(offer)
		if err == nil && (len(ms) == 0 || len(ms) > 16) {
			t.Fatalf("accepted an offer with %d sections", len(ms))
		}
	})
}

func TestValidStreamName(t *testing.T) {
	for name, ok := range map[string]bool{
		"live": true, "a": true, "Cam_1.main-2": true, strings.Repeat("a", 128): true,
		"": false, "-x": false, ".x": false, "a b": false, "a/b": false, strings.Repeat("a", 129): false, "é": false,
	} {
		if ValidStreamName(name) != ok {
			t.Errorf("ValidStreamName(%q) = %v", name, !ok)
		}
	}
}
