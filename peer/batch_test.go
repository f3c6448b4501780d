package peer

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
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
	b := newBatchConn(uc, -1)
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
func BenchmarkBatchConnWrite(b *testing.B) { benchWrite(b, true, true) }

// BenchmarkBatchConnWriteNoGSO is the same with every packet its own
// datagram in the sendmmsg batch.
func BenchmarkBatchConnWriteNoGSO(b *testing.B) { benchWrite(b, true, false) }

func BenchmarkPlainWrite(b *testing.B) { benchWrite(b, false, false) }

func benchWrite(b *testing.B, batched, gso bool) {
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
	bc := newBatchConn(uc, -1)
	defer bc.Close()
	bc.gso.Store(bc.gso.Load() && gso)
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

// TestBatchConnSegments: runs of packets to one address go out as UDP GSO
// messages where the kernel has it, and the receiver still gets every
// datagram whole, with its own size, in order: a run ends at a shorter
// packet, a longer one or another address.
func TestBatchConnSegments(t *testing.T) {
	var recv [2]*net.UDPConn
	for i := range recv {
		r, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		growBuffers(r)
		recv[i] = r
	}
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b := newBatchConn(uc, -1)
	defer b.Close()

	// Sizes as a fan-out writes them: frames of equal packets and a short
	// last one, audio between, a bigger packet after a smaller one.
	sizes := []int{1200, 1200, 1200, 700, 1200, 1200, 160, 1200, 90, 1400, 1400, 1400, 1400, 1300, 1300}
	b.mu.Lock() // queue them all before the flusher looks
	var want [2][]int
	for i := 0; i < 200; i++ {
		for k, n := range sizes {
			p := make([]byte, n)
			binary.BigEndian.PutUint32(p, uint32(i<<16|k))
			p[n-1] = byte(n)
			to := (i / 3) % 2
			want[to] = append(want[to], n)
			s := b.free[len(b.free)-1]
			b.free = b.free[:len(b.free)-1]
			s.n = copy(s.buf[:], p)
			s.dst = recv[to].LocalAddr().(*net.UDPAddr).AddrPort()
			b.pending = append(b.pending, s)
		}
	}
	b.mu.Unlock()
	b.wake <- struct{}{}

	for to, r := range recv {
		buf := make([]byte, 2000)
		r.SetReadDeadline(time.Now().Add(10 * time.Second))
		for i, n := range want[to] {
			got, _, err := r.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("receiver %d, datagram %d: %v (dropped %d)", to, i, err, b.dropped.Load())
			}
			if got != n || buf[got-1] != byte(n) {
				t.Fatalf("receiver %d, datagram %d: %d bytes, want %d", to, i, got, n)
			}
		}
	}
	// The counters are updated once sendmmsg returns, which may be just
	// after the receivers have read the last datagrams.
	b.Close()
	if b.gso.Load() && b.gsoMsgs.Load() == 0 {
		t.Error("GSO is supported but no run was segmented")
	}
	t.Logf("gso %v: %d packets in %d sendmmsg calls, %d segmented messages", b.gso.Load(), b.sent.Load(), b.batches.Load(), b.gsoMsgs.Load())

	e := &Engine{udp: []*socket{{batchConn: b}}}
	if st := e.SocketStats(); st.Packets != b.sent.Load() || st.Packets < uint64(len(want[0])+len(want[1])) || st.GSO != b.gso.Load() || st.Segmented != b.gsoMsgs.Load() {
		t.Errorf("SocketStats %+v does not match the socket's counters", st)
	}
}

// BenchmarkFanout is the socket's cost as a fan-out meets it: a frame of
// seven packets (six equal, a shorter last) to each of 100 viewers in
// turn. It reports the process's CPU time per packet (cpu-ns/pkt), which
// counts the flusher and the kernel's loopback delivery and, unlike
// ns/op, holds on a machine shared with other work. Nothing reads the
// receiving sockets: once full, the kernel drops there.
func BenchmarkFanout(b *testing.B) { benchFanout(b, true) }

// BenchmarkFanoutNoGSO is BenchmarkFanout with every packet its own
// datagram in the sendmmsg batch.
func BenchmarkFanoutNoGSO(b *testing.B) { benchFanout(b, false) }

func benchFanout(b *testing.B, gso bool) {
	const viewers = 100
	dsts := make([]netip.AddrPort, viewers)
	for i := range dsts {
		r, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		dsts[i] = r.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	uc, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	growBuffers(uc)
	bc := newBatchConn(uc, -1)
	defer bc.Close()
	bc.gso.Store(bc.gso.Load() && gso)
	frame := [][]byte{make([]byte, 1200), make([]byte, 1200), make([]byte, 1200), make([]byte, 1200), make([]byte, 1200), make([]byte, 1200), make([]byte, 700)}
	idle := func() {
		for {
			bc.mu.Lock()
			n := len(bc.pending)
			bc.mu.Unlock()
			if n < 1024 {
				return
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; {
		for _, d := range dsts {
			for _, p := range frame {
				bc.WriteToAddrPort(p, d)
				i++
			}
		}
		idle()
	}
	for bc.sent.Load()+bc.dropped.Load() < uint64(b.N) {
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/pkt")
	if bc.dropped.Load() > 0 {
		b.Logf("%d of %d dropped", bc.dropped.Load(), b.N)
	}
}

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
