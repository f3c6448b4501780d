package peer

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBatchConnDeliversEveryPacket(t *testing.T) {
	recv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	growBuffers(recv)
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b := newBatchConn(uc)
	defer b.Close()

	const writers, each = 8, 200
	dst := recv.LocalAddr().(*net.UDPAddr).AddrPort()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 1200)
			for i := 0; i < each; i++ {
				binary.BigEndian.PutUint32(p, uint32(w<<16|i))
				p[1199] = byte(i)
				if n, err := b.WriteToAddrPort(p, dst); n != len(p) || err != nil {
					t.Errorf("write: %d %v", n, err)
				}
				if i%50 == 0 {
					time.Sleep(time.Millisecond) // let the queue drain, as real pacing would
				}
			}
		}()
	}
	seen := map[uint32]bool{}
	buf := make([]byte, 2000)
	recv.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(seen) < writers*each {
		n, _, err := recv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("after %d packets: %v (dropped %d)", len(seen), err, b.dropped.Load())
		}
		id := binary.BigEndian.Uint32(buf)
		if n != 1200 || buf[1199] != byte(id&0xffff) {
			t.Fatalf("packet %x corrupted (len %d)", id, n)
		}
		seen[id] = true
	}
	wg.Wait()
	if b.batches.Load() >= b.sent.Load() {
		t.Logf("no batching happened: %d batches for %d packets", b.batches.Load(), b.sent.Load())
	}
}

// BenchmarkBatchConnWrite is the fan-out's socket cost per packet, to
// compare with BenchmarkPlainWrite (one sendto each).
func BenchmarkBatchConnWrite(b *testing.B) { benchWrite(b, true) }

func BenchmarkPlainWrite(b *testing.B) { benchWrite(b, false) }

func benchWrite(b *testing.B, batched bool) {
	recv, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	growBuffers(recv)
	go func() {
		buf := make([]byte, 2000)
		for {
			if _, _, err := recv.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
		}
	}()
	defer recv.Close()
	uc, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	growBuffers(uc)
	dst := recv.LocalAddr().(*net.UDPAddr).AddrPort()
	p := make([]byte, 1200)
	b.ReportAllocs()
	if !batched {
		defer uc.Close()
		for i := 0; i < b.N; i++ {
			uc.WriteToUDPAddrPort(p, dst)
		}
		return
	}
	bc := newBatchConn(uc)
	defer bc.Close()
	for i := 0; i < b.N; i++ {
		bc.WriteToAddrPort(p, dst)
		if i%64 == 63 {
			for { // keep the queue from overflowing: wait for the flusher
				bc.mu.Lock()
				n := len(bc.pending)
				bc.mu.Unlock()
				if n < 1024 {
					break
				}
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
}

// TestTCPPortTaken: ICE-TCP must get the UDP port's number; when a fixed
// port's TCP side is taken, New fails and says so (with ":0" it retries
// with another port instead).
func TestTCPPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := DefaultConfig()
	cfg.Listen = ln.Addr().String()
	if e, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		e.Close()
		t.Fatal("New succeeded with the TCP port taken")
	} else if !strings.Contains(err.Error(), "listen tcp") {
		t.Fatalf("error %q does not say what failed", err)
	}
	cfg.Listen = "127.0.0.1:0"
	e, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
}
