// Package peer owns the WebRTC port that WHIP and WHEP sessions share: one
// UDP port for every peer (batched writes, one reader that routes each
// datagram), ICE-TCP on the same port number, NAT 1:1 addresses and ICE
// timers. Publishers get pion PeerConnections through its ICE muxes, with
// the codecs and interceptors of that direction and the contract's answer
// rules; viewers get Cascade's own transport (peer/lite), which it routes
// packets to (Claim, Bind), with the DTLS certificate, candidates and
// send-side bandwidth estimation (BWE) it needs.
package peer

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/crypto/selfsign"
	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/logging"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// Config is the WebRTC transport configuration (config key "webrtc").
type Config struct {
	// Listen is the UDP address for every peer; ICE-TCP listens on the same
	// address and port.
	Listen string `yaml:"listen"`
	// PublicHosts are IPs or host names announced in candidates instead of
	// the local addresses (NAT 1:1), for a server behind a firewall.
	PublicHosts []string `yaml:"public_hosts"`
	// TCP enables ICE-TCP.
	TCP bool `yaml:"tcp"`
	// HandshakeTimeout closes a session whose ICE and DTLS have not
	// completed in time.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// ICEFailedTimeout closes a session that has heard nothing from its peer
	// (no consent checks, no media) for this long.
	ICEFailedTimeout time.Duration `yaml:"ice_failed_timeout"`
}

// DefaultConfig returns the contract's defaults.
func DefaultConfig() Config {
	return Config{
		Listen:           ":8189",
		TCP:              true,
		HandshakeTimeout: 15 * time.Second,
		ICEFailedTimeout: 10 * time.Second,
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("webrtc.listen: %w", err)
	}
	if c.HandshakeTimeout <= 0 || c.ICEFailedTimeout <= 0 {
		return errors.New("webrtc: timeouts must be positive")
	}
	return nil
}

// PublisherH264Profiles are the H.264 profile-level-ids accepted from
// publishers (pion matches on profile_idc and constraint flags). OBS sends
// High by default; browsers send constrained baseline.
var PublisherH264Profiles = []string{"42e01f", "42001f", "42c01f", "4d001f", "4d401f", "64001f", "640c1f"}

// answerTimeout bounds the making of one answer.
const answerTimeout = 5 * time.Second

// Engine owns the shared sockets and the two pion APIs.
type Engine struct {
	cfg       Config
	udp       []*socket // kept after Close, for SocketStats
	tcp       *tcpServer
	routes    routes // to Cascade's own transports (Claim, Bind)
	udpMux    ice.UDPMux
	tcpMux    ice.TCPMux
	publisher *webrtc.API
	log       *slog.Logger
	lf        *slogFactory

	// cert is the DTLS certificate of Cascade's own transports (one for
	// all: what authenticates it to a viewer is its fingerprint in the
	// answer), fingerprint that as an a=fingerprint value.
	cert        tls.Certificate
	fingerprint string
	// candidates are the a=candidate values (without "a=") of Cascade's
	// own transports: every socket's address, or the public ones.
	candidates []string
}

// New opens the UDP (and TCP) port and builds the APIs.
func New(cfg Config, log *slog.Logger) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lf := LoggerFactory(log)
	e := &Engine{cfg: cfg, log: log.With("component", "webrtc"), lf: lf}
	if err := e.listen(lf); err != nil {
		e.Close()
		return nil, err
	}
	public, err := resolveHosts(cfg.PublicHosts)
	if err != nil {
		e.Close()
		return nil, err
	}
	if e.publisher, err = e.api(publisherMedia, publisherInterceptors, e.settings(public, lf)); err != nil {
		e.Close()
		return nil, err
	}
	if e.cert, err = selfsign.GenerateSelfSigned(); err != nil {
		e.Close()
		return nil, fmt.Errorf("webrtc: certificate: %w", err)
	}
	sum := sha256.Sum256(e.cert.Certificate[0])
	e.fingerprint = "sha-256 " + colonHex(sum[:])
	e.candidates = e.liteCandidates(public)
	return e, nil
}

// colonHex writes b as upper-case hex pairs joined by colons (RFC 8122).
func colonHex(b []byte) string {
	const digits = "0123456789ABCDEF"
	out := make([]byte, 0, 3*len(b))
	for i, c := range b {
		if i > 0 {
			out = append(out, ':')
		}
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// liteCandidates lists the host candidates of the engine's sockets (RFC
// 8839 section 5.1): UDP, then passive ICE-TCP (RFC 6544) on the same
// port, on each socket's address or, behind NAT 1:1, on each public one.
func (e *Engine) liteCandidates(public []string) []string {
	var ips []string
	if len(public) > 0 {
		ips = public
	} else {
		for _, s := range e.udp {
			ips = append(ips, s.LocalAddr().(*net.UDPAddr).IP.String())
		}
	}
	port := e.UDPAddr().(*net.UDPAddr).Port
	var out []string
	for i, ip := range ips {
		// Type preference 126 (host), local preference falling with the
		// order, component 1 (RFC 8445 section 5.1.2.1).
		out = append(out, fmt.Sprintf("candidate:%d 1 udp %d %s %d typ host", i+1, 126<<24|(65535-i)<<8|255, ip, port))
	}
	if e.tcp != nil {
		for i, ip := range ips {
			// Passive TCP host candidates rank below UDP (RFC 6544
			// section 4.2: local preference 2^13 × direction 4 + other).
			out = append(out, fmt.Sprintf("candidate:%d 1 tcp %d %s %d typ host tcptype passive", len(ips)+i+1, 126<<24|(1<<15+8191-i)<<8|255, ip, port))
		}
	}
	return out
}

// Certificate is the DTLS certificate of Cascade's own transports, and its
// a=fingerprint value.
func (e *Engine) Certificate() (tls.Certificate, string) { return e.cert, e.fingerprint }

// Candidates are the a=candidate values (without "a=") of Cascade's own
// transports. The slice is shared: do not modify it.
func (e *Engine) Candidates() []string { return e.candidates }

// LoggerFactory is the engine's pion logger factory.
func (e *Engine) LoggerFactory() logging.LoggerFactory { return e.lf }

func resolveHosts(hosts []string) ([]string, error) {
	var ips []string
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip.String())
			continue
		}
		addrs, err := net.LookupHost(h)
		if err != nil {
			return nil, fmt.Errorf("webrtc.public_hosts: resolve %q: %w", h, err)
		}
		for _, a := range addrs {
			if ip := net.ParseIP(a); ip != nil && ip.To4() != nil {
				ips = append(ips, a)
			}
		}
	}
	return ips, nil
}

func (e *Engine) api(media func(*webrtc.MediaEngine) error, icp func(*webrtc.MediaEngine, *interceptor.Registry) error, se webrtc.SettingEngine) (*webrtc.API, error) {
	m := &webrtc.MediaEngine{}
	if err := media(m); err != nil {
		return nil, fmt.Errorf("webrtc: codecs: %w", err)
	}
	ir := &interceptor.Registry{}
	if err := icp(m, ir); err != nil {
		return nil, fmt.Errorf("webrtc: interceptors: %w", err)
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se)), nil
}

// settings is the SettingEngine every peer shares: the muxes, timers and
// address rules.
func (e *Engine) settings(public []string, lf *slogFactory) webrtc.SettingEngine {
	se := webrtc.SettingEngine{LoggerFactory: lf}
	se.SetICEUDPMux(e.udpMux)
	types := []webrtc.NetworkType{webrtc.NetworkTypeUDP4}
	if e.tcpMux != nil {
		se.SetICETCPMux(e.tcpMux)
		types = append(types, webrtc.NetworkTypeTCP4)
	}
	se.SetNetworkTypes(types)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	// AES-GCM first: with AES-NI it encrypts and authenticates in one pass,
	// cheaper per packet than AES-CM plus HMAC-SHA1, and every browser has it.
	se.SetSRTPProtectionProfiles(dtls.SRTP_AEAD_AES_128_GCM, dtls.SRTP_AES128_CM_HMAC_SHA1_80)
	// Media arriving is consent too; keepalives every 2 s let a peer that
	// vanished be noticed within the failed timeout.
	se.SetICETimeouts(e.cfg.ICEFailedTimeout/2, e.cfg.ICEFailedTimeout, 2*time.Second)
	if host, _, _ := net.SplitHostPort(e.cfg.Listen); host != "" && host != "0.0.0.0" {
		// Bound to one address: announce that one only (loopback included,
		// which tests and single-machine setups use).
		se.SetIncludeLoopbackCandidate(true)
		se.SetIPFilter(func(ip net.IP) bool { return ip.String() == host })
	}
	if len(public) > 0 {
		se.SetNAT1To1IPs(public, webrtc.ICECandidateTypeHost)
	}
	return se
}

var videoFeedback = []webrtc.RTCPFeedback{{Type: "nack"}, {Type: "nack", Parameter: "pli"}, {Type: "ccm", Parameter: "fir"}}

func opus() webrtc.RTPCodecParameters {
	return webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"},
		PayloadType:        111,
	}
}

func h264(profile string, pt webrtc.PayloadType) webrtc.RTPCodecParameters {
	return webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{
			MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
			SDPFmtpLine:  "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=" + profile,
			RTCPFeedback: videoFeedback,
		},
		PayloadType: pt,
	}
}

func publisherMedia(m *webrtc.MediaEngine) error {
	for i, p := range PublisherH264Profiles {
		if err := m.RegisterCodec(h264(p, webrtc.PayloadType(102+2*i)), webrtc.RTPCodecTypeVideo); err != nil {
			return err
		}
	}
	return m.RegisterCodec(opus(), webrtc.RTPCodecTypeAudio)
}

// publisherInterceptors: NACK generation toward the publisher, receiver
// reports and TWCC feedback so its encoder can adapt.
func publisherInterceptors(m *webrtc.MediaEngine, ir *interceptor.Registry) error {
	return webrtc.RegisterDefaultInterceptors(m, ir)
}

// Publisher is the API for WHIP sessions.
func (e *Engine) Publisher() *webrtc.API { return e.publisher }

// SocketStats are running totals of the shared UDP socket's writer.
type SocketStats struct {
	// Packets were handed to the kernel; Dropped were not: the write queue
	// was full (a burst beyond batchSlots) or the kernel refused them.
	Packets, Dropped uint64
	// Syscalls counts sendmmsg calls; Segmented the UDP GSO messages among
	// the messages they carried (each several packets to one address),
	// and SegmentedPackets the packets in those.
	Syscalls, Segmented, SegmentedPackets uint64
	// UnroutedDropped counts datagrams for pion's sessions (publishers)
	// dropped at a full queue.
	UnroutedDropped uint64
	// Polls counts the drains of the polled RTCP socket (rtcpsock.go),
	// Polled the datagrams they read.
	Polls, Polled uint64
	// GSO is whether the socket still segments (it stops after an error).
	GSO bool
}

// SocketStats returns the totals of every UDP socket of the engine, for
// metrics. It is safe at any time, after Close too.
func (e *Engine) SocketStats() SocketStats {
	var st SocketStats
	for _, u := range e.udp {
		st.Packets += u.sent.Load()
		st.Dropped += u.dropped.Load()
		st.Syscalls += u.batches.Load()
		st.Segmented += u.gsoMsgs.Load()
		st.SegmentedPackets += u.gsoPackets.Load()
		st.UnroutedDropped += u.toPionDropped.Load()
		st.GSO = st.GSO || u.gso.Load()
		if u.poll != nil {
			st.Polls += u.poll.polls.Load()
			st.Polled += u.poll.polled.Load()
		}
	}
	return st
}

// Config returns the engine's configuration.
func (e *Engine) Config() Config { return e.cfg }

// UDPAddr is a bound UDP address (its port, when Listen asked for 0).
func (e *Engine) UDPAddr() net.Addr { return e.udp[0].LocalAddr() }

// listen opens the UDP port and, with ICE-TCP, the TCP port of the same
// number. When the port is chosen by the system (":0"), the TCP port of
// that number may be taken: then it tries again with another.
func (e *Engine) listen(lf *slogFactory) error {
	_, port, _ := net.SplitHostPort(e.cfg.Listen)
	attempts := 1
	if port == "0" {
		attempts = 8
	}
	var err error
	for i := 0; i < attempts; i++ {
		if err = e.listenUDP(e.cfg.Listen, lf); err != nil {
			return err
		}
		if !e.cfg.TCP {
			return nil
		}
		addr := net.JoinHostPort(host(e.cfg.Listen), fmt.Sprint(e.UDPAddr().(*net.UDPAddr).Port))
		var ln net.Listener
		if ln, err = net.Listen("tcp4", addr); err == nil {
			// ICE-TCP on the same port number as UDP, so two firewall holes do.
			e.tcp = newTCPServer(ln, &e.routes, e.cfg.HandshakeTimeout)
			e.tcpMux = ice.NewTCPMuxDefault(ice.TCPMuxParams{
				Listener: e.tcp.pion, Logger: lf.NewLogger("ice-tcp"), ReadBufferSize: 64,
				WriteBufferSize: 4 << 20, FirstStunBindTimeout: e.cfg.HandshakeTimeout,
			})
			return nil
		}
		e.closeUDP()
		e.udp = nil // listen afresh
	}
	return fmt.Errorf("webrtc: listen tcp: %w", err)
}

// closeUDP closes the UDP mux and its sockets.
func (e *Engine) closeUDP() {
	if e.udpMux != nil {
		e.udpMux.Close()
		e.udpMux = nil
	}
	for _, u := range e.udp { // Close is idempotent
		u.Close()
	}
}

func host(hostport string) string {
	h, _, _ := net.SplitHostPort(hostport)
	return h
}

// listenUDP opens the WebRTC port. On a wildcard address it opens one socket
// per local IPv4 address on the same port, so every reply leaves from the
// address the peer sent to (one wildcard socket lets the kernel pick, which
// breaks ICE on multi-homed hosts). Addresses added after start are not
// picked up.
func (e *Engine) listenUDP(listen string, lf *slogFactory) error {
	addr, err := net.ResolveUDPAddr("udp4", listen)
	if err != nil {
		return fmt.Errorf("webrtc.listen: %w", err)
	}
	ips := []net.IP{addr.IP}
	if addr.IP == nil || addr.IP.IsUnspecified() {
		if ips, err = localIPv4(); err != nil {
			return err
		}
	}
	port := addr.Port
	var muxes []ice.UDPMux
	for _, ip := range ips {
		uc, err := listenReusePort(&net.UDPAddr{IP: ip, Port: port})
		if err != nil {
			return fmt.Errorf("webrtc: listen udp %s: %w", ip, err)
		}
		port = uc.LocalAddr().(*net.UDPAddr).Port // the first one picks, when 0
		if got := growBuffers(uc); got < socketBuffer {
			e.log.Warn("UDP receive buffer is small; raise net.core.rmem_max to avoid packet loss under load",
				"bytes", got, "wanted", socketBuffer)
		}
		wfd, err := openWriteSocket(uc)
		if err != nil {
			e.log.Info("UDP port without a write-only socket; sends wake the network poller", "error", err)
		}
		pfd := -1
		if wfd >= 0 {
			if pfd, err = openPollSocket(uc); err != nil {
				e.log.Info("UDP port without a polled socket; RTCP is read as it arrives", "error", err)
			}
		}
		s := newSocket(uc, wfd, pfd, &e.routes)
		e.udp = append(e.udp, s)
		muxes = append(muxes, ice.NewUDPMuxDefault(ice.UDPMuxParams{Logger: lf.NewLogger("ice-udp"), UDPConn: s.pion}))
	}
	if len(muxes) == 1 {
		e.udpMux = muxes[0]
	} else {
		e.udpMux = ice.NewMultiUDPMuxDefault(muxes...)
	}
	return nil
}

// localIPv4 lists the host's IPv4 addresses other than loopback, or
// loopback alone on a host that has nothing else.
func localIPv4() ([]net.IP, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("webrtc: list addresses: %w", err)
	}
	var ips []net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			ips = append(ips, n.IP.To4())
		}
	}
	if len(ips) == 0 {
		ips = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	return ips, nil
}

// Close releases the sockets. Idempotent.
func (e *Engine) Close() error {
	e.closeUDP()
	if e.tcpMux != nil {
		e.tcpMux.Close()
		e.tcpMux = nil
	}
	if e.tcp != nil {
		e.tcp.close()
		e.tcp = nil
	}
	return nil
}

// Answer applies an offer to pc, creates the answer, waits for the (local,
// immediate) ICE gathering and returns the answer SDP as the contract wants
// it: a=rtcp-mux-only on each m-section (RFC 9725 section 4.2), which pion
// does not write by itself.
func Answer(ctx context.Context, pc *webrtc.PeerConnection, offer string) (string, error) {
	// Gathering is local and immediate with the muxes; a peer must not
	// hold a request (and its goroutine) for long if it is not.
	ctx, cancel := context.WithTimeout(ctx, answerTimeout)
	defer cancel()
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return "", fmt.Errorf("set remote description: %w", err)
	}
	answer, err := pc.CreateAnswer(nil)
	if err != nil {
		return "", fmt.Errorf("create answer: %w", err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(answer); err != nil {
		return "", fmt.Errorf("set local description: %w", err)
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return AddRTCPMuxOnly(pc.LocalDescription().SDP)
}

// AddRTCPMuxOnly adds a=rtcp-mux-only to every m-section that lacks it.
func AddRTCPMuxOnly(s string) (string, error) {
	var d sdp.SessionDescription
	if err := d.UnmarshalString(s); err != nil {
		return "", fmt.Errorf("parse answer: %w", err)
	}
	for _, m := range d.MediaDescriptions {
		if _, ok := m.Attribute("rtcp-mux-only"); !ok {
			m.WithPropertyAttribute("rtcp-mux-only")
		}
	}
	out, err := d.Marshal()
	if err != nil {
		return "", err
	}
	return string(out), nil
}

// LocalCandidates returns the a=candidate values (without "a=") of pc's
// current local description.
func LocalCandidates(pc *webrtc.PeerConnection) (ufrag, pwd, mid string, cands []string) {
	ld := pc.LocalDescription()
	if ld == nil {
		return
	}
	for _, line := range strings.Split(ld.SDP, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "a=ice-ufrag:") && ufrag == "":
			ufrag = line[len("a=ice-ufrag:"):]
		case strings.HasPrefix(line, "a=ice-pwd:") && pwd == "":
			pwd = line[len("a=ice-pwd:"):]
		case strings.HasPrefix(line, "a=mid:") && mid == "":
			mid = line[len("a=mid:"):]
		case strings.HasPrefix(line, "a=candidate:") && mid != "" && !contains(cands, line[2:]):
			cands = append(cands, line[2:])
		}
	}
	return
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
