package node

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v5"
	"github.com/bluenviron/gortsplib/v5/pkg/base"
	"github.com/bluenviron/gortsplib/v5/pkg/description"
	"github.com/bluenviron/gortsplib/v5/pkg/format"
	"github.com/bluenviron/gortsplib/v5/pkg/format/rtph264"
	"github.com/bluenviron/gortsplib/v5/pkg/liberrors"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/pion/rtp"

	"github.com/cascade-cdn/cascade/media/mediatest"
	"github.com/cascade-cdn/cascade/origin/rtsp"
	"github.com/cascade-cdn/cascade/transcode/av"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

func needFFmpeg(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("ffmpeg")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ffmpeg missing: CI must install it")
		}
		t.Skip("ffmpeg not installed")
	}
	return p
}

// freeUDPPair finds an even UDP port whose successor is free too, for the
// RTSP server's RTP/RTCP pair.
func freeUDPPair(t *testing.T) (rtpAddr, rtcpAddr string) {
	t.Helper()
	for range 50 {
		a, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := a.LocalAddr().(*net.UDPAddr).Port &^ 1
		a.Close()
		x, err1 := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", p))
		y, err2 := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", p+1))
		if x != nil {
			x.Close()
		}
		if y != nil {
			y.Close()
		}
		if err1 == nil && err2 == nil {
			return fmt.Sprintf("127.0.0.1:%d", p), fmt.Sprintf("127.0.0.1:%d", p+1)
		}
	}
	t.Fatal("no free UDP port pair")
	return "", ""
}

func rtspURL(n *Node, stream string) string {
	return "rtsp://" + n.rtsp.Addr().String() + "/" + stream
}

// ffmpegPublish runs Debian's ffmpeg publishing a live test pattern and a
// tone to url until the test ends.
func ffmpegPublish(t *testing.T, url string, args ...string) {
	t.Helper()
	ff := needFFmpeg(t)
	ctx, cancel := context.WithCancel(context.Background())
	full := append([]string{"-hide_banner", "-loglevel", "error", "-re",
		"-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
		"-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "60"}, args...)
	full = append(full, "-f", "rtsp", url)
	cmd := exec.CommandContext(ctx, ff, full...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("ffmpeg: %s", stderr.String())
		}
	})
}

// decodeAUs decodes access units with libavcodec and returns how many
// frames came out and the size of the last.
func decodeAUs(t *testing.T, aus [][]byte) (frames, w, h int) {
	t.Helper()
	dec, err := av.NewDecoder("H264")
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	for i, au := range aus {
		err := dec.Decode(au, int64(i)*3000, func(f *av.Frame) error {
			frames, w, h = frames+1, f.Width(), f.Height()
			return nil
		})
		if err != nil {
			t.Fatalf("access unit %d: %v", i, err)
		}
	}
	return frames, w, h
}

// TestRTSPPublishFFmpeg publishes with ffmpeg over RTSP (TCP and UDP,
// baseline + Opus, H.265 + G.711, High with B-frames + AAC); a pion WHEP viewer gets
// decodable 640x360 video and Opus audio each time, and the API names the
// source rtsp-publish.
func TestRTSPPublishFFmpeg(t *testing.T) {
	// About 2 Mbps: a joining viewer gets the cached GOP, ~250 KB, at once;
	// unpaced, that overflowed the viewer's socket and lost frames.
	baseline := []string{"-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-profile:v", "baseline", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "libopus", "-b:a", "64k"}
	cases := []struct {
		name      string
		transport string
		args      []string
		transcode bool
	}{
		{"h264-opus-tcp", "tcp", baseline, false},
		{"h264-opus-udp", "udp", baseline, false},
		{"h265-g711", "tcp", []string{"-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "keyint=30:bframes=0:log-level=error", "-b:v", "1M", "-pix_fmt", "yuv420p", "-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1"}, true},
		{"high-bframes-aac", "tcp", []string{"-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-bf", "2", "-g", "30", "-b:v", "1M", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := startNode(t, func(cfg *Config) {
				if c.transport == "udp" {
					cfg.RTSP.UDPRTP, cfg.RTSP.UDPRTCP = freeUDPPair(t)
				}
				cfg.Transcode.Enabled = c.transcode
			})
			ffmpegPublish(t, rtspURL(n, "live"), append(c.args, "-rtsp_transport", c.transport)...)
			eventually(t, "stream live", 15*time.Second, func() bool {
				s, _ := getStream(t, n, "live")
				return s != nil && s["source"] == "rtsp-publish"
			})
			v, err := mediatest.Watch(ctxT(t, 10*time.Second), n.URL()+"/whep/live", mediatest.ViewerOptions{KeepAccessUnits: 60})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			if key, err := v.FirstVideo(ctxT(t, 15*time.Second)); err != nil || !key {
				t.Fatalf("first video packet keyframe=%v err=%v", key, err)
			}
			eventually(t, "60 access units and audio", 20*time.Second, func() bool {
				return len(v.AccessUnits()) >= 60 && v.AudioPackets.Load() >= 50
			})
			frames, w, h := decodeAUs(t, v.AccessUnits())
			if frames < 55 || w != 640 || h != 360 {
				t.Fatalf("decoded %d frames of %dx%d, want >= 55 of 640x360", frames, w, h)
			}
			if c.transcode {
				s, _ := getStream(t, n, "live")
				if src := s["renditions"].([]any)[0].(map[string]any); src["reencoded"] == nil {
					t.Errorf("a %s source is not reported re-encoded: %v", c.name, src)
				}
			}
		})
	}
}

// camera is a gortsplib server playing real H.264 in a loop, as an IP
// camera would, behind Digest/Basic credentials.
type camera struct {
	srv    *gortsplib.Server
	stream *gortsplib.ServerStream
	stop   chan struct{}
	wg     sync.WaitGroup
	sent   atomic.Int64
}

func (c *camera) OnDescribe(ctx *gortsplib.ServerHandlerOnDescribeCtx) (*base.Response, *gortsplib.ServerStream, error) {
	if !ctx.Conn.VerifyCredentials(ctx.Request, "cam", "hunter2") {
		return &base.Response{StatusCode: base.StatusUnauthorized}, nil, liberrors.ErrServerAuth{}
	}
	return &base.Response{StatusCode: base.StatusOK}, c.stream, nil
}

func (c *camera) OnSetup(ctx *gortsplib.ServerHandlerOnSetupCtx) (*base.Response, *gortsplib.ServerStream, error) {
	if !ctx.Conn.VerifyCredentials(ctx.Request, "cam", "hunter2") {
		return &base.Response{StatusCode: base.StatusUnauthorized}, nil, liberrors.ErrServerAuth{}
	}
	return &base.Response{StatusCode: base.StatusOK}, c.stream, nil
}

func (c *camera) OnPlay(*gortsplib.ServerHandlerOnPlayCtx) (*base.Response, error) {
	return &base.Response{StatusCode: base.StatusOK}, nil
}

func startCamera(t *testing.T, addr string, aus [][]byte) *camera {
	t.Helper()
	c := &camera{stop: make(chan struct{})}
	c.srv = &gortsplib.Server{Handler: c, RTSPAddress: addr}
	var err error
	for range 50 { // the port of a camera just closed may linger a moment
		if err = c.srv.Start(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	forma := &format.H264{PayloadTyp: 96, PacketizationMode: 1}
	medi := &description.Media{Type: description.MediaTypeVideo, Formats: []format.Format{forma}}
	c.stream = &gortsplib.ServerStream{Server: c.srv, Desc: &description.Session{Medias: []*description.Media{medi}}}
	if err := c.stream.Initialize(); err != nil {
		t.Fatal(err)
	}
	enc, _ := forma.CreateEncoder()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		tick := time.NewTicker(33 * time.Millisecond)
		defer tick.Stop()
		// A camera's clock starts anywhere: near the 32-bit wrap here.
		ts := uint32(0xFFFF0000)
		for i := 0; ; i++ {
			select {
			case <-c.stop:
				return
			case <-tick.C:
			}
			pkts, err := enc.Encode(transcodetest.NALs(aus[i%len(aus)]))
			if err != nil {
				continue
			}
			for _, p := range pkts {
				p.Timestamp = ts
				c.stream.WritePacketRTP(medi, p)
			}
			c.sent.Add(1)
			ts += 3000
		}
	}()
	return c
}

func (c *camera) close() {
	close(c.stop)
	c.wg.Wait()
	c.stream.Close()
	c.srv.Close()
}

// lockedBuffer collects a node's logs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRTSPPullCamera pulls an on-demand camera on the first viewer; the
// camera goes away and comes back; the viewer stays connected and frames
// resume. The camera's password never appears in logs or the API.
func TestRTSPPullCamera(t *testing.T) {
	aus, _ := transcodetest.Source(t, "2", "baseline")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	camAddr := ln.Addr().String()
	ln.Close()
	cam := startCamera(t, camAddr, aus)

	var logs lockedBuffer
	cfg := TestConfig()
	cfg.Sources = map[string]rtsp.SourceConfig{"cam1": {URL: "rtsp://cam:hunter2@" + camAddr + "/stream", OnDemand: true}}
	n, err := New(cfg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node log:\n%s", logs.String())
		}
	})

	if _, code := getStream(t, n, "cam1"); code != 404 {
		t.Fatalf("on-demand source live before any viewer: %d", code)
	}
	v := watch(t, n, "cam1") // starts the pull
	if key, err := v.FirstVideo(ctxT(t, 10*time.Second)); err != nil || !key {
		t.Fatalf("first video keyframe=%v err=%v", key, err)
	}
	eventually(t, "frames from the camera", 10*time.Second, func() bool { return v.VideoFrames.Load() >= 30 })
	s, _ := getStream(t, n, "cam1")
	if s["source"] != "rtsp-pull" || s["renditions"].([]any)[0].(map[string]any)["width"] != float64(1280) {
		t.Fatalf("stream %v, want an rtsp-pull 1280-wide source", s)
	}

	cam.close()
	time.Sleep(1500 * time.Millisecond) // the pull notices and backs off
	before := v.VideoFrames.Load()
	cam = startCamera(t, camAddr, aus)
	defer cam.close()
	eventually(t, "frames resume after the camera restarted", 20*time.Second, func() bool { return v.VideoFrames.Load() >= before+30 })
	if v.PC.ConnectionState().String() != "connected" {
		t.Fatalf("viewer state %s after the camera restart", v.PC.ConnectionState())
	}
	if !strings.Contains(metricsText(t, n), `cascade_rtsp_pull_reconnects_total{source="cam1"}`) {
		t.Error("no reconnect counted")
	}
	for _, where := range []string{logs.String(), metricsText(t, n), fmt.Sprint(getStream(t, n, "cam1"))} {
		if strings.Contains(where, "hunter2") {
			t.Fatal("the camera's password leaked")
		}
	}
}

// relayClient reads a stream's relay over RTSP and counts packets per media.
type relayClient struct {
	c      *gortsplib.Client
	desc   *description.Session
	body   string
	counts map[*description.Media]*atomic.Int64
}

func readRelay(t *testing.T, n *Node, userinfo, stream string, pick func([]*description.Media) []*description.Media,
	onPacket func(*description.Media, *rtp.Packet)) (*relayClient, error) {
	t.Helper()
	u, err := base.ParseURL("rtsp://" + userinfo + n.rtsp.Addr().String() + "/" + stream)
	if err != nil {
		t.Fatal(err)
	}
	tcp := gortsplib.ProtocolTCP
	rc := &relayClient{c: &gortsplib.Client{Scheme: u.Scheme, Host: u.Host, Protocol: &tcp}, counts: map[*description.Media]*atomic.Int64{}}
	if err := rc.c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.c.Close)
	desc, res, err := rc.c.Describe(u)
	if err != nil {
		return nil, err
	}
	rc.desc, rc.body = desc, string(res.Body)
	for _, m := range pick(desc.Medias) {
		if _, err := rc.c.Setup(desc.BaseURL, m, 0, 0); err != nil {
			t.Fatal(err)
		}
		cnt := &atomic.Int64{}
		rc.counts[m] = cnt
		rc.c.OnPacketRTP(m, m.Formats[0], func(p *rtp.Packet) {
			cnt.Add(1)
			if onPacket != nil {
				onPacket(m, p)
			}
		})
	}
	if _, err := rc.c.Play(nil); err != nil {
		t.Fatal(err)
	}
	return rc, nil
}

// TestRTSPRelayRead reads a transcoded stream's ladder over RTSP: every
// rung plus audio, each named in the SDP; a subset SETUP gets decodable
// video of its rung; a reader without the cluster secret gets 401.
func TestRTSPRelayRead(t *testing.T) {
	aus, _ := transcodetest.Source(t, "2", "baseline")
	n := startNode(t, func(c *Config) {
		c.Transcode.Enabled = true
		c.Cluster.Secret = "s3cret"
	})
	publish(t, n, "live", mediatest.PublisherOptions{AccessUnits: aus})
	eventually(t, "ladder planned", 15*time.Second, func() bool {
		s, _ := getStream(t, n, "live")
		return s != nil && len(s["renditions"].([]any)) == 4
	})

	for _, who := range []string{"", "cascade:wrong@"} {
		_, err := readRelay(t, n, who, "live", func(ms []*description.Media) []*description.Media { return ms }, nil)
		if err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("relay read with %q: %v, want 401", who, err)
		}
	}
	if _, err := readRelay(t, n, "cascade:s3cret@", "nope", nil, nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("relay read of an unknown stream: %v, want 404", err)
	}

	all, err := readRelay(t, n, "cascade:s3cret@", "live", func(ms []*description.Media) []*description.Media { return ms }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(all.desc.Medias) != 5 {
		t.Fatalf("%d medias, want 4 rungs + audio:\n%s", len(all.desc.Medias), all.body)
	}
	for _, want := range []string{
		"a=x-cascade-rendition:source width=1280 height=720",
		"a=x-cascade-rendition:480p width=854 height=480 bitrate=1000000",
		"a=x-cascade-rendition:360p width=640 height=360 bitrate=600000",
		"a=x-cascade-rendition:240p width=426 height=240 bitrate=300000",
	} {
		if !strings.Contains(all.body, want) {
			t.Errorf("SDP lacks %q:\n%s", want, all.body)
		}
	}
	eventually(t, "packets on every media", 15*time.Second, func() bool {
		for _, c := range all.counts {
			if c.Load() < 10 {
				return false
			}
		}
		return true
	})

	// A subset: the 360p rung (third media) only, decoded from its first
	// keyframe (a second reader joins the relay mid-GOP).
	var got [][]byte
	var mu sync.Mutex
	var dec *rtph264.Decoder
	_, err = readRelay(t, n, "cascade:s3cret@", "live", func(ms []*description.Media) []*description.Media { return ms[2:3] },
		func(m *description.Media, p *rtp.Packet) {
			if dec == nil {
				dec, _ = m.Formats[0].(*format.H264).CreateDecoder()
			}
			au, err := dec.Decode(p)
			if err != nil {
				return // more packets needed, or a unit begun before we joined
			}
			var b []byte
			for _, nal := range au {
				b = append(append(b, 0, 0, 0, 1), nal...)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) > 0 || h264.IsRandomAccess(au) {
				got = append(got, b)
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "30 access units of 360p", 15*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 30 })
	mu.Lock()
	aus360 := got
	mu.Unlock()
	frames, w, h := decodeAUs(t, aus360)
	if frames < 25 || w != 640 || h != 360 {
		t.Fatalf("360p over the relay: %d frames of %dx%d", frames, w, h)
	}
	if got := n.rtsp.RelayReaders("live"); got != 2 {
		t.Errorf("relay readers %d, want 2", got)
	}
	if !strings.Contains(metricsText(t, n), "cascade_rtsp_relay_readers 2") {
		t.Error("relay readers metric missing")
	}
}
