package lite

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/srtp/v3"
	"github.com/pion/stun/v4"
	"github.com/pion/webrtc/v4"
	"go.uber.org/goleak"

	"github.com/cascade-cdn/cascade/peer"
	"github.com/cascade-cdn/cascade/wish"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testEngine(t testing.TB, tcp bool) *peer.Engine {
	t.Helper()
	cfg := peer.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.TCP = tcp
	cfg.HandshakeTimeout = 5 * time.Second
	e, err := peer.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// viewer is a pion PeerConnection playing a browser's part: recvonly
// video (H.264) and audio (Opus), with pion's default interceptors
// (NACK generation, receiver reports, transport-wide feedback).
type viewer struct {
	pc       *webrtc.PeerConnection
	packets  chan *rtp.Packet
	reading  sync.WaitGroup
	received atomic.Int64 // bytes
}

func newViewer(t testing.TB, tcp bool) *viewer {
	t.Helper()
	m := &webrtc.MediaEngine{}
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
		SDPFmtpLine: h264Fmtp, RTCPFeedback: []webrtc.RTCPFeedback{{Type: "nack"}, {Type: "nack", Parameter: "pli"}, {Type: webrtc.TypeRTCPFBTransportCC}}}, PayloadType: 102},
		webrtc.RTPCodecTypeVideo); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2,
		SDPFmtpLine: opusFmtp, RTCPFeedback: []webrtc.RTCPFeedback{{Type: webrtc.TypeRTCPFBTransportCC}}}, PayloadType: 111},
		webrtc.RTPCodecTypeAudio); err != nil {
		t.Fatal(err)
	}
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(m, ir); err != nil {
		t.Fatal(err)
	}
	var se webrtc.SettingEngine
	if tcp {
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeTCP4})
	} else {
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	}
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetIncludeLoopbackCandidate(true)
	se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	se.LoggerFactory = peer.LoggerFactory(slog.New(slog.DiscardHandler))
	api := webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	v := &viewer{pc: pc, packets: make(chan *rtp.Packet, 1024)}
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		v.reading.Add(1)
		defer v.reading.Done()
		for {
			p, _, err := tr.ReadRTP()
			if err != nil {
				return
			}
			v.received.Add(int64(p.MarshalSize()))
			select {
			case v.packets <- p:
			default:
			}
		}
	})
	for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
		if _, err := pc.AddTransceiverFromKind(k, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { pc.Close(); v.reading.Wait() })
	return v
}

// offer returns the viewer's offer, gathered.
func (v *viewer) offer(t testing.TB) string {
	t.Helper()
	o, err := v.pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(v.pc)
	if err := v.pc.SetLocalDescription(o); err != nil {
		t.Fatal(err)
	}
	<-gathered
	return v.pc.LocalDescription().SDP
}

// connect makes a transport for v on e and completes the handshake.
func connect(t testing.TB, e *peer.Engine, v *viewer, onRTCP func(time.Time, []byte)) *Transport {
	t.Helper()
	tr, _ := connectOffer(t, e, v, v.offer(t), onRTCP)
	return tr
}

// connectOffer is connect with v's offer as given (edited, say); it also
// returns the answer.
func connectOffer(t testing.TB, e *peer.Engine, v *viewer, offer string, onRTCP func(time.Time, []byte)) (*Transport, string) {
	t.Helper()
	tr, answer, err := New(e, Params{Offer: offer, Video: true, Audio: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	if err := v.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		t.Fatal(err)
	}
	tr.Start(onRTCP)
	select {
	case <-tr.Ready():
	case <-tr.Done():
		t.Fatalf("transport ended: %v", tr.Err())
	case <-time.After(10 * time.Second):
		t.Fatal("DTLS did not complete")
	}
	return tr, answer
}

func eventually(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestTransportDeliversToPion: a pion viewer connects to the ICE-lite
// transport, receives what is written on each track with the SSRC and
// payload type of the answer, and its RTCP (receiver reports,
// transport-wide feedback) comes back decrypted.
func TestTransportDeliversToPion(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		name := map[bool]string{false: "udp", true: "tcp"}[tcp]
		t.Run(name, func(t *testing.T) {
			e := testEngine(t, tcp)
			v := newViewer(t, tcp)
			var rtcpPackets atomic.Int64
			tr := connect(t, e, v, func(_ time.Time, p []byte) {
				if len(p) >= 4 {
					rtcpPackets.Add(1)
				}
			})
			if got := tr.SelectedPath().TCP(); got != tcp {
				t.Errorf("selected path TCP=%v, want %v", got, tcp)
			}
			video, audio := tr.Video(), tr.Audio()
			if video == nil || audio == nil || video.PT != 102 || audio.PT != 111 || video.SSRC == audio.SSRC {
				t.Fatalf("tracks %+v %+v", video, audio)
			}
			var h rtp.Header
			payload := []byte{0x65, 1, 2, 3, 4, 5}
			got := map[uint32]int{}
			for i := range 200 {
				tk := video
				if i%2 == 1 {
					tk = audio
				}
				h = rtp.Header{Version: 2, SequenceNumber: uint16(1000 + i), Timestamp: uint32(i) * 3000, Marker: true, Extensions: h.Extensions[:0]}
				if err := tr.WriteRTP(tk, &h, payload); err != nil {
					t.Fatal(err)
				}
				tr.Flush()
				select {
				case p := <-v.packets:
					got[p.SSRC]++
					if string(p.Payload) != string(payload) {
						t.Fatalf("payload %x, want %x", p.Payload, payload)
					}
				case <-time.After(20 * time.Millisecond):
				}
			}
			eventually(t, "every packet at the viewer", 5*time.Second, func() bool {
				for {
					select {
					case p := <-v.packets:
						got[p.SSRC]++
					default:
						return got[video.SSRC]+got[audio.SSRC] >= 190 // pion's receivers start a moment after DTLS
					}
				}
			})
			if n, _ := video.Sent(); n != 100 {
				t.Errorf("video counts %d packets sent, want 100", n)
			}
			eventually(t, "RTCP from the viewer", 5*time.Second, func() bool { return rtcpPackets.Load() > 0 })
			eventually(t, "transport-wide feedback", 5*time.Second, func() bool { return tr.BWE().Stats().Feedbacks > 0 })
			if st := tr.Stats(); st.Bad != 0 || st.Limited != 0 {
				t.Errorf("a well-behaved viewer had packets refused: %+v", st)
			}
			if time.Since(tr.Heard()) > 5*time.Second {
				t.Errorf("last heard %v ago", time.Since(tr.Heard()))
			}
			// The viewer's SRTCP proved it completed the handshake: pion's
			// connection is let go, its goroutines with it.
			eventually(t, "the DTLS connection let go", 5*time.Second, func() bool { return letGo(tr) })
			// Closing the transport tells the viewer (our own close_notify).
			closed := make(chan struct{})
			var once sync.Once
			v.pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
				if s == webrtc.PeerConnectionStateClosed || s == webrtc.PeerConnectionStateFailed {
					once.Do(func() { close(closed) })
				}
			})
			tr.Close()
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Error("the viewer did not see the transport close")
			}
			tr.WriteRTP(video, &h, payload) // after Close: no panic, nothing owed
		})
	}
}

// letGo reports whether tr has let its DTLS connection go.
func letGo(tr *Transport) bool {
	tr.inMu.Lock()
	defer tr.inMu.Unlock()
	return tr.tornDown
}

// TestViewerClosesAfterTeardown: once the DTLS connection is let go, the
// viewer's close_notify, checked with the kept record keys, still ends the
// transport at once; a forged alert does not.
func TestViewerClosesAfterTeardown(t *testing.T) {
	e := testEngine(t, false)
	v := newViewer(t, false)
	tr := connect(t, e, v, nil)
	var h rtp.Header
	eventually(t, "the DTLS connection let go", 10*time.Second, func() bool {
		h = rtp.Header{Version: 2, SequenceNumber: h.SequenceNumber + 1, Extensions: h.Extensions[:0]}
		tr.WriteRTP(tr.Video(), &h, []byte{0x65, 1}) // media, so the viewer reports
		tr.Flush()
		return letGo(tr)
	})
	// An alert record with a wrong tag, from the viewer's path.
	forged := []byte{21, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0, 26}
	forged = append(forged, make([]byte, 26)...)
	tr.HandlePacket(forged, tr.SelectedPath())
	select {
	case <-tr.Done():
		t.Fatal("a forged alert ended the transport")
	default:
	}
	v.pc.Close()
	select {
	case <-tr.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the viewer's close_notify did not end the transport")
	}
	if !errors.Is(tr.Err(), errDTLSClosed) {
		t.Errorf("ended with %v", tr.Err())
	}
}

// TestViewerCloses: the viewer closing its PeerConnection (DTLS
// close_notify) ends the transport.
func TestViewerCloses(t *testing.T) {
	e := testEngine(t, false)
	v := newViewer(t, false)
	tr := connect(t, e, v, nil)
	// The viewer completes DTLS a moment after the server: a close before
	// that sends no close_notify.
	eventually(t, "the viewer connected", 5*time.Second, func() bool {
		return v.pc.ConnectionState() == webrtc.PeerConnectionStateConnected
	})
	v.pc.Close()
	select {
	case <-tr.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the viewer's close did not end the transport")
	}
	if !errors.Is(tr.Err(), errDTLSClosed) {
		t.Errorf("ended with %v, want %v", tr.Err(), errDTLSClosed)
	}
}

// TestHandshakeTimeout: a transport whose viewer never connects ends
// after the handshake timeout.
func TestHandshakeTimeout(t *testing.T) {
	cfg := peer.DefaultConfig()
	cfg.Listen, cfg.TCP, cfg.HandshakeTimeout = "127.0.0.1:0", false, 300*time.Millisecond
	e, err := peer.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	v := newViewer(t, false)
	tr, _, err := New(e, Params{Offer: v.offer(t), Video: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tr.Start(nil)
	select {
	case <-tr.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a transport nobody connected to did not end")
	}
	if tr.Err() == nil {
		t.Error("no reason given")
	}
}

// TestChecks sends connectivity checks by hand: only ones with our
// credentials get an answer; the others, and a flood, are counted.
func TestChecks(t *testing.T) {
	e := testEngine(t, false)
	v := newViewer(t, false)
	offer := v.offer(t)
	tr, answer, err := New(e, Params{Offer: offer, Video: true, Audio: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	local := attr(answer, "a=ice-ufrag:")
	pwd := attr(answer, "a=ice-pwd:")
	remote := attr(offer, "a=ice-ufrag:")
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	server := e.UDPAddr()
	check := func(user, key string) *stun.Message {
		t.Helper()
		m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewUsername(user), stun.NewShortTermIntegrity(key), stun.Fingerprint)
		if _, err := c.WriteTo(m.Raw, server); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 1500)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return nil
		}
		resp := &stun.Message{Raw: buf[:n]}
		if err := resp.Decode(); err != nil {
			t.Fatalf("bad response: %v", err)
		}
		return resp
	}
	if r := check(local+":"+remote, "wrong-password-wrong-password"); r != nil {
		t.Error("a check with the wrong key was answered")
	}
	if r := check(local+":someoneelse", pwd); r != nil {
		t.Error("a check naming another remote fragment was answered")
	}
	r := check(local+":"+remote, pwd)
	if r == nil {
		t.Fatal("a valid check was not answered")
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(r); err != nil || xor.Port != c.LocalAddr().(*net.UDPAddr).Port {
		t.Errorf("XOR-MAPPED-ADDRESS %v (%v), want our port", xor, err)
	}
	if err := stun.NewShortTermIntegrity(pwd).Check(r); err != nil {
		t.Errorf("response integrity: %v", err)
	}
	if st := tr.Stats(); st.Bad != 2 {
		t.Errorf("%d refused, want 2", st.Bad)
	}
	// A flood from one path: past the burst, checks are refused unread.
	m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewUsername(local+":"+remote), stun.NewShortTermIntegrity(pwd), stun.Fingerprint)
	for range 3 * rateBurst {
		c.WriteTo(m.Raw, server)
	}
	eventually(t, "the flood rate-limited", 5*time.Second, func() bool { return tr.Stats().Limited > 0 })
}

// attr is the value of the first line of an SDP that starts with prefix.
func attr(s, prefix string) string {
	for _, l := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), prefix); ok {
			return v
		}
	}
	return ""
}

// offers are real offers: Chromium's and Firefox's WHEP offers, and
// pion's.
func offers(t testing.TB) map[string]string {
	out := map[string]string{}
	for name, path := range map[string]string{"chrome": "../testdata/chrome-whep.sdp", "firefox": "../../wish/testdata/firefox-whep.sdp"} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = string(b)
	}
	return out
}

// TestAnswerShape checks the answer to real browser offers: ICE-lite, one
// bundle, rtcp-mux-only, H.264 answered as 42e01f with packetization-mode
// 1 on the offer's matching payload type, transport-cc, our SSRCs, and the
// engine's candidates once.
func TestAnswerShape(t *testing.T) {
	e := testEngine(t, true)
	for name, offer := range offers(t) {
		t.Run(name, func(t *testing.T) {
			tr, answer, err := New(e, Params{Offer: offer, Video: true, Audio: true})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			var d sdp.SessionDescription
			if err := d.UnmarshalString(answer); err != nil {
				t.Fatalf("answer does not parse: %v\n%s", err, answer)
			}
			if _, ok := d.Attribute("ice-lite"); !ok {
				t.Error("no a=ice-lite")
			}
			if len(d.MediaDescriptions) != strings.Count(offer, "\nm=") {
				t.Errorf("%d sections for an offer of %d", len(d.MediaDescriptions), strings.Count(offer, "\nm="))
			}
			for _, md := range d.MediaDescriptions {
				if md.MediaName.Port.Value == 0 {
					continue
				}
				for _, a := range []string{"rtcp-mux-only", "rtcp-mux", "sendonly", "ice-ufrag", "fingerprint", "setup"} {
					if _, ok := md.Attribute(a); !ok {
						t.Errorf("%s section lacks a=%s", md.MediaName.Media, a)
					}
				}
				if s, _ := md.Attribute("setup"); s != "passive" {
					t.Errorf("a=setup:%s", s)
				}
				// A browser sends feedback only for what the answer asks.
				pt := md.MediaName.Formats[0]
				want := []string{pt + " transport-cc"}
				if md.MediaName.Media == "video" {
					want = append(want, pt+" nack", pt+" nack pli")
				}
				for _, w := range want {
					if !strings.Contains(answer, "a=rtcp-fb:"+w+"\r\n") {
						t.Errorf("%s: no a=rtcp-fb:%s", md.MediaName.Media, w)
					}
				}
				// transport-cc is answered when offered (the Firefox
				// sample predates it), and nothing else is.
				ext, _ := md.Attribute("extmap")
				if want := strings.Contains(offer, TransportCCURI); want != strings.HasSuffix(ext, TransportCCURI) || (!want && ext != "") {
					t.Errorf("%s: extmap %q", md.MediaName.Media, ext)
				}
			}
			if tr.Video() == nil || tr.Audio() == nil {
				t.Fatal("a kind is not sent")
			}
			if want := strings.Contains(offer, TransportCCURI); tr.Video().TWCC != want || tr.Audio().TWCC != want {
				t.Errorf("tracks' TWCC %v/%v, want %v", tr.Video().TWCC, tr.Audio().TWCC, want)
			}
			video := d.MediaDescriptions[0]
			fmtp, _ := video.Attribute("fmtp")
			if !strings.HasSuffix(fmtp, h264Fmtp) || strings.Contains(answer, "profile-level-id=42001f") {
				t.Errorf("video fmtp %q", fmtp)
			}
			// The payload type is the offer's 42e01f with packetization-mode=1.
			if fmtp := attr(offer, "a=fmtp:"+strconv.Itoa(int(tr.Video().PT))+" "); !strings.Contains(strings.ToLower(fmtp), "profile-level-id=42e01f") || !strings.Contains(fmtp, "packetization-mode=1") {
				t.Errorf("video payload type %d is not the offer's 42e01f", tr.Video().PT)
			}
			if n := strings.Count(answer, "a=candidate:"); n != len(e.Candidates()) || n != 2 {
				t.Errorf("%d candidates, want the engine's UDP and TCP", n)
			}
			if !strings.Contains(answer, "a=ssrc:"+strconv.FormatUint(uint64(tr.Video().SSRC), 10)+" cname:") {
				t.Error("no a=ssrc for video")
			}
		})
	}
}

// TestRestart: an ICE restart gives fresh credentials; the old ones answer
// until the viewer nominates with the new.
func TestRestart(t *testing.T) {
	e := testEngine(t, false)
	v := newViewer(t, false)
	tr := connect(t, e, v, nil)
	if _, err := tr.Restart(wish.Fragment{}); err == nil {
		t.Error("a restart without credentials was taken")
	}
	frag, err := tr.Restart(wish.Fragment{Ufrag: "newremote", Pwd: "newremotepasswordnewremote"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := wish.ParseFragment(frag)
	if err != nil {
		t.Fatal(err)
	}
	if f.Ufrag == "" || f.Ufrag == tr.prev.ufrag || len(f.Candidates) == 0 || tr.RemoteUfrag() != "newremote" {
		t.Errorf("restart fragment %+v, remote %q", f, tr.RemoteUfrag())
	}
	// The viewer, which knows nothing of the restart, keeps its consent
	// with the old credentials.
	before := tr.Heard()
	eventually(t, "a consent check with the old credentials", 10*time.Second, func() bool { return tr.Heard().After(before) })
}

// FuzzOffer feeds offers to the parser and the answer: nothing panics, and
// an accepted offer gets an answer pion's parser reads.
func FuzzOffer(f *testing.F) {
	for _, o := range offers(f) {
		f.Add(o)
	}
	f.Add("v=0\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		o, err := parseOffer(s)
		if err != nil {
			var we *wish.Error
			if !errors.As(err, &we) || we.Status < 400 || we.Status > 499 {
				t.Fatalf("error %v is not a 4xx", err)
			}
			return
		}
		video, audio := &Track{Kind: "video", SSRC: 1}, &Track{Kind: "audio", SSRC: 2}
		ans := answer(o, "ufrag", "passwordpasswordpassword", "sha-256 AB:CD", []string{"candidate:1 1 udp 1 127.0.0.1 9 typ host"}, video, audio)
		var d sdp.SessionDescription
		if err := d.UnmarshalString(ans); err != nil {
			t.Fatalf("answer does not parse: %v\n%s", err, ans)
		}
	})
}

// FuzzHandlePacket feeds hostile datagrams to a transport: nothing panics.
func FuzzHandlePacket(f *testing.F) {
	e := testEngine(f, false)
	offer := offers(f)["chrome"]
	tr, answer, err := New(e, Params{Offer: offer, Video: true, Audio: true})
	if err != nil {
		f.Fatal(err)
	}
	defer tr.Close()
	local, pwd := attr(answer, "a=ice-ufrag:"), attr(answer, "a=ice-pwd:")
	check := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewUsername(local+":"+attr(offer, "a=ice-ufrag:")),
		stun.NewShortTermIntegrity(pwd), stun.Fingerprint)
	f.Add(check.Raw)
	f.Add([]byte{0x80, 0xc9, 0, 1, 0, 0, 0, 1})
	f.Add([]byte{22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		tr.HandlePacket(p, peer.Path{})
	})
}

// TestBWEOverTransport sends about 1 Mbps of video and some audio to a
// pion viewer that sends transport-wide feedback: what the feedback
// acknowledges converges to what the viewer received, and GCC's target
// moves. A viewer whose offer has no transport-cc gets no BWE.
func TestBWEOverTransport(t *testing.T) {
	e := testEngine(t, false)
	v := newViewer(t, false)
	tr := connect(t, e, v, nil)
	bwe := tr.BWE()
	var cbBytes, cbPackets, cbWire, cbSpan atomic.Int64
	bwe.OnDelivered(func(_ time.Time, d peer.Delivery) {
		cbBytes.Add(int64(d.Bytes))
		cbPackets.Add(int64(d.Packets))
		cbWire.Add(int64(d.RecvWire))
		cbSpan.Add(int64(d.RecvSpan))
	})
	eventually(t, "the viewer connected", 5*time.Second, func() bool {
		return v.pc.ConnectionState() == webrtc.PeerConnectionStateConnected
	})
	payload, opus := make([]byte, 1200), make([]byte, 120)
	var vh, ah rtp.Header
	seen := map[int]bool{}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	began := time.Now()
	for i := range 300 { // 3 s
		<-tick.C
		vh = rtp.Header{Version: 2, SequenceNumber: uint16(i), Timestamp: uint32(i) * 900, Marker: true, Extensions: vh.Extensions[:0]}
		if err := tr.WriteRTP(tr.Video(), &vh, payload); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			ah = rtp.Header{Version: 2, SequenceNumber: uint16(i / 2), Timestamp: uint32(i) * 480, Extensions: ah.Extensions[:0]}
			if err := tr.WriteRTP(tr.Audio(), &ah, opus); err != nil {
				t.Fatal(err)
			}
		}
		tr.Flush()
		if r := bwe.TargetBitrate(); r > 0 {
			seen[r] = true
		}
	}
	// pion's receivers drop what arrives before they start, but the
	// feedback counts it: compare once the feedback has caught up.
	eventually(t, "feedback covering what was sent", 5*time.Second, func() bool {
		st := bwe.Stats()
		return float64(st.DeliveredBytes) >= 0.97*float64(st.SentBytes)
	})
	st := bwe.Stats()
	if st.DeliveredBytes > st.SentBytes || st.DeliveredPackets > st.SentPackets {
		t.Errorf("more delivered than sent: %+v", st)
	}
	// What the viewer's tracks read is what the feedback acknowledged,
	// less what arrived before its receivers started.
	if r := float64(v.received.Load()); r > float64(st.SentBytes) || r < 0.9*float64(st.DeliveredBytes) {
		t.Errorf("the viewer read %.0f bytes; %d were sent, %d acknowledged", r, st.SentBytes, st.DeliveredBytes)
	}
	elapsed := time.Since(began)
	eventually(t, "OnDelivered agreeing with the stats", 2*time.Second, func() bool {
		st := bwe.Stats()
		return cbBytes.Load() == int64(st.DeliveredBytes) && cbPackets.Load() == int64(st.DeliveredPackets)
	})
	// Timed by the viewer's clock, the packets came in at the rate they
	// were sent: IPv4, UDP and the SRTP tag on top of the RTP bytes.
	sentRate := float64(st.SentBytes+(20+8+10)*st.SentPackets) * 8 / elapsed.Seconds()
	if cbSpan.Load() <= 0 {
		t.Fatalf("no receive span reported (%d wire bytes)", cbWire.Load())
	}
	recvRate := float64(cbWire.Load()) * 8 / time.Duration(cbSpan.Load()).Seconds()
	if r := recvRate / sentRate; r < 0.8 || r > 1.25 {
		t.Errorf("received at %.0f bit/s by the viewer's clock; sent at %.0f", recvRate, sentRate)
	}
	if st.Rejected != 0 {
		t.Errorf("%d feedbacks rejected", st.Rejected)
	}
	if len(seen) < 2 {
		t.Errorf("GCC's target never changed: %v", seen)
	}

	// Without the extension in the offer: no BWE, and nothing recorded.
	offer := offers(t)["firefox"]
	plain, _, err := New(e, Params{Offer: offer, Video: true, Audio: true})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if plain.BWE() != nil {
		t.Error("a viewer without transport-cc got a BWE")
	}
}

// sendOnly is a transport past its handshake, with fixed SRTP keys and no
// path: WriteRTP does all its work and then finds nowhere to send.
func sendOnly(tb testing.TB) *Transport {
	tb.Helper()
	out, err := srtp.CreateContext(make([]byte, 16), make([]byte, 12), srtp.ProtectionProfileAeadAes128Gcm)
	if err != nil {
		tb.Fatal(err)
	}
	return &Transport{offer: &offer{twccID: 3}, bwe: peer.NewBWE(), out: out,
		video: &Track{Kind: "video", ClockRate: 90000, SSRC: 1, PT: 102, TWCC: true}}
}

// TestWriteRTPNoAlloc: the send path allocates nothing per packet once the
// caller's header has its extension list.
func TestWriteRTPNoAlloc(t *testing.T) {
	tr := sendOnly(t)
	payload := make([]byte, 1200)
	var h rtp.Header
	write := func() {
		h = rtp.Header{Version: 2, SequenceNumber: h.SequenceNumber + 1, Extensions: h.Extensions[:0]}
		if err := tr.WriteRTP(tr.video, &h, payload); !errors.Is(err, peer.ErrNoPath) {
			t.Fatalf("WriteRTP: %v", err)
		}
	}
	write()
	if n := testing.AllocsPerRun(1000, write); n != 0 {
		t.Errorf("%v allocations per packet, want 0", n)
	}
}

// BenchmarkWriteRTP is one viewer's per-packet send work: the header with
// its transport-wide sequence number, the BWE's record and AES-GCM in
// place, for a 1200-byte payload (the socket's queue and system calls are
// peer's BenchmarkFanout).
func BenchmarkWriteRTP(b *testing.B) {
	tr := sendOnly(b)
	payload := make([]byte, 1200)
	var h rtp.Header
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for i := 0; b.Loop(); i++ {
		h = rtp.Header{Version: 2, SequenceNumber: uint16(i), Timestamp: uint32(i / 7 * 3000), Extensions: h.Extensions[:0]}
		tr.WriteRTP(tr.video, &h, payload)
	}
}

// TestWeDialDTLS: a viewer that offers a=setup:passive wants to be the
// DTLS server; the transport dials it once a path is nominated, and media
// flows. (Browsers offer actpass; some WHEP clients do not.)
func TestWeDialDTLS(t *testing.T) {
	e := testEngine(t, false)
	v := newViewer(t, false)
	offer := strings.ReplaceAll(v.offer(t), "a=setup:actpass", "a=setup:passive")
	tr, answer := connectOffer(t, e, v, offer, nil)
	if !strings.Contains(answer, "a=setup:active") {
		t.Fatalf("answer does not take the active role:\n%s", answer)
	}
	var h rtp.Header
	eventually(t, "media at the viewer", 5*time.Second, func() bool {
		h = rtp.Header{Version: 2, SequenceNumber: h.SequenceNumber + 1, Extensions: h.Extensions[:0]}
		tr.WriteRTP(tr.Video(), &h, []byte{0x65, 1})
		tr.Flush()
		select {
		case <-v.packets:
			return true
		default:
			return false
		}
	})
	if letGo(tr) {
		t.Error("a DTLS client's connection was let go without its record keys")
	}
}

// TestTWCCPerSection: a track counts in the viewer's transport-wide
// feedback only if its own section offered the extension.
func TestTWCCPerSection(t *testing.T) {
	e := testEngine(t, true)
	offer := offers(t)["chrome"]
	audio := strings.Index(offer, "m=audio")
	i := strings.Index(offer[max(audio, 0):], "a=extmap:3 "+TransportCCURI)
	if audio < 0 || i < 0 {
		t.Fatal("the Chrome sample has no transport-cc in its audio section")
	}
	line, rest, _ := strings.Cut(offer[audio+i:], "\n")
	offer = offer[:audio+i] + rest
	if strings.Count(offer, TransportCCURI) != 1 {
		t.Fatalf("took out %q, but the offer still has it %d times", line, strings.Count(offer, TransportCCURI))
	}
	tr, answer, err := New(e, Params{Offer: offer, Video: true, Audio: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if !tr.Video().TWCC || tr.Audio().TWCC {
		t.Errorf("video TWCC %v, audio %v; want true, false", tr.Video().TWCC, tr.Audio().TWCC)
	}
	// The answer names the extension only where it was offered.
	var d sdp.SessionDescription
	if err := d.UnmarshalString(answer); err != nil {
		t.Fatal(err)
	}
	for _, md := range d.MediaDescriptions {
		ext, _ := md.Attribute("extmap")
		if got, want := strings.HasSuffix(ext, TransportCCURI), md.MediaName.Media == "video"; got != want {
			t.Errorf("%s section: extmap %q", md.MediaName.Media, ext)
		}
	}

	// A packet of the audio carries no transport-wide number and is not
	// recorded by the BWE; one of the video is.
	st := sendOnly(t)
	st.audio = &Track{Kind: "audio", ClockRate: 48000, SSRC: 2, PT: 111}
	for _, k := range []*Track{st.audio, st.video} {
		h := rtp.Header{Version: 2}
		if err := st.WriteRTP(k, &h, make([]byte, 100)); !errors.Is(err, peer.ErrNoPath) {
			t.Fatalf("WriteRTP: %v", err)
		}
		if got := h.GetExtension(3) != nil; got != k.TWCC {
			t.Errorf("%s packet: transport-wide number %v, want %v", k.Kind, got, k.TWCC)
		}
	}
	if st.twccSeq != 1 {
		t.Errorf("%d transport-wide numbers taken, want 1 (the video's)", st.twccSeq)
	}
}
