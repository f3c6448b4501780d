package node

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/pion/webrtc/v4"

	"github.com/cascade-cdn/cascade/media/mediatest"
	"github.com/cascade-cdn/cascade/wish"
)

func post(t *testing.T, n *Node, path, ctype, body string, hdr map[string]string) *http.Response {
	t.Helper()
	return do(t, n, "POST", path, ctype, body, hdr)
}

func do(t *testing.T, n *Node, method, path, ctype, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, n.URL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// pionOffer is a real offer from a pion peer with video and audio.
func pionOffer(t *testing.T, dirs ...webrtc.RTPTransceiverDirection) string {
	t.Helper()
	dir := webrtc.RTPTransceiverDirectionRecvonly
	if len(dirs) > 0 {
		dir = dirs[0]
	}
	api, err := mediatest.API()
	if err != nil {
		t.Fatal(err)
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
		if _, err := pc.AddTransceiverFromKind(k, webrtc.RTPTransceiverInit{Direction: dir}); err != nil {
			t.Fatal(err)
		}
	}
	o, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	return o.SDP
}

// vp8Only rewrites an offer so its video offers VP8 alone.
const vp8Offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n" +
	"m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n" +
	"a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 " +
	"AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA\r\n" +
	"a=setup:actpass\r\na=rtpmap:96 VP8/90000\r\n"

func twoVideos(offer string) string {
	i := strings.Index(offer, "m=video")
	j := strings.Index(offer, "m=audio")
	video := strings.Replace(offer[i:j], "a=mid:0", "a=mid:9", 1)
	return offer + video
}

func TestRFC9725Statuses(t *testing.T) {
	n := startNode(t, func(c *Config) {
		c.Auth.OpenPublish = false
		c.Auth.PublishKeys = map[string]string{"keyed": "s3cret"}
		c.ICEServers = nil
	})
	recv := pionOffer(t)
	send := pionOffer(t, webrtc.RTPTransceiverDirectionSendonly)
	big := strings.Repeat("a", 65<<10)

	cases := []struct {
		name, method, path, ctype, body string
		hdr                             map[string]string
		want                            int
	}{
		{"wrong content type", "POST", "/whip/keyed", "text/plain", send, nil, 415},
		{"no content type", "POST", "/whep/keyed", "", recv, nil, 415},
		{"unparsable SDP", "POST", "/whip/keyed", "application/sdp", "hello", map[string]string{"Authorization": "Bearer s3cret"}, 400},
		{"bad stream name", "POST", "/whip/-bad", "application/sdp", send, nil, 400},
		{"name too long", "POST", "/whip/" + strings.Repeat("a", 129), "application/sdp", send, nil, 400},
		{"oversized body", "POST", "/whip/keyed", "application/sdp", big, map[string]string{"Authorization": "Bearer s3cret"}, 413},
		{"missing token", "POST", "/whip/keyed", "application/sdp", send, nil, 401},
		{"wrong token", "POST", "/whip/keyed", "application/sdp", send, map[string]string{"Authorization": "Bearer nope"}, 401},
		{"no key and not open", "POST", "/whip/open", "application/sdp", send, nil, 401},
		{"VP8-only offer", "POST", "/whip/keyed", "application/sdp", vp8Offer, map[string]string{"Authorization": "Bearer s3cret"}, 422},
		{"two video tracks", "POST", "/whip/keyed", "application/sdp", twoVideos(send), map[string]string{"Authorization": "Bearer s3cret"}, 422},
		{"WHEP unknown stream", "POST", "/whep/nothing", "application/sdp", recv, nil, 404},
		{"DELETE unknown session", "DELETE", "/whip/keyed/0123", "", "", nil, 404},
		{"PATCH unknown session", "PATCH", "/whep/keyed/0123", "application/trickle-ice-sdpfrag", "a=ice-ufrag:x\r\na=ice-pwd:y\r\n", nil, 404},
		{"GET endpoint", "GET", "/whip/keyed", "", "", nil, 204},
		{"GET unknown session", "GET", "/whep/keyed/0123", "", "", nil, 404},
		{"OPTIONS", "OPTIONS", "/whip/keyed", "", "", nil, 204},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := do(t, n, c.method, c.path, c.ctype, c.body, c.hdr)
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != c.want {
				t.Fatalf("%s %s: %d %q, want %d", c.method, c.path, resp.StatusCode, body, c.want)
			}
			if c.want >= 400 {
				// One line of plain text saying why.
				if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") ||
					strings.Count(strings.TrimSpace(string(body)), "\n") != 0 || len(body) < 5 {
					t.Errorf("error body %q (%s) is not one plain-text line", body, resp.Header.Get("Content-Type"))
				}
			}
		})
	}
}

func TestOptionsCORSAndLink(t *testing.T) {
	n := startNode(t, func(c *Config) {
		c.ICEServers = []wish.ICEServer{{URLs: []string{"stun:stun.example.net:3478"}}}
	})
	resp := do(t, n, "OPTIONS", "/whep/live", "", "", map[string]string{"Origin": "https://player.example"})
	if resp.StatusCode != 204 {
		t.Fatalf("OPTIONS: %d", resp.StatusCode)
	}
	h := resp.Header
	if h.Get("Access-Control-Allow-Origin") == "" || h.Get("Accept-Post") != "application/sdp" {
		t.Errorf("CORS/Accept-Post headers: %v", h)
	}
	for _, want := range []string{"Location", "ETag", "Link"} {
		if !strings.Contains(h.Get("Access-Control-Expose-Headers"), want) {
			t.Errorf("Access-Control-Expose-Headers %q lacks %s", h.Get("Access-Control-Expose-Headers"), want)
		}
	}
	if got := h.Get("Link"); got != `<stun:stun.example.net:3478>; rel="ice-server"` {
		t.Errorf("Link: %q", got)
	}
}

func TestAnswerShape(t *testing.T) {
	n := startNode(t)
	pub := publish(t, n, "live", mediatest.PublisherOptions{})
	if !strings.HasPrefix(pub.Location, "/whip/live/") {
		t.Errorf("WHIP Location %q is not an absolute path under /whip/live/", pub.Location)
	}
	resp := post(t, n, "/whep/live", "application/sdp", pionOffer(t), nil)
	if resp.StatusCode != 201 {
		t.Fatalf("WHEP POST: %d", resp.StatusCode)
	}
	body, _ := io.ReadAll(resp.Body)
	answer := string(body)
	if loc := resp.Header.Get("Location"); !strings.HasPrefix(loc, "/whep/live/") {
		t.Errorf("WHEP Location %q", loc)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/sdp" {
		t.Errorf("Content-Type %q", ct)
	}
	if e := resp.Header.Get("ETag"); !strings.HasPrefix(e, `"`) {
		t.Errorf("ETag %q is not a strong tag", e)
	}
	sections := strings.Count(answer, "\nm=")
	if got := strings.Count(answer, "a=rtcp-mux-only"); got != sections || sections != 2 {
		t.Errorf("%d a=rtcp-mux-only for %d m-sections", got, sections)
	}
	if !strings.Contains(answer, "profile-level-id=42e01f") || !strings.Contains(answer, "packetization-mode=1") {
		t.Errorf("answer's H264 is not 42e01f/packetization-mode=1:\n%s", answer)
	}
	if strings.Contains(answer, "profile-level-id=64") || strings.Contains(answer, "profile-level-id=4d") {
		t.Errorf("answer offers a profile other than 42e01f:\n%s", answer)
	}
}

func TestDrainAnswers503(t *testing.T) {
	n := startNode(t)
	n.Drain()
	resp := post(t, n, "/whip/live", "application/sdp", pionOffer(t, webrtc.RTPTransceiverDirectionSendonly), nil)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("POST while draining: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if r := do(t, n, "GET", "/readyz", "", "", nil); r.StatusCode != 503 {
		t.Fatalf("/readyz while draining: %d", r.StatusCode)
	}
	if r := do(t, n, "GET", "/healthz", "", "", nil); r.StatusCode != 200 {
		t.Fatalf("/healthz while draining: %d", r.StatusCode)
	}
}

func TestPatchTrickleAndRestart(t *testing.T) {
	n := startNode(t)
	pub := publish(t, n, "live", mediatest.PublisherOptions{})
	loc := pub.Location
	resp := do(t, n, "GET", loc, "", "", nil)
	if resp.StatusCode != 204 {
		t.Fatalf("GET session: %d", resp.StatusCode)
	}
	frag := "a=ice-ufrag:newufrag\r\na=ice-pwd:newpasswordnewpassword12\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n" +
		"a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
	const ct = "application/trickle-ice-sdpfrag"

	if r := do(t, n, "PATCH", loc, "application/sdp", frag, map[string]string{"If-Match": "*"}); r.StatusCode != 415 {
		t.Errorf("PATCH with wrong type: %d, want 415", r.StatusCode)
	}
	if r := do(t, n, "PATCH", loc, ct, frag, nil); r.StatusCode != 428 {
		t.Errorf("ICE restart without If-Match: %d, want 428", r.StatusCode)
	}
	if r := do(t, n, "PATCH", loc, ct, frag, map[string]string{"If-Match": `"stale"`}); r.StatusCode != 412 {
		t.Errorf("ICE restart with a wrong ETag: %d, want 412", r.StatusCode)
	}
	// A trickle (no new credentials) is 204.
	trickle := "a=mid:0\r\na=candidate:2 1 udp 2130706431 127.0.0.1 10 typ host\r\n"
	if r := do(t, n, "PATCH", loc, ct, trickle, nil); r.StatusCode != 204 {
		body, _ := io.ReadAll(r.Body)
		t.Errorf("trickle: %d %s, want 204", r.StatusCode, body)
	}
	r := do(t, n, "PATCH", loc, ct, frag, map[string]string{"If-Match": "*"})
	body, _ := io.ReadAll(r.Body)
	if r.StatusCode != 200 {
		t.Fatalf("ICE restart: %d %s, want 200", r.StatusCode, body)
	}
	if r.Header.Get("Content-Type") != ct || !strings.Contains(string(body), "a=ice-ufrag:") ||
		!strings.Contains(string(body), "a=candidate:") {
		t.Errorf("restart answer fragment: %q", body)
	}
	newTag := r.Header.Get("ETag")
	if newTag == "" || newTag == `"stale"` {
		t.Fatalf("restart ETag %q", newTag)
	}
	// The answer fragment carries fresh local credentials.
	if strings.Contains(pub.PC.RemoteDescription().SDP, strings.Split(strings.Split(string(body), "a=ice-ufrag:")[1], "\r\n")[0]) {
		t.Error("ICE restart kept the old local ufrag")
	}
	// The old ETag no longer matches.
	frag2 := strings.Replace(frag, "newufrag", "thirdufrag", 1)
	if r := do(t, n, "PATCH", loc, ct, frag2, map[string]string{"If-Match": `"` + strings.Split(loc, "/")[3] + `-0"`}); r.StatusCode != 412 {
		t.Errorf("restart with the pre-restart ETag: %d, want 412", r.StatusCode)
	}
	if r := do(t, n, "PATCH", loc, ct, frag2, map[string]string{"If-Match": newTag}); r.StatusCode != 200 {
		t.Errorf("restart with the current ETag: %d, want 200", r.StatusCode)
	}
}
