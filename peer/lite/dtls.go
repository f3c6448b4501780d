package lite

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/srtp/v3"
	"github.com/pion/transport/v5/deadline"
)

// hashFor maps a fingerprint's hash name (RFC 8122 section 5) to its
// function, or 0 for one Cascade does not check.
func hashFor(name string) crypto.Hash {
	switch name {
	case "sha-256":
		return crypto.SHA256
	case "sha-384":
		return crypto.SHA384
	case "sha-512":
		return crypto.SHA512
	case "sha-1":
		return crypto.SHA1
	}
	return 0
}

// errDTLSClosed ends a transport whose DTLS connection closed: the viewer
// sent close_notify, or the handshake failed.
var errDTLSClosed = errors.New("lite: DTLS closed")

// errFingerprint is a DTLS peer whose certificate is not the one its offer
// named.
var errFingerprint = errors.New("lite: the peer's certificate does not match its fingerprint")

// checkFingerprint is the DTLS VerifyPeerCertificate of a viewer: its
// certificate is self-signed, and what authenticates it is the hash its
// offer carried over the (HTTPS) signalling (RFC 8842 section 5).
func checkFingerprint(hash crypto.Hash, want []byte) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errFingerprint
		}
		h := hash.New()
		h.Write(raw[0])
		if !bytes.Equal(h.Sum(nil), want) {
			return errFingerprint
		}
		return nil
	}
}

// srtpProfiles are the protection profiles offered, AES-GCM first: with
// AES-NI it encrypts and authenticates in one pass, cheaper per packet than
// AES-CM plus HMAC-SHA1, and every browser has it.
var srtpProfiles = []dtls.SRTPProtectionProfile{dtls.SRTP_AEAD_AES_128_GCM, dtls.SRTP_AES128_CM_HMAC_SHA1_80}

func srtpProfile(p dtls.SRTPProtectionProfile) (srtp.ProtectionProfile, error) {
	switch p {
	case dtls.SRTP_AEAD_AES_128_GCM:
		return srtp.ProtectionProfileAeadAes128Gcm, nil
	case dtls.SRTP_AES128_CM_HMAC_SHA1_80:
		return srtp.ProtectionProfileAes128CmHmacSha1_80, nil
	}
	return 0, fmt.Errorf("lite: unexpected SRTP profile %v", p)
}

// srtcpReplayWindow is the SRTCP replay window of incoming feedback.
const srtcpReplayWindow = 128

// handshake runs the DTLS handshake (RFC 5763) over the transport's pipe
// and makes the SRTP contexts from its keys (RFC 5764 section 4.2).
func (t *Transport) handshake(ctx context.Context) error {
	cert, _ := t.eng.Certificate()
	var serverRandom [handshake.RandomLength]byte
	cfg := &dtls.Config{
		Certificates:           []tls.Certificate{cert},
		CipherSuites:           []dtls.CipherSuiteID{dtlsSuite},
		SRTPProtectionProfiles: srtpProfiles,
		// What the close_notify needs once the connection is let go
		// (dtlsclose.go): the master secret and our hello random.
		KeyLogWriter: &t.klog,
		ServerHelloMessageHook: func(m handshake.MessageServerHello) handshake.Message {
			serverRandom = m.Random.MarshalFixed()
			return &m
		},
		ExtendedMasterSecret: dtls.RequireExtendedMasterSecret,
		ClientAuth:           dtls.RequireAnyClientCert,
		// Peers are authenticated by fingerprint, not by a CA.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: checkFingerprint(hashFor(t.offer.fpHash), t.offer.fp),
		// ICE has proven the address already: no cookie round trip.
		InsecureSkipVerifyHello: true,
		MTU:                     1200,
		LoggerFactory:           t.eng.LoggerFactory(),
	}
	var (
		c   *dtls.Conn
		err error
	)
	if t.offer.active {
		c, err = dtls.Client(t.pipe, t.pipe.remote(), cfg)
	} else {
		c, err = dtls.Server(t.pipe, t.pipe.remote(), cfg)
	}
	if err != nil {
		return fmt.Errorf("lite: dtls: %w", err)
	}
	t.mu.Lock()
	closed := t.closed
	t.dtls = c
	t.mu.Unlock()
	if closed { // Close came first: it did not see c
		c.Close()
		return errors.New("lite: closed")
	}
	if err := c.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("lite: dtls handshake: %w", err)
	}
	sel, ok := c.SelectedSRTPProtectionProfile()
	if !ok {
		return errors.New("lite: dtls: no SRTP profile negotiated")
	}
	profile, err := srtpProfile(sel)
	if err != nil {
		return err
	}
	state, ok := c.ConnectionState()
	if !ok {
		return errors.New("lite: dtls: no connection state")
	}
	keys := srtp.Config{Profile: profile}
	if err := keys.ExtractSessionKeysFromDTLS(&state, t.offer.active); err != nil {
		return fmt.Errorf("lite: srtp keys: %w", err)
	}
	out, err := srtp.CreateContext(keys.Keys.LocalMasterKey, keys.Keys.LocalMasterSalt, profile)
	if err != nil {
		return fmt.Errorf("lite: srtp: %w", err)
	}
	in, err := srtp.CreateContext(keys.Keys.RemoteMasterKey, keys.Keys.RemoteMasterSalt, profile,
		srtp.SRTCPReplayProtection(srtcpReplayWindow))
	if err != nil {
		return fmt.Errorf("lite: srtp: %w", err)
	}
	t.outMu.Lock()
	t.out = out
	t.outMu.Unlock()
	var rk *recordKeys
	if !t.offer.active {
		// The hook ran during the handshake, on pion's goroutine, before
		// HandshakeContext returned.
		if rk, err = deriveKeys(&t.klog, serverRandom[:]); err != nil {
			t.log.Debug("keeping the DTLS connection", "reason", err)
			rk = nil
		}
	}
	t.inMu.Lock()
	t.in = in
	t.keys = rk
	t.inMu.Unlock()
	return nil
}

// teardown lets the DTLS connection go once the viewer has shown it
// completed the handshake (dtlsclose.go): its goroutines end as its pipe
// closes, quietly. t.inMu is held.
func (t *Transport) teardown() {
	t.mu.Lock()
	c := t.dtls
	t.dtls = nil
	t.mu.Unlock()
	if c == nil {
		return
	}
	t.tornDown = true
	t.pipe.quiet.Store(true)
	t.pipe.Close()
}

// pipe is the DTLS connection's packet conn: what the transport received
// as DTLS (RFC 7983: first byte 20 to 63) comes out of ReadFrom, and
// WriteTo sends on the transport's selected path. pion's DTLS closes it
// when the peer closes DTLS (close_notify), which ends the transport.
type pipe struct {
	t      *Transport
	in     chan []byte
	closed chan struct{}
	once   sync.Once
	// readDeadline is how pion's DTLS cancels a pending read (when its
	// handshake gives up, it sets a deadline in the past).
	readDeadline *deadline.Deadline
	// quiet: the pipe closes because the connection is let go, not over.
	quiet atomic.Bool
}

// pipeQueue bounds the DTLS records waiting to be read: a handshake
// flight is a handful.
const pipeQueue = 32

func newPipe(t *Transport) *pipe {
	return &pipe{t: t, in: make(chan []byte, pipeQueue), closed: make(chan struct{}), readDeadline: deadline.New()}
}

// deliver queues a copy of a DTLS datagram; a full queue drops it, and
// DTLS retransmits.
func (p *pipe) deliver(b []byte) {
	select {
	case p.in <- append([]byte(nil), b...):
	default:
	}
}

// remote is a stand-in address for pion's DTLS: paths change under ICE,
// and the transport, not DTLS, chooses where a record goes.
func (p *pipe) remote() net.Addr { return &net.UDPAddr{IP: net.IPv4zero} }

func (p *pipe) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case d := <-p.in:
		return copy(b, d), p.remote(), nil
	case <-p.closed:
		return 0, nil, net.ErrClosed
	case <-p.readDeadline.Done():
		return 0, nil, errTimeout
	}
}

// errTimeout is a read past its deadline.
var errTimeout error = timeoutError{}

type timeoutError struct{}

func (timeoutError) Error() string   { return "lite: dtls read deadline exceeded" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func (p *pipe) WriteTo(b []byte, _ net.Addr) (int, error) {
	select {
	case <-p.closed:
		return 0, net.ErrClosed
	default:
	}
	path := p.t.selectedPath()
	if path.IsZero() {
		return 0, errNotSelected
	}
	return len(b), path.Write(b)
}

// Close is called by pion's DTLS when the connection ends, the peer's
// close_notify included, and by the transport. DTLS being over ends the
// transport: its owner sees Done and closes it.
func (p *pipe) Close() error {
	p.once.Do(func() {
		close(p.closed)
		if !p.quiet.Load() {
			p.t.end(errDTLSClosed)
		}
	})
	return nil
}

func (p *pipe) LocalAddr() net.Addr                { return p.remote() }
func (p *pipe) SetDeadline(t time.Time) error      { return p.SetReadDeadline(t) }
func (p *pipe) SetReadDeadline(t time.Time) error  { p.readDeadline.Set(t); return nil }
func (p *pipe) SetWriteDeadline(t time.Time) error { return nil } // writes never wait
