// Package lite is a WebRTC viewer's transport without a PeerConnection:
// ICE-lite (RFC 8445 section 2.5), DTLS-SRTP (RFC 5764) and RTCP feedback,
// on the engine's shared socket.
//
// A pion PeerConnection per viewer costs about 18 goroutines and 250 KiB
// of heap, and every packet goes through its interceptor chain, SRTP
// session, mux and ICE write path, each with its own locks. A viewer only
// sends, on a server that is reachable by address, so all it needs is to
// answer the viewer's connectivity checks, run one DTLS handshake, encrypt
// each packet into the socket's queue and decrypt the feedback that comes
// back. The handshake is pion's DTLS, the encryption pion's SRTP, the
// checks pion's STUN; this package only joins them.
//
// What a transport runs: the socket's reading goroutine calls
// HandlePacket for the viewer's packets, and the caller's writer calls
// WriteRTP and Flush. During the handshake there is one goroutine (run)
// and pion's DTLS runs its own (two, and one per pending read); they stay
// until the viewer's first SRTCP shows it completed the handshake (a lost
// final flight must be resent until then), and then pion's connection is
// let go (dtlsclose.go). From there the transport runs no goroutine.
package lite

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/stun/v4"

	"github.com/cascade-cdn/cascade/peer"
	"github.com/cascade-cdn/cascade/wish"
)

// Track is one stream the transport sends.
type Track struct {
	Kind      string // "video" or "audio"
	ClockRate uint32
	// SSRC is chosen by New; MID and PT come from the answer.
	SSRC uint32
	MID  string
	PT   uint8
	// TWCC: the viewer's section for the track offered transport-wide
	// sequence numbers, so its packets count in the viewer's feedback.
	TWCC bool
	// packets and octets are what was sent, for sender reports (they
	// wrap as the report's fields do).
	packets, octets atomic.Uint32
}

// Sent returns the RTP packets and payload bytes sent on the track.
func (tr *Track) Sent() (packets, octets uint32) { return tr.packets.Load(), tr.octets.Load() }

// Params are what New needs.
type Params struct {
	// Offer is the viewer's SDP offer.
	Offer string
	// Video and Audio say which kinds the viewer is sent, if its offer
	// has a section for them; a section of a kind not sent is answered
	// inactive.
	Video, Audio bool
	Log          *slog.Logger
}

// Errors of the send path.
var (
	// ErrNotReady is a write before DTLS has completed.
	ErrNotReady = errors.New("lite: transport not connected yet")
	// ErrTooLong is a packet larger than the transport sends.
	ErrTooLong = errors.New("lite: packet too long")
	// errNotSelected is a DTLS write before ICE has a path.
	errNotSelected = errors.New("lite: no ICE path selected yet")
)

// bufSize holds any packet sent or received: a datagram of the usual MTU
// plus SRTP's trailer.
const bufSize = 1600

// maxPaths bounds the paths one viewer's checks may bind: its host,
// reflexive and relayed candidates, and one or two after a network change.
const maxPaths = 8

// A viewer's packets are rate-limited before any cryptography: browsers
// send transport-wide feedback every 50-250 ms, reports once a second,
// NACKs and keyframe requests now and then, and consent checks every few
// seconds; a viewer sending more than rateLimit a second is refused the
// excess (counted), so that one hostile viewer costs the shared reading
// goroutine a bounded amount.
const (
	rateLimit = 400
	rateBurst = 200
)

// creds is one generation of ICE credentials: ours, and the viewer's
// fragment they pair with.
type creds struct {
	ufrag, pwd string
	integrity  stun.MessageIntegrity
	remote     string
}

// Transport is one viewer's transport.
type Transport struct {
	eng    *peer.Engine
	log    *slog.Logger
	offer  *offer
	video  *Track
	audio  *Track
	bwe    *peer.BWE // nil without transport-wide feedback
	onRTCP func(now time.Time, p []byte)

	mu      sync.Mutex // guards what follows, up to selected
	cur     creds
	prev    *creds // until the viewer nominates a path with cur
	paths   []peer.Path
	dtls    *dtls.Conn
	closed  bool
	started bool

	selected  atomic.Pointer[peer.Path]
	nominated chan struct{} // closed at the first selection
	nomOnce   sync.Once
	heard     atomic.Int64 // unix ns of the last authenticated packet

	pipe    *pipe
	ready   chan struct{} // closed once SRTP keys are in place
	ended   chan struct{} // closed when the transport is over
	endOnce sync.Once
	endErr  atomic.Pointer[error]
	close1  sync.Once
	wg      sync.WaitGroup

	outMu   sync.Mutex // the send path
	out     *srtp.Context
	twccSeq uint16
	twccVal [2]byte
	// buf is where a packet is marshalled and then encrypted in place
	// (pion's SRTP supports it).
	buf     [bufSize]byte
	encHdr  rtp.Header
	rtcpHdr rtcp.Header

	inMu     sync.Mutex // the receive path: HandlePacket
	in       *srtp.Context
	klog     keyLog
	keys     *recordKeys // the DTLS record keys, once derived
	tornDown bool        // the DTLS connection is let go
	inHdr    rtcp.Header
	req      stun.Message
	resp     stun.Message
	tokens   float64
	tokensAt time.Time

	bad, limited atomic.Uint64
	// queued counts the packets WriteRTP queued, so that the receive path
	// can tell whether its handler queued any.
	queued atomic.Uint64
}

// New parses a viewer's offer, claims fresh ICE credentials on the engine
// and returns the transport with its answer. The transport does nothing
// until Start. Errors are wish errors with their HTTP status.
func New(eng *peer.Engine, p Params) (*Transport, string, error) {
	o, err := parseOffer(p.Offer)
	if err != nil {
		return nil, "", err
	}
	t := &Transport{eng: eng, log: p.Log, offer: o, nominated: make(chan struct{}),
		ready: make(chan struct{}), ended: make(chan struct{})}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	t.pipe = newPipe(t)
	for _, m := range o.medias {
		if m.pt < 0 || !m.recv {
			continue
		}
		switch {
		case m.kind == "video" && p.Video && t.video == nil:
			t.video = &Track{Kind: "video", ClockRate: 90000, SSRC: randomSSRC()}
		case m.kind == "audio" && p.Audio && t.audio == nil:
			t.audio = &Track{Kind: "audio", ClockRate: 48000, SSRC: randomSSRC()}
		}
	}
	if t.audio != nil && t.video != nil && t.audio.SSRC == t.video.SSRC {
		t.audio.SSRC++
	}
	if o.twccID != 0 {
		t.bwe = peer.NewBWE()
	}
	// Claimed under t.mu: checks may come as soon as the fragment is
	// routed, and they read t.cur.
	t.mu.Lock()
	c, err := t.claim(o.ufrag)
	t.cur = c
	t.mu.Unlock()
	if err != nil {
		return nil, "", err
	}
	_, fp := eng.Certificate()
	ans := answer(o, c.ufrag, c.pwd, fp, eng.Candidates(), t.video, t.audio)
	// A kind answered inactive (its section was not usable) is not sent.
	if t.video != nil && t.video.MID == "" {
		t.video = nil
	}
	if t.audio != nil && t.audio.MID == "" {
		t.audio = nil
	}
	return t, ans, nil
}

// claim makes local credentials paired with remote ufrag and routes their
// checks to t.
func (t *Transport) claim(remote string) (creds, error) {
	for range 4 {
		c := creds{ufrag: randomString(16), pwd: randomString(32), remote: remote}
		c.integrity = stun.NewShortTermIntegrity(c.pwd)
		if t.eng.Claim(c.ufrag, t) {
			return c, nil
		}
	}
	return creds{}, errors.New("lite: no free ICE username fragment") // 2^95 of them: not reached
}

// Start begins the DTLS handshake; onRTCP then receives every RTCP
// compound packet from the viewer, decrypted, after the BWE has read its
// transport-wide feedback. onRTCP is called on a socket's reading
// goroutine: it must not block, and p is valid only during the call.
func (t *Transport) Start(onRTCP func(now time.Time, p []byte)) {
	t.inMu.Lock()
	t.onRTCP = onRTCP
	t.inMu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.started {
		return
	}
	t.started = true
	t.wg.Add(1)
	go t.run()
}

// run is the handshake's goroutine: it ends once SRTP is ready or the
// handshake failed.
func (t *Transport) run() {
	defer t.wg.Done()
	// Close cancels a handshake under way by closing the DTLS connection.
	ctx, cancel := context.WithTimeout(context.Background(), t.eng.Config().HandshakeTimeout)
	defer cancel()
	if t.offer.active {
		// Cascade dials DTLS: it needs a path to dial on.
		select {
		case <-t.nominated:
		case <-t.ended:
			return
		case <-ctx.Done():
			t.end(fmt.Errorf("lite: no ICE path nominated: %w", ctx.Err()))
			return
		}
	}
	if err := t.handshake(ctx); err != nil {
		t.end(err)
		return
	}
	close(t.ready)
}

// Ready is closed once the transport can send media.
func (t *Transport) Ready() <-chan struct{} { return t.ready }

// Done is closed when the transport is over: Close was called, the
// handshake failed or timed out, or the viewer closed DTLS. Its owner
// should then Close it.
func (t *Transport) Done() <-chan struct{} { return t.ended }

// Err is why the transport ended, or nil.
func (t *Transport) Err() error {
	if e := t.endErr.Load(); e != nil {
		return *e
	}
	return nil
}

// end marks the transport over.
func (t *Transport) end(err error) {
	t.endOnce.Do(func() {
		if err != nil {
			t.endErr.Store(&err)
		}
		close(t.ended)
	})
}

// Heard is when the viewer last sent an authenticated packet: a
// connectivity or consent check, or RTCP.
func (t *Transport) Heard() time.Time { return time.Unix(0, t.heard.Load()) }

// BWE is the viewer's bandwidth estimation, or nil when its offer did not
// negotiate transport-wide congestion control.
func (t *Transport) BWE() *peer.BWE { return t.bwe }

// Video and Audio are the tracks sent, or nil.
func (t *Transport) Video() *Track { return t.video }
func (t *Transport) Audio() *Track { return t.audio }

// Stats are the viewer's refused packets: Bad failed a check
// (authentication, format), Limited came over the rate limit.
type Stats struct{ Bad, Limited uint64 }

// Stats returns the counts so far.
func (t *Transport) Stats() Stats { return Stats{Bad: t.bad.Load(), Limited: t.limited.Load()} }

// selectedPath is the path media goes on, or the zero Path.
func (t *Transport) selectedPath() peer.Path {
	if p := t.selected.Load(); p != nil {
		return *p
	}
	return peer.Path{}
}

// SelectedPath is the path the viewer nominated, or the zero Path.
func (t *Transport) SelectedPath() peer.Path { return t.selectedPath() }

// WriteRTP queues one packet of tr; Flush sends what is queued. It sets
// h's SSRC, payload type and transport-wide sequence number (so h's
// extension list is reused from call to call, and is best kept by the
// caller); payload includes any padding h declares. It never blocks on the
// network.
func (t *Transport) WriteRTP(tr *Track, h *rtp.Header, payload []byte) error {
	t.outMu.Lock()
	defer t.outMu.Unlock()
	if t.out == nil {
		return ErrNotReady
	}
	path := t.selectedPath()
	h.SSRC, h.PayloadType = tr.SSRC, tr.PT
	// Only a track whose section negotiated transport-wide numbers
	// carries them: the viewer would not acknowledge the others, and the
	// BWE would read them as lost.
	var seq uint16
	counted := tr.TWCC && t.offer.twccID != 0
	if counted {
		seq = t.twccSeq
		t.twccSeq++
		binary.BigEndian.PutUint16(t.twccVal[:], seq)
		if err := h.SetExtension(t.offer.twccID, t.twccVal[:]); err != nil {
			return err
		}
	}
	n, err := h.MarshalTo(t.buf[:])
	if err != nil {
		return err
	}
	if n+len(payload)+srtpTrailer > bufSize {
		return ErrTooLong
	}
	n += copy(t.buf[n:], payload)
	if t.bwe != nil && counted {
		t.bwe.Record(seq, n)
	}
	pkt, err := t.out.EncryptRTP(t.buf[:0], t.buf[:n], &t.encHdr)
	if err != nil {
		return err
	}
	tr.packets.Add(1)
	tr.octets.Add(uint32(len(payload)))
	t.queued.Add(1)
	return path.Queue(pkt)
}

// Flush sends the packets WriteRTP queued (with whatever else waits on the
// socket), on the caller's goroutine. A writer calls it once per burst: a
// frame, or before it sleeps to pace.
func (t *Transport) Flush() { t.selectedPath().Flush() }

// srtpTrailer is the most SRTP adds to a packet: a 16-byte AEAD tag (an
// HMAC-SHA1-80 tag is 10), and SRTCP's 4-byte index.
const srtpTrailer = 20

// WriteRTCP sends one RTCP compound packet, marshalled. It never blocks on
// the network.
func (t *Transport) WriteRTCP(p []byte) error {
	t.outMu.Lock()
	defer t.outMu.Unlock()
	if t.out == nil {
		return ErrNotReady
	}
	if len(p)+srtpTrailer > bufSize {
		return ErrTooLong
	}
	pkt, err := t.out.EncryptRTCP(t.buf[:0], p, &t.rtcpHdr)
	if err != nil {
		return err
	}
	return t.selectedPath().Write(pkt)
}

// HandlePacket implements peer.Handler: it takes the viewer's packets,
// told apart by their first byte (RFC 7983).
func (t *Transport) HandlePacket(p []byte, from peer.Path) {
	if len(p) == 0 {
		return
	}
	now := time.Now()
	switch b := p[0]; {
	case b < 4:
		t.handleSTUN(now, p, from)
	case b >= 20 && b <= 63:
		t.handleDTLS(now, p, from)
	case b >= 128 && b <= 191 && len(p) >= 2 && p[1] >= 192 && p[1] <= 223:
		t.handleSRTCP(now, p)
	default:
		// A viewer sends no media, and nothing else belongs here.
		t.bad.Add(1)
	}
}

// allow takes a token from the viewer's rate limit. t.inMu is held.
func (t *Transport) allow(now time.Time) bool {
	if t.tokensAt.IsZero() {
		t.tokens = rateBurst
	} else {
		t.tokens = min(t.tokens+now.Sub(t.tokensAt).Seconds()*rateLimit, rateBurst)
	}
	t.tokensAt = now
	if t.tokens < 1 {
		t.limited.Add(1)
		return false
	}
	t.tokens--
	return true
}

// handleSTUN answers a connectivity or consent check (RFC 8445 section
// 7.3, RFC 7675): a binding request whose USERNAME and MESSAGE-INTEGRITY
// match one of our credentials. The first valid check from a path binds it
// to this transport; one with USE-CANDIDATE selects it.
func (t *Transport) handleSTUN(now time.Time, p []byte, from peer.Path) {
	t.inMu.Lock()
	defer t.inMu.Unlock()
	if !t.allow(now) {
		return
	}
	m := &t.req
	m.Raw = append(m.Raw[:0], p...)
	if m.Decode() != nil {
		t.bad.Add(1)
		return
	}
	if m.Type != stun.BindingRequest {
		return // indications (keepalives) and responses: nothing to answer
	}
	user, err := m.Get(stun.AttrUsername)
	if err != nil {
		t.bad.Add(1)
		return
	}
	c, ok := t.credsFor(user)
	if !ok || c.integrity.Check(m) != nil {
		t.bad.Add(1)
		return
	}
	if m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil {
		t.bad.Add(1)
		return
	}
	if !t.bind(from) {
		return
	}
	t.heard.Store(now.UnixNano())
	if m.Contains(stun.AttrUseCandidate) {
		t.nominate(from, c.ufrag)
	}
	addr := from.Addr()
	r := &t.resp
	if err := r.Build(stun.BindingSuccess, stun.NewTransactionIDSetter(m.TransactionID),
		&stun.XORMappedAddress{IP: addr.Addr().AsSlice(), Port: int(addr.Port())}, c.integrity, stun.Fingerprint); err != nil {
		return
	}
	from.Write(r.Raw)
}

// credsFor finds the credentials a check's USERNAME ("ours:theirs")
// names.
func (t *Transport) credsFor(user []byte) (creds, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range []*creds{&t.cur, t.prev} {
		if c == nil {
			continue
		}
		if n := len(c.ufrag); len(user) == n+1+len(c.remote) && string(user[:n]) == c.ufrag &&
			user[n] == ':' && string(user[n+1:]) == c.remote {
			return *c, true
		}
	}
	return creds{}, false
}

// bind routes later packets from p to t. It reports false when the path
// cannot be taken (the transport is closed, or has too many).
func (t *Transport) bind(p peer.Path) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	for _, q := range t.paths {
		if q == p {
			return true
		}
	}
	if len(t.paths) == maxPaths {
		return false
	}
	t.paths = append(t.paths, p)
	t.eng.Bind(p, t)
	return true
}

// nominate selects p for media. A nomination with the credentials of an
// ICE restart completes it: the old ones are let go.
func (t *Transport) nominate(p peer.Path, ufrag string) {
	if cur := t.selected.Load(); cur == nil || *cur != p {
		t.selected.Store(&p)
	}
	t.nomOnce.Do(func() { close(t.nominated) })
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.prev != nil && ufrag == t.cur.ufrag {
		t.eng.Release(t.prev.ufrag)
		t.prev = nil
	}
}

// handleDTLS passes a DTLS record to the handshake. A viewer that starts
// DTLS on a path it has not nominated (aggressive nomination) has chosen
// it.
func (t *Transport) handleDTLS(now time.Time, p []byte, from peer.Path) {
	if t.selected.Load() == nil {
		t.selected.CompareAndSwap(nil, &from)
		t.nomOnce.Do(func() { close(t.nominated) })
	}
	t.inMu.Lock()
	defer t.inMu.Unlock()
	if !t.allow(now) {
		return // a handshake is a few dozen records; a flood is not one
	}
	if !t.tornDown {
		t.pipe.deliver(p)
		return
	}
	if t.keys.closes(p) {
		t.end(errDTLSClosed)
	}
}

// handleSRTCP decrypts the viewer's RTCP and hands it on.
func (t *Transport) handleSRTCP(now time.Time, p []byte) {
	t.inMu.Lock()
	defer t.inMu.Unlock()
	if t.in == nil {
		return // before the keys: nothing to authenticate it with
	}
	if !t.allow(now) {
		return
	}
	plain, err := t.in.DecryptRTCP(p[:0], p, &t.inHdr) // in place: p is ours until we return
	if err != nil {
		t.bad.Add(1)
		return
	}
	t.heard.Store(now.UnixNano())
	if t.keys != nil && !t.tornDown {
		t.teardown() // the viewer's SRTCP: it completed the handshake
	}
	if t.bwe != nil {
		t.bwe.ReadRTCP(now, plain)
	}
	if t.onRTCP != nil {
		before := t.queued.Load()
		t.onRTCP(now, plain)
		if t.queued.Load() != before {
			// Retransmissions were queued: send them now. Otherwise the
			// socket is left to the writers, whose rounds a flush from
			// here would cut in two.
			t.Flush()
		}
	}
}

// Trickle implements wish.Session's trickle: an ICE-lite agent does not
// check the viewer's candidates, it answers the viewer's checks.
func (t *Transport) Trickle(wish.Fragment) error { return nil }

// Restart implements wish.Session's ICE restart (RFC 9725 section 4.3.2):
// fresh local credentials, paired with the viewer's new ones. The old
// ones keep answering until the viewer nominates a path with the new.
func (t *Transport) Restart(f wish.Fragment) (string, error) {
	if f.Ufrag == "" {
		return "", wish.Errorf(400, "bad_fragment", "ICE restart without credentials")
	}
	c, err := t.claim(f.Ufrag)
	if err != nil {
		return "", err
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		t.eng.Release(c.ufrag)
		return "", wish.Errorf(409, "bad_state", "session closed")
	}
	if t.prev != nil {
		t.eng.Release(t.prev.ufrag)
	}
	old := t.cur
	t.prev, t.cur = &old, c
	t.mu.Unlock()
	return wish.FormatFragment(c.ufrag, c.pwd, t.mid(), t.eng.Candidates()), nil
}

// mid is the bundle's first section.
func (t *Transport) mid() string {
	for _, m := range t.offer.medias {
		if m.pt >= 0 {
			return m.mid
		}
	}
	return "0"
}

// RemoteUfrag implements wish.Session: the viewer's current fragment.
func (t *Transport) RemoteUfrag() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cur.remote
}

// Close ends the transport: DTLS is closed (the viewer is told, if the
// handshake had completed), and its paths and credentials are let go.
// Idempotent.
func (t *Transport) Close() error {
	t.close1.Do(func() {
		t.end(nil)
		t.mu.Lock()
		t.closed = true
		c, paths := t.dtls, t.paths
		t.paths = nil
		ufrags := []string{t.cur.ufrag}
		if t.prev != nil {
			ufrags = append(ufrags, t.prev.ufrag)
		}
		t.mu.Unlock()
		if c != nil {
			c.Close() // sends close_notify on the selected path
		} else {
			t.inMu.Lock()
			keys := t.keys
			t.inMu.Unlock()
			if keys != nil {
				if rec, err := keys.closeNotify(); err == nil {
					t.selectedPath().Write(rec)
				}
			}
		}
		t.pipe.Close()
		for _, u := range ufrags {
			t.eng.Release(u)
		}
		for _, p := range paths {
			t.eng.Unbind(p, t)
			p.Close()
		}
		t.wg.Wait()
	})
	return nil
}

func randomSSRC() uint32 {
	var b [4]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint32(b[:]) | 1 // never 0, which means "not bound" elsewhere
}

// randomString returns n letters, for ICE credentials (RFC 8445 section
// 5.3: at least 24 bits of randomness in the fragment, 128 in the
// password).
func randomString(n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}
