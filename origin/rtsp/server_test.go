package rtsp

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v5"
	"github.com/bluenviron/gortsplib/v5/pkg/base"
	"github.com/bluenviron/gortsplib/v5/pkg/description"
	"github.com/bluenviron/gortsplib/v5/pkg/format"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cascade-cdn/cascade/origin/auth"
	"github.com/cascade-cdn/cascade/origin/registry"
)

func startServer(t *testing.T, mutate ...func(*Config)) (*Server, *registry.Registry) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := registry.New(registry.Config{GracePeriod: time.Second, SilenceTimeout: 3 * time.Second}, prometheus.NewRegistry(), log)
	cfg := Config{Listen: "127.0.0.1:0", ReadTimeout: 2 * time.Second}
	for _, m := range mutate {
		m(&cfg)
	}
	s, err := New(cfg, reg,
		auth.Config{OpenPublish: true, PublishKeys: map[string]string{"keyed": "k3y"}}, "s3cret", nil, prometheus.NewRegistry(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); reg.Close() })
	return s, reg
}

// rawConn speaks RTSP by hand, to send what no library would.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, s *Server) *rawConn {
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

// do sends raw and returns the status code and headers of the answer, or
// -1 if the server closed the connection instead.
func (r *rawConn) do(raw string) (int, string) {
	// Past the server's idle timeout (3 × 2 s), which closes connections
	// that sent garbage.
	r.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(r.c, raw); err != nil {
		return -1, ""
	}
	line, err := r.br.ReadString('\n')
	if err != nil {
		return -1, ""
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		r.t.Fatalf("bad status line %q", line)
	}
	code, _ := strconv.Atoi(f[1])
	var hdr strings.Builder
	length := 0
	for {
		l, err := r.br.ReadString('\n')
		if err != nil || l == "\r\n" {
			break
		}
		hdr.WriteString(l)
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "Content-Length") {
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	io.CopyN(io.Discard, r.br, int64(length))
	return code, hdr.String()
}

func request(method, url string, cseq int, hdr, body string) string {
	if body != "" {
		hdr += fmt.Sprintf("Content-Type: application/sdp\r\nContent-Length: %d\r\n", len(body))
	}
	return fmt.Sprintf("%s %s RTSP/1.0\r\nCSeq: %d\r\n%s\r\n%s", method, url, cseq, hdr, body)
}

const h264SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\na=control:streamid=0\r\n"

// publishH264 starts a gortsplib publisher sending one small access unit
// every 33 ms to name, until the test ends.
func publishH264(t *testing.T, s *Server, name string) {
	t.Helper()
	publishH264As(t, s, "", name)
}

// publishH264As is publishH264 with credentials ("user:pass@" or "").
func publishH264As(t *testing.T, s *Server, userinfo, name string) {
	t.Helper()
	forma := &format.H264{PayloadTyp: 96, PacketizationMode: 1}
	medi := &description.Media{Type: description.MediaTypeVideo, Formats: []format.Format{forma}}
	tcp := gortsplib.ProtocolTCP
	c := &gortsplib.Client{Protocol: &tcp}
	scheme := "rtsp://"
	if s.gs.TLSConfig != nil {
		c.TLSConfig, scheme = &tls.Config{InsecureSkipVerify: true}, "rtsps://"
	}
	if err := c.StartRecording(scheme+userinfo+s.Addr().String()+"/"+name, &description.Session{Medias: []*description.Media{medi}}); err != nil {
		t.Fatal(err)
	}
	enc, _ := forma.CreateEncoder()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(33 * time.Millisecond)
		defer tick.Stop()
		for i := uint32(0); ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			au := [][]byte{{0x65, 0x88, 0x84, byte(i)}} // an IDR slice, as far as the ingest cares
			if i%30 != 0 {
				au = [][]byte{{0x41, 0x9a, byte(i)}}
			}
			pkts, _ := enc.Encode(au)
			for _, p := range pkts {
				p.Timestamp = i * 3000
				c.WritePacketRTP(medi, p)
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done; c.Close() })
}

// TestBadRequests sends malformed and out-of-order requests while a good
// publisher streams: each gets a clear status or a close, the refusals
// are counted, and the good stream never stops.
func TestBadRequests(t *testing.T) {
	s, reg := startServer(t)
	publishH264(t, s, "good")
	base := "rtsp://" + s.Addr().String()
	vp8 := strings.Replace(strings.Replace(h264SDP, "H264", "VP8", 1), "a=fmtp:96 packetization-mode=1\r\n", "", 1)

	cases := []struct {
		name  string
		reqs  []string // earlier requests set the state; the last is judged
		codes []int    // acceptable answers to the last (-1: closed)
	}{
		{"garbage", []string{"HELLO THERE\r\n\r\n"}, []int{400, -1}},
		{"unknown method", []string{request("BREW", base+"/good", 1, "", "")}, []int{400, 501}},
		{"oversized header", []string{"OPTIONS " + base + "/good RTSP/1.0\r\nCSeq: 1\r\nX-Big: " + strings.Repeat("a", 200<<10) + "\r\n\r\n"}, []int{400, -1}},
		{"bad stream name", []string{request("ANNOUNCE", base+"/bad%20name!", 1, "", h264SDP)}, []int{400}},
		{"unparsable SDP", []string{request("ANNOUNCE", base+"/x1", 1, "", "this is not sdp")}, []int{400}},
		{"no usable codec", []string{request("ANNOUNCE", base+"/x2", 1, "", vp8)}, []int{406}},
		{"keyed stream without key", []string{request("ANNOUNCE", base+"/keyed", 1, "", h264SDP)}, []int{401}},
		{"RECORD without SETUP", []string{request("RECORD", base+"/x3", 1, "", "")}, []int{455}},
		{"relay read without secret", []string{request("DESCRIBE", base+"/good", 1, "", "")}, []int{401}},
		{"PLAY without SETUP", []string{request("PLAY", base+"/good", 1, "", "")}, []int{455}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := dialRaw(t, s)
			var code int
			var hdr string
			for _, req := range c.reqs {
				code, hdr = r.do(req)
			}
			ok := false
			for _, want := range c.codes {
				ok = ok || code == want
			}
			if !ok {
				t.Fatalf("answered %d, want one of %v", code, c.codes)
			}
			if code == 401 && !strings.Contains(hdr, "WWW-Authenticate") {
				t.Errorf("401 without WWW-Authenticate:\n%s", hdr)
			}
		})
	}

	// A raw publisher: interleaved frames on a channel it never set up are
	// dropped (by gortsplib, which reports nothing we could count); its
	// session goes on.
	r := dialRaw(t, s)
	if code, _ := r.do(request("ANNOUNCE", base+"/raw", 1, "", h264SDP)); code != 200 {
		t.Fatalf("ANNOUNCE: %d", code)
	}
	code, hdr := r.do(request("SETUP", base+"/raw/streamid=0", 2, "Transport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n", ""))
	sess := ""
	for l := range strings.SplitSeq(hdr, "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "Session") {
			sess, _, _ = strings.Cut(strings.TrimSpace(v), ";")
		}
	}
	if code != 200 || sess == "" {
		t.Fatalf("SETUP: %d %q", code, hdr)
	}
	if code, _ := r.do(request("RECORD", base+"/raw", 3, "Session: "+sess+"\r\n", "")); code != 200 {
		t.Fatalf("RECORD: %d", code)
	}
	if code, _ := r.do("$\x07\x00\x04abcd" + request("GET_PARAMETER", base+"/raw", 4, "Session: "+sess+"\r\n", "")); code != 200 {
		t.Fatalf("GET_PARAMETER after a stray interleaved frame: %d", code)
	}

	st := reg.Get("good")
	if st == nil || st.Info().Source != "rtsp-publish" {
		t.Fatal("the good publisher is gone")
	}
	before := st.Video.Stats().Packets
	time.Sleep(300 * time.Millisecond)
	if after := st.Video.Stats().Packets; after <= before {
		t.Fatalf("the good stream stopped: %d then %d packets", before, after)
	}
	if got := testutil.ToFloat64(s.m.refused.WithLabelValues("no_codec")); got != 1 {
		t.Errorf("no_codec refusals %v, want 1", got)
	}
	if got := testutil.ToFloat64(s.m.refused.WithLabelValues("auth")); got < 2 {
		t.Errorf("auth refusals %v, want >= 2", got)
	}
}

// TestPublishWithKey: a keyed stream takes its key as the password of user
// "publish" (gortsplib answers the first try with a Digest challenge).
func TestPublishWithKey(t *testing.T) {
	s, reg := startServer(t)
	publishH264As(t, s, "publish:k3y@", "keyed")
	if st := reg.Get("keyed"); st == nil || st.Info().Source != "rtsp-publish" {
		t.Fatal("a publisher with the right key is not live")
	}
}

// TestSilentPublisherClosed: a publisher that records and then sends
// nothing is closed by the read timeout and leaves its stream.
func TestSilentPublisherClosed(t *testing.T) {
	s, reg := startServer(t)
	forma := &format.H264{PayloadTyp: 96, PacketizationMode: 1}
	medi := &description.Media{Type: description.MediaTypeVideo, Formats: []format.Format{forma}}
	tcp := gortsplib.ProtocolTCP
	c := &gortsplib.Client{Protocol: &tcp}
	if err := c.StartRecording("rtsp://"+s.Addr().String()+"/quiet", &description.Session{Medias: []*description.Media{medi}}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st := reg.Get("quiet")
	if st == nil {
		t.Fatal("not published")
	}
	deadline := time.Now().Add(10 * time.Second)
	for st.Info().Source != "" {
		if time.Now().After(deadline) {
			t.Fatal("a silent publisher is still publishing after 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// selfSigned writes a throwaway certificate and key for 127.0.0.1.
func selfSigned(t *testing.T) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cascade test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return cert, key
}

// TestRTSPS publishes and relay-reads over TLS when a certificate is
// configured.
func TestRTSPS(t *testing.T) {
	cert, key := selfSigned(t)
	s, _ := startServer(t, func(c *Config) { c.TLSCert, c.TLSKey = cert, key })
	publishH264(t, s, "secure")
	u, _ := base.ParseURL("rtsps://cascade:s3cret@" + s.Addr().String() + "/secure")
	tcp := gortsplib.ProtocolTCP
	c := &gortsplib.Client{Scheme: u.Scheme, Host: u.Host, Protocol: &tcp, TLSConfig: &tls.Config{InsecureSkipVerify: true}}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	desc, _, err := c.Describe(u)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetupAll(desc.BaseURL, desc.Medias); err != nil {
		t.Fatal(err)
	}
	var got atomic.Int64
	c.OnPacketRTP(desc.Medias[0], desc.Medias[0].Formats[0], func(*rtp.Packet) { got.Add(1) })
	if _, err := c.Play(nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for got.Load() < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("%d packets over RTSPS", got.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A plain-text client gets nothing from a TLS port.
	plain := &gortsplib.Client{Scheme: "rtsp", Host: u.Host, Protocol: &tcp, ReadTimeout: time.Second}
	if err := plain.Start(); err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, _, err := plain.Describe(u); err == nil {
		t.Fatal("plain RTSP worked on the RTSPS port")
	}
}
