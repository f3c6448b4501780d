package node

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/nack"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"golang.org/x/sys/unix"

	"github.com/cascade-cdn/cascade/media/h264"
	"github.com/cascade-cdn/cascade/transcode/av"
)

// This file is the viewer side of the netem tests (netem_test.go): pion
// WHEP viewers that run in a child process inside a network namespace,
// because pion opens its sockets on goroutines of its own, which no setns
// on one thread can follow. The child is this test binary, started with
// -test.run=^TestNetemViewerProcess$ and its configuration in the
// environment. It writes one JSON message a line, prefixed with
// netemLinePrefix, on stdout: each viewer's Location as soon as it has it,
// then, once its stdin closes, each viewer's report.

const (
	netemChildEnv   = "CASCADE_NETEM_CHILD"
	netemLinePrefix = "NETEM "
	// netemGiveUp is how long a viewer waits for a missing packet before it
	// gives up on it and asks for a keyframe (a PLI), as a browser does
	// when retransmissions do not come.
	netemGiveUp = 300 * time.Millisecond
	// netemMaxNACKs is how often pion's generator asks for one packet:
	// libwebrtc stops after 10 tries too (kMaxNackRetries); see
	// startNetemViewer.
	netemMaxNACKs = 10
	// netemNACKEvery is how often pion's generator asks for what is
	// still missing: about this link's round trip with its queue.
	netemNACKEvery = 50 * time.Millisecond
	// netemReplayWindow is libwebrtc's SRTP replay window (pion's is 64).
	netemReplayWindow = 1024
)

// netemChildConfig is what the parent tells the child.
type netemChildConfig struct {
	URL string `json:"url"` // the WHEP endpoint
	// Addrs are the viewers' own addresses, one viewer each; a viewer's
	// UDP socket is bound to its address, and the namespace routes by
	// source address, so each viewer has its own link.
	Addrs []string `json:"addrs"`
	// Delay is added to everything a viewer sends (RTCP, STUN): the
	// kernel here has no netem, so the link's latency is made in the child.
	Delay time.Duration `json:"delay"`
	// Decode keeps every payload and decodes the rendered frames at the end.
	Decode bool `json:"decode"`
}

// netemMsg is one line from the child.
type netemMsg struct {
	Kind   string        `json:"kind"` // "loc", "report" or "error"
	V      int           `json:"v"`    // the viewer's index in Addrs
	Loc    string        `json:"loc,omitempty"`
	Err    string        `json:"err,omitempty"`
	Report *viewerReport `json:"report,omitempty"`
}

// viewerReport is what one viewer received, frame by frame. Times are Unix
// nanoseconds (the parent and the child share the machine's clock).
type viewerReport struct {
	Packets    int // video packets, padding included, duplicates not
	Padding    int // padding-only packets
	Duplicates int // packets that arrived twice (a retransmission after all)
	Audio      int
	PLIs       int // keyframe requests sent after giving up on a packet
	Frames     []frameRec
	// Holes are the video sequence numbers between the first and the last
	// received that never arrived, retransmissions included.
	Holes        []holeRec
	DecodeErrors int
	DecodeError  string // the first
	// ReadLag is how long after the kernel received a packet (audio or
	// video) the viewer read it, and pion stamped its arrival for the
	// transport-wide feedback: the median, the 99th percentile and the
	// longest.
	ReadLag [3]time.Duration
	Trace   []pktTrace `json:",omitempty"` // with netemDumpEnv
	Wire    []wireRec  `json:",omitempty"` // with netemDumpEnv
}

// frameRec is one video frame as the viewer saw it. Its packets are the
// media packets that carry its timestamp, from the one after the previous
// frame's last to its marker; it is complete when none of those sequence
// numbers (padding included) is missing.
type frameRec struct {
	TS       uint32 `json:"ts"`
	S0       uint64 `json:"s0"` // extended sequence numbers of its first and last packet
	S1       uint64 `json:"s1"`
	Key      bool   `json:"key,omitempty"` // it carries an SPS or an IDR slice
	Complete bool   `json:"ok,omitempty"`
	// Decodable: complete, and a keyframe or following a decodable frame.
	Decodable bool  `json:"dec,omitempty"`
	First     int64 `json:"first"` // its first packet's arrival
	Done      int64 `json:"done"`  // its last packet's arrival (retransmissions included)
	// Render is when a player would show it: when it is decodable and the
	// frame before it was shown, unless a later keyframe was complete
	// before then. 0 if never.
	Render int64 `json:"render,omitempty"`
	// W and H are the size its SPS gives (the last keyframe's SPS); DW and
	// DH the decoder's, with Decode.
	W  int `json:"w,omitempty"`
	H  int `json:"h,omitempty"`
	DW int `json:"dw,omitempty"`
	DH int `json:"dh,omitempty"`
}

// holeRec is a sequence number never received, and about when it should
// have arrived: the arrival of the nearest packet received before it.
type holeRec struct {
	Seq uint64 `json:"seq"`
	At  int64  `json:"at"`
}

// TestNetemViewerProcess is the child process of the netem tests; run
// alone, it skips.
func TestNetemViewerProcess(t *testing.T) {
	raw := os.Getenv(netemChildEnv)
	if raw == "" {
		t.Skip("the netem tests' viewer process: started by them inside a network namespace")
	}
	var cfg netemChildConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	var outMu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	send := func(m netemMsg) {
		b, _ := json.Marshal(m)
		outMu.Lock()
		defer outMu.Unlock()
		out.WriteString(netemLinePrefix)
		out.Write(b)
		out.WriteByte('\n')
		out.Flush()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	viewers := make([]*netemViewer, len(cfg.Addrs))
	var wg sync.WaitGroup
	for i, addr := range cfg.Addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := startNetemViewer(ctx, i, addr, cfg)
			if err != nil {
				send(netemMsg{Kind: "error", V: i, Err: err.Error()})
				return
			}
			viewers[i] = v
			send(netemMsg{Kind: "loc", V: i, Loc: v.location})
		}()
	}
	// The parent closes stdin to stop the viewers (or dies).
	io.Copy(io.Discard, os.Stdin)
	wg.Wait()
	cancel()
	for _, v := range viewers {
		if v != nil {
			v.close()
		}
	}
	for i, v := range viewers {
		if v != nil {
			send(netemMsg{Kind: "report", V: i, Report: v.report(cfg.Decode)})
		}
	}
}

// netemViewer is one pion WHEP viewer bound to one address.
type netemViewer struct {
	idx      int
	pc       *webrtc.PeerConnection
	conn     *delayedConn
	location string
	keep     bool // keep every payload, to decode

	mu      sync.Mutex
	pkts    map[uint64]*rxPacket // by extended sequence number
	started bool
	ext     uint64 // the newest extended sequence number
	contig  uint64 // every sequence number up to it arrived or was given up on
	holeSeq uint64 // the hole being waited for, since holeAt
	holeAt  time.Time
	keyAt   uint64 // the newest packet that begins a keyframe
	lastPLI time.Time
	ssrc    uint32
	padding int
	dups    int
	audio   int
	plis    int
	lags    []int64 // each packet's read less its kernel arrival, ns

	wg sync.WaitGroup
}

// frameBuild is a frame being rebuilt.
type frameBuild struct {
	frameRec
	holed  bool
	marker bool
	media  []uint64 // its media packets' sequence numbers
}

type rxPacket struct {
	at      int64
	lag     int64 // at less the kernel's arrival, ns
	ts      uint32
	marker  bool
	pad     bool
	key     bool
	late    bool   // arrived after a newer one: a repair
	payload []byte // kept to decode, or when it carries an SPS
}

func startNetemViewer(ctx context.Context, idx int, addr string, cfg netemChildConfig) (*netemViewer, error) {
	ip := net.ParseIP(addr)
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ip})
	if err != nil {
		return nil, err
	}
	conn := newDelayedConn(uc, cfg.Delay)
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		conn.Close()
		return nil, err
	}
	// What a browser's receiver does: NACKs, receiver reports and
	// transport-wide feedback (pion's defaults less the stats and simulcast
	// interceptors, which cost CPU and serve nothing here). libwebrtc asks
	// for a missing packet at once and again after each round trip, at most
	// 10 times, and keeps up to 1000 missing packets; pion's generator asks
	// on a timer, here every 50 ms (about this link's round trip with its
	// queue), as often, over as long a window.
	ir := &interceptor.Registry{}
	gen := []nack.GeneratorOption{nack.GeneratorMaxNacksPerPacket(netemMaxNACKs), nack.GeneratorSize(4096),
		nack.GeneratorInterval(netemNACKEvery)}
	if err := webrtc.ConfigureNackWithOptions(m, ir, gen); err != nil {
		conn.Close()
		return nil, err
	}
	if err := webrtc.ConfigureRTCPReports(ir); err != nil {
		conn.Close()
		return nil, err
	}
	if err := webrtc.ConfigureTWCCSender(m, ir); err != nil {
		conn.Close()
		return nil, err
	}
	var se webrtc.SettingEngine
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEUDPMux(webrtc.NewICEUDPMux(nil, conn))
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetIPFilter(func(i net.IP) bool { return i.Equal(ip) })
	// libwebrtc's SRTP replay window is 1024 packets, pion's 64: with
	// pion's, a retransmission that comes back more than 64 packets late
	// (a probe's padding goes by at up to 2 000 packets a second) is
	// dropped as a replay.
	se.SetSRTPReplayProtectionWindow(netemReplayWindow)
	api := webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		conn.Close()
		return nil, err
	}
	v := &netemViewer{idx: idx, pc: pc, conn: conn, keep: cfg.Decode, pkts: map[uint64]*rxPacket{}}
	fail := func(err error) (*netemViewer, error) {
		pc.Close()
		conn.Close()
		return nil, err
	}
	for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
		if _, err := pc.AddTransceiverFromKind(k, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			return fail(err)
		}
	}
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		v.wg.Add(1)
		go v.read(tr)
	})
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		return fail(err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		return fail(err)
	}
	select {
	case <-gathered:
	case <-time.After(10 * time.Second):
		return fail(fmt.Errorf("viewer %d: ICE gathering did not complete", idx))
	}
	answer, loc, err := postOffer(ctx, cfg.URL, pc.LocalDescription().SDP)
	if err != nil {
		return fail(fmt.Errorf("viewer %d: %w", idx, err))
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		return fail(err)
	}
	v.location = loc
	v.wg.Add(1)
	go v.watch(ctx)
	return v, nil
}

// postOffer POSTs a WHEP offer without keeping the connection open, so the
// child leaves no idle connection behind.
func postOffer(ctx context.Context, url, offer string) (answer, location string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(offer))
	if err != nil {
		return "", "", err
	}
	req.Header.Set("Content-Type", "application/sdp")
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 15 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusCreated {
		return "", "", fmt.Errorf("WHEP POST: %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return string(body), resp.Header.Get("Location"), nil
}

func (v *netemViewer) read(tr *webrtc.TrackRemote) {
	defer v.wg.Done()
	video := tr.Kind() == webrtc.RTPCodecTypeVideo
	buf := make([]byte, 1600)
	var p rtp.Packet
	for {
		n, _, err := tr.Read(buf)
		if err != nil {
			return
		}
		now := time.Now().UnixNano()
		var lag int64
		if n >= 12 {
			// Every packet's stamp is taken, so the map stays small.
			if k := v.conn.kernelAt(binary.BigEndian.Uint32(buf[8:12]), binary.BigEndian.Uint16(buf[2:4])); k > 0 {
				lag = now - k
			}
		}
		if !video {
			v.mu.Lock()
			v.audio++
			v.lags = append(v.lags, lag)
			v.mu.Unlock()
			continue
		}
		if p.Unmarshal(buf[:n]) != nil {
			continue
		}
		r := &rxPacket{at: now, lag: lag, ts: p.Timestamp, marker: p.Marker, pad: len(p.Payload) == 0}
		if !r.pad {
			r.key = netemKeyframe(p.Payload)
			if v.keep || h264.FindSPS(p.Payload) != nil {
				r.payload = slices.Clone(p.Payload)
			}
		}
		v.mu.Lock()
		v.lags = append(v.lags, lag)
		v.ssrc = uint32(tr.SSRC())
		if !v.started {
			v.started = true
			v.ext = uint64(p.SequenceNumber) + 1<<32
			v.contig = v.ext - 1
		}
		ext := uint64(int64(v.ext) + int64(int16(p.SequenceNumber-uint16(v.ext))))
		r.late = ext < v.ext
		v.ext = max(v.ext, ext)
		if startsKeyframe(r) {
			v.keyAt = max(v.keyAt, ext)
		}
		if _, ok := v.pkts[ext]; ok {
			v.dups++
		} else {
			v.pkts[ext] = r
			if r.pad {
				v.padding++
			}
		}
		v.mu.Unlock()
	}
}

// watch gives up on a missing packet after netemGiveUp and asks for a
// keyframe, at most twice a second, unless one arrived after the packet.
func (v *netemViewer) watch(ctx context.Context) {
	defer v.wg.Done()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			v.mu.Lock()
			for v.started && v.pkts[v.contig+1] != nil {
				v.contig++
			}
			pli, ssrc := false, v.ssrc
			switch {
			case !v.started || v.ext <= v.contig+1:
				v.holeAt = time.Time{}
			case v.holeAt.IsZero() || v.holeSeq != v.contig+1:
				v.holeSeq, v.holeAt = v.contig+1, now
			case now.Sub(v.holeAt) >= netemGiveUp:
				for v.contig++; v.contig < v.ext && v.pkts[v.contig+1] == nil; v.contig++ {
				}
				v.holeAt = time.Time{}
				// A keyframe received since the hole makes up for it, as
				// it does for a browser: no request.
				if v.keyAt <= v.holeSeq && now.Sub(v.lastPLI) >= 500*time.Millisecond {
					pli, v.lastPLI = true, now
					v.plis++
				}
			}
			v.mu.Unlock()
			if pli {
				v.pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: ssrc}})
			}
		}
	}
}

func (v *netemViewer) close() {
	v.pc.Close()
	v.wg.Wait()
	v.conn.Close()
}

// report rebuilds the frames from the packets received, in sequence order,
// and decides which a player would have shown, and when.
func (v *netemViewer) report(decode bool) *viewerReport {
	v.mu.Lock()
	defer v.mu.Unlock()
	rep := &viewerReport{Packets: len(v.pkts), Padding: v.padding, Duplicates: v.dups, Audio: v.audio, PLIs: v.plis}
	if len(v.lags) > 0 {
		l := slices.Sorted(slices.Values(v.lags))
		rep.ReadLag = [3]time.Duration{time.Duration(l[len(l)/2]), time.Duration(l[len(l)*99/100]), time.Duration(l[len(l)-1])}
	}
	if len(v.pkts) == 0 {
		return rep
	}
	seqs := make([]uint64, 0, len(v.pkts))
	for s := range v.pkts {
		seqs = append(seqs, s)
	}
	slices.Sort(seqs)
	var cur *frameBuild
	var frames []*frameBuild
	pendingHole := false // a hole after a frame's marker belongs to the next frame
	// padBefore: padding came since the last frame ended. libwebrtc's
	// packet buffer then starts a frame only at a packet that begins one
	// (an FU-A with its start bit, or a whole NAL unit): padding that fills
	// a frame's lost first packet leaves the rest of it no frame.
	padBefore := false
	lastAt := int64(0)
	finish := func() {
		if cur != nil {
			cur.Complete = cur.marker && !cur.holed
			frames = append(frames, cur)
			cur = nil
		}
	}
	for s := seqs[0]; s <= seqs[len(seqs)-1]; s++ {
		r := v.pkts[s]
		if r == nil {
			rep.Holes = append(rep.Holes, holeRec{Seq: s, At: lastAt})
			if cur != nil {
				cur.holed = true
			} else {
				pendingHole = true
			}
			continue
		}
		lastAt = r.at
		if r.pad {
			if cur != nil {
				// Padding between a frame's first packet and its marker
				// leaves the frame short of media: libwebrtc's packet
				// buffer assembles no frame across it. (The node fills
				// the numbers of a rung the viewer left so.)
				cur.holed = true
				cur.Done = max(cur.Done, r.at)
			} else {
				padBefore = true
			}
			continue
		}
		if cur != nil && r.ts != cur.TS {
			finish() // its marker was lost
			pendingHole = true
		}
		if cur == nil {
			// A keyframe that begins with its SPS starts afresh: a
			// browser (libwebrtc's packet buffer) hands it to the decoder
			// whatever was lost before it. Any other frame needs every
			// sequence number since the frame before it.
			holed := pendingHole && !startsKeyframe(r) || padBefore && !beginsFrame(r.payload)
			cur = &frameBuild{frameRec: frameRec{TS: r.ts, S0: s, First: r.at}, holed: holed}
			pendingHole, padBefore = false, false
		}
		cur.S1 = s
		cur.First = min(cur.First, r.at)
		cur.Done = max(cur.Done, r.at)
		cur.Key = cur.Key || r.key
		cur.media = append(cur.media, s)
		if r.marker {
			cur.marker = true
			finish()
		}
	}
	finish()

	// nextKey[i] is the earliest time a complete keyframe from frame i on
	// was complete: a frame before it that could only show later is
	// superseded.
	nextKey := make([]int64, len(frames)+1)
	nextKey[len(frames)] = math.MaxInt64
	for i := len(frames) - 1; i >= 0; i-- {
		nextKey[i] = nextKey[i+1]
		if f := frames[i]; f.Key && f.Complete {
			nextKey[i] = min(nextKey[i], f.Done)
		}
	}
	w, h := 0, 0
	prevDecodable := false
	var chain int64
	for i, f := range frames {
		if f.Key {
			for _, s := range f.media {
				if sps := h264.FindSPS(v.pkts[s].payload); sps != nil {
					if p, err := h264.ParseSPS(sps); err == nil {
						w, h = p.Width, p.Height
					}
				}
			}
		}
		f.W, f.H = w, h
		f.Decodable = f.Complete && (f.Key || prevDecodable)
		prevDecodable = f.Decodable
		if !f.Decodable {
			continue
		}
		// Frames show in order: a delta frame never before the one
		// before it. But a keyframe complete before an older frame
		// could show supersedes it, and every frame between them: a
		// browser decodes the keyframe at once and drops what is older
		// (libwebrtc's FrameBuffer drops everything before the unit it
		// decodes, and refuses frames older than the last decoded). A
		// keyframe so waits for no older frame that is still being
		// repaired: every frame shown before it showed by its
		// completion, or it would have been superseded.
		at := max(f.Done, chain)
		if f.Key {
			at = f.Done
		}
		chain = at
		if at > nextKey[i+1] {
			continue
		}
		f.Render = at
	}
	if decode {
		v.decode(frames, rep)
	}
	if netemDump() {
		for _, s := range seqs {
			r := v.pkts[s]
			k := byte('m')
			switch {
			case r.pad:
				k = 'p'
			case r.key:
				k = 'k'
			}
			if r.late {
				k -= 'a' - 'A'
			}
			rep.Trace = append(rep.Trace, pktTrace{S: s, At: r.at, K: k, L: r.lag})
		}
		v.conn.stampMu.Lock()
		rep.Wire = v.conn.wire
		v.conn.stampMu.Unlock()
		for i := range rep.Wire {
			if w := &rep.Wire[i]; w.K == 'm' {
				w.K = 'a'
				if w.ssrc == v.ssrc {
					w.K = 'v'
				}
			}
		}
	}
	rep.Frames = make([]frameRec, len(frames))
	for i, f := range frames {
		rep.Frames[i] = f.frameRec
	}
	return rep
}

// decode feeds the decodable frames to libavcodec and notes the size of
// each picture, and any error: a switch that did not land on a keyframe
// shows as a unit that does not decode, or a picture of the wrong size.
func (v *netemViewer) decode(frames []*frameBuild, rep *viewerReport) {
	dec, err := av.NewDecoder("H264")
	if err != nil {
		rep.DecodeErrors++
		rep.DecodeError = err.Error()
		return
	}
	defer dec.Close()
	var asm h264.Assembler
	seq := uint16(0)
	for i, f := range frames {
		if !f.Decodable {
			continue
		}
		var au *h264.AU
		for j, s := range f.media {
			r := v.pkts[s]
			seq++
			au = asm.Push(seq, r.ts, j == len(f.media)-1, r.payload)
		}
		if au == nil || au.Damaged {
			rep.DecodeErrors++
			if rep.DecodeError == "" {
				rep.DecodeError = fmt.Sprintf("frame %d (ts %d): not rebuilt", i, f.TS)
			}
			continue
		}
		err := dec.Decode(au.Data, int64(i), func(fr *av.Frame) error {
			if k := int(fr.PTS()); k >= 0 && k < len(frames) {
				frames[k].DW, frames[k].DH = fr.Width(), fr.Height()
			}
			return nil
		})
		if err != nil {
			rep.DecodeErrors++
			if rep.DecodeError == "" {
				rep.DecodeError = fmt.Sprintf("frame %d (ts %d): %v", i, f.TS, err)
			}
		}
	}
}

// beginsFrame reports whether an H.264 RTP payload can begin a frame, as
// libwebrtc's depacketizer marks a packet first in its frame: an FU-A or
// FU-B with its start bit, or anything else (a single NAL unit, STAP-A).
func beginsFrame(payload []byte) bool {
	if len(payload) == 0 {
		return false
	}
	if t := payload[0] & 0x1f; t == h264.NALUFUA || t == 29 { // FU-A, FU-B
		return len(payload) > 1 && payload[1]&0x80 != 0
	}
	return true
}

// startsKeyframe reports whether r begins a keyframe: it carries the SPS,
// which comes first in an access unit.
func startsKeyframe(r *rxPacket) bool { return r.key && h264.FindSPS(r.payload) != nil }

// netemKeyframe reports whether an RTP payload carries an SPS or starts an
// IDR slice. It is written apart from media/h264, as mediatest's is, so the
// server's parser does not judge itself.
func netemKeyframe(payload []byte) bool {
	if len(payload) < 2 {
		return false
	}
	switch payload[0] & 0x1f {
	case 5, 7:
		return true
	case 24: // STAP-A
		for b := payload[1:]; len(b) > 2; {
			size := int(b[0])<<8 | int(b[1])
			if size == 0 || 2+size > len(b) {
				return false
			}
			if t := b[2] & 0x1f; t == 5 || t == 7 {
				return true
			}
			b = b[2+size:]
		}
	case 28: // FU-A
		return payload[1]&0x80 != 0 && payload[1]&0x1f == 5
	}
	return false
}

// delayedConn delays every datagram written by a fixed time, keeping their
// order: the link's latency, on the viewer's side. It also notes when the
// kernel received each RTP packet (SO_TIMESTAMPNS), by SSRC and sequence
// number, which SRTP leaves in the clear: pion stamps a packet's arrival
// for its transport-wide feedback only when the application reads it,
// several goroutines later, and the difference is this process's, not
// the link's.
type delayedConn struct {
	*net.UDPConn
	delay time.Duration
	q     chan delayed
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup

	stampMu sync.Mutex
	stamps  map[uint64]int64 // ssrc<<16 | seq → kernel arrival, Unix ns
	// With the dump (netemDumpEnv), every datagram received, and the RTP
	// packets seen, by ssrc<<16 | seq.
	wire []wireRec
	seen map[uint64]bool
	oob  []byte // ReadFrom's, used by pion's one reader
}

type delayed struct {
	at   time.Time
	b    []byte
	addr net.Addr
}

func newDelayedConn(c *net.UDPConn, d time.Duration) *delayedConn {
	dc := &delayedConn{UDPConn: c, delay: d, q: make(chan delayed, 4096), done: make(chan struct{}),
		stamps: map[uint64]int64{}, oob: make([]byte, 128)}
	if netemDump() {
		dc.wire, dc.seen = make([]wireRec, 0, 1<<14), map[uint64]bool{}
	}
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
		})
	}
	if d > 0 {
		dc.wg.Add(1)
		go dc.run()
	}
	return dc
}

// ReadFrom reads a datagram and notes the kernel's arrival of an RTP one.
func (c *delayedConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, oobn, _, addr, err := c.ReadMsgUDP(b, c.oob)
	if err != nil {
		return n, addr, err
	}
	var at int64
	if msgs, perr := unix.ParseSocketControlMessage(c.oob[:oobn]); perr == nil {
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
				at = (*unix.Timespec)(unsafe.Pointer(&m.Data[0])).Nano()
			}
		}
	}
	// RTP: version 2, and not RTCP (payload types 64–95 with the marker
	// bit are RTCP's 192–223). The rest is RTCP, STUN or DTLS.
	rtp := n >= 12 && b[0]>>6 == 2 && !(b[1]&0x7f >= 64 && b[1]&0x7f < 96)
	var key uint64
	if rtp {
		key = uint64(binary.BigEndian.Uint32(b[8:12]))<<16 | uint64(binary.BigEndian.Uint16(b[2:4]))
	}
	c.stampMu.Lock()
	if rtp && at > 0 {
		c.stamps[key] = at
	}
	if c.wire != nil {
		w := wireRec{At: at, Size: n, K: 'o'}
		if rtp {
			w.K, w.ssrc = 'm', uint32(key>>16)
			if c.seen[key] {
				w.K = 'd'
			}
			c.seen[key] = true
		} else if n >= 8 && b[0]>>6 == 2 {
			w.K = 'r'
		}
		c.wire = append(c.wire, w)
	}
	c.stampMu.Unlock()
	return n, addr, err
}

// wireRec is one datagram the viewer's socket received (with the dump).
type wireRec struct {
	At   int64 // the kernel's arrival, Unix ns
	Size int   // its UDP payload
	// K is 'v' video, 'a' audio, 'd' an RTP packet received before (the
	// receiver's replay check drops it), 'r' RTCP, 'o' STUN or DTLS; 'm'
	// is RTP as the socket logs it, until report tells video by its SSRC.
	K    byte
	ssrc uint32 // an RTP packet's, until report sorts video from audio
}

// kernelAt returns, and forgets, when the kernel received the packet.
func (c *delayedConn) kernelAt(ssrc uint32, seq uint16) int64 {
	key := uint64(ssrc)<<16 | uint64(seq)
	c.stampMu.Lock()
	defer c.stampMu.Unlock()
	at := c.stamps[key]
	delete(c.stamps, key)
	return at
}

func (c *delayedConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c.delay <= 0 {
		return c.UDPConn.WriteTo(b, addr)
	}
	select {
	case c.q <- delayed{at: time.Now().Add(c.delay), b: slices.Clone(b), addr: addr}:
	case <-c.done:
		return 0, net.ErrClosed
	default: // the queue is full: the datagram is lost, as on a link
	}
	return len(b), nil
}

func (c *delayedConn) run() {
	defer c.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		var d delayed
		select {
		case d = <-c.q:
		case <-c.done:
			// Closing: what is queued still goes, on time. It holds the
			// viewer's last words, the DTLS close_notify that ends its
			// session on the node; dropped, the node kept sending into
			// the link until its consent timer ran out, 10 s into the
			// next run.
			select {
			case d = <-c.q:
			default:
				return
			}
		}
		if wait := time.Until(d.at); wait > 0 {
			t.Reset(wait)
			<-t.C
		}
		c.UDPConn.WriteTo(d.b, d.addr)
	}
}

// Close sends what is queued, at most the delay later, and closes.
func (c *delayedConn) Close() error {
	var err error
	c.once.Do(func() {
		close(c.done)
		c.wg.Wait()
		err = c.UDPConn.Close()
	})
	return err
}
