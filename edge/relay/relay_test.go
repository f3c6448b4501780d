package relay

import (
	"bufio"
	"encoding/binary"
	"log/slog"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// badParent is a hand-written RTSP server (not gortsplib's, which only
// sends well-formed RTP) for one H.264 stream. Once a reader plays, it
// interleaves garbage with good packets: frames that are not RTP at all
// and RTP of a payload type the description does not have, between
// single-NAL IDR packets.
type badParent struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	conn []net.Conn
	done chan struct{}
}

func newBadParent(t *testing.T) *badParent {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &badParent{ln: ln, done: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conn = append(p.conn, c)
			p.mu.Unlock()
			p.wg.Add(1)
			go p.serve(c)
		}
	}()
	t.Cleanup(p.close)
	return p
}

func (p *badParent) url() string { return "rtsp://" + p.ln.Addr().String() }

func (p *badParent) close() {
	close(p.done)
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conn {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

const badSDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=bad\r\nt=0 0\r\n" +
	"m=video 0 RTP/AVP 96\r\na=control:trackID=0\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n" +
	"a=" + RenditionAttr + ":source width=640 height=360 bitrate=500000\r\n"

func (p *badParent) serve(c net.Conn) {
	defer p.wg.Done()
	defer c.Close()
	r := textproto.NewReader(bufio.NewReader(c))
	var wmu sync.Mutex
	write := func(b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, err := c.Write(b)
		return err
	}
	for {
		line, err := r.ReadLine()
		if err != nil {
			return
		}
		if line == "" || line[0] == '$' { // interleaved RTCP from the reader: skip
			continue
		}
		hdr, err := r.ReadMIMEHeader()
		if err != nil {
			return
		}
		method := strings.Fields(line)[0]
		head := "RTSP/1.0 200 OK\r\nCSeq: " + hdr.Get("Cseq") + "\r\n"
		body := ""
		switch method {
		case "OPTIONS":
			head += "Public: DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER\r\n"
		case "DESCRIBE":
			u := strings.Fields(line)[1]
			head += "Content-Base: " + u + "/\r\nContent-Type: application/sdp\r\n"
			body = badSDP
		case "SETUP":
			head += "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 12345678;timeout=60\r\n"
		case "PLAY":
			head += "Session: 12345678\r\n"
			p.wg.Add(1)
			go p.send(write)
		default:
			head += "Session: 12345678\r\n"
		}
		head += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
		if write([]byte(head+body)) != nil {
			return
		}
	}
}

// send writes, every 10 ms: a frame that is not RTP, an RTP packet of an
// unknown payload type, and a good IDR packet.
func (p *badParent) send(write func([]byte) error) {
	defer p.wg.Done()
	frame := func(b []byte) []byte {
		out := []byte{'$', 0, 0, 0}
		binary.BigEndian.PutUint16(out[2:], uint16(len(b)))
		return append(out, b...)
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for seq := uint16(1); ; seq++ {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
		good, _ := (&rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: seq, Timestamp: uint32(seq) * 3000, Marker: true},
			Payload: []byte{0x65, 0x88, 0x84, 0x00, 0x33}}).Marshal()
		wrongPT, _ := (&rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 33, SequenceNumber: seq}, Payload: []byte{1, 2, 3}}).Marshal()
		notRTP := []byte{0x00, 0xff, 0x13, 0x37}
		var b []byte
		for _, pkt := range [][]byte{notRTP, wrongPT, good} {
			b = append(b, frame(pkt)...)
		}
		if write(b) != nil {
			return
		}
	}
}

// TestGarbageFromParent: a parent that mixes garbage into the stream
// does not break the relay: the garbage is dropped and counted, the good
// packets reach the local hub, and the session is never torn down for it.
func TestGarbageFromParent(t *testing.T) {
	parent := newBadParent(t)
	m := NewMetrics(prometheus.NewRegistry())
	log := slog.New(slog.DiscardHandler)
	pull, err := Start("live", func() (string, error) { return parent.url(), nil }, "", m, log)
	if err != nil {
		t.Fatal(err)
	}
	defer pull.Close()
	rungs := pull.Rungs()
	if len(rungs) != 1 || rungs[0].Name != "source" || rungs[0].Width != 640 {
		t.Fatalf("rungs %+v, want the parent's one source rung of 640 wide", rungs)
	}
	sub := rungs[0].Hub.Subscribe() // a viewer: the rung is pulled
	defer sub.Close()
	got := 0
	deadline := time.After(15 * time.Second)
	for got < 50 {
		select {
		case <-sub.Wake():
			for _, e := range sub.Pop(nil) {
				if len(e.Packet.Payload) != 5 || e.Packet.Payload[0] != 0x65 {
					t.Fatalf("garbage reached the hub: % x", e.Packet.Payload)
				}
				got++
			}
		case <-deadline:
			t.Fatalf("%d good packets through the relay in 15 s, want 50", got)
		}
	}
	if bad := testutil.ToFloat64(m.garbage); bad < 50 {
		t.Errorf("%v bad packets counted, want one or two per good packet", bad)
	}
	if broke := testutil.CollectAndCount(m.errors); broke != 0 {
		t.Errorf("the relay session broke %d times on garbage", broke)
	}
	if n := testutil.ToFloat64(m.bytes); n < float64(5*got) {
		t.Errorf("%v payload bytes in counted for %d good packets of 5 bytes", n, got)
	}
}
