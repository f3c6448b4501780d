// Package rtsp is Cascade's RTSP side, on gortsplib: a server where
// encoders and ffmpeg publish (ANNOUNCE/RECORD) into the stream registry
// like a WHIP publisher, and where edges and any RTSP client read a
// stream's whole ladder (DESCRIBE/PLAY, one media per rendition plus
// audio); and pull sources that read cameras and keep their streams alive
// across reconnects.
package rtsp

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/bluenviron/gortsplib/v5"
	"github.com/bluenviron/gortsplib/v5/pkg/base"
	"github.com/bluenviron/gortsplib/v5/pkg/format"
	"github.com/bluenviron/gortsplib/v5/pkg/liberrors"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascade-cdn/cascade/origin/auth"
	"github.com/cascade-cdn/cascade/origin/registry"
	"github.com/cascade-cdn/cascade/wish"
)

// Config is the RTSP server's configuration (config key "rtsp").
type Config struct {
	// Listen is the RTSP (TCP) address; empty turns RTSP off.
	Listen string `yaml:"listen"`
	// UDPRTP and UDPRTCP are the server's RTP and RTCP ports for the UDP
	// transport (an even port and the next one); empty offers TCP only.
	UDPRTP  string `yaml:"udp_rtp"`
	UDPRTCP string `yaml:"udp_rtcp"`
	// TLSCert and TLSKey (PEM files) turn the listener into RTSPS; the UDP
	// transport is then off, as gortsplib requires.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// ReadTimeout closes a publisher that sends nothing, and a session
	// that sends no keepalive, after this long.
	ReadTimeout time.Duration `yaml:"read_timeout"`
}

// DefaultConfig is the design's port, with UDP on 8000/8001 as MediaMTX.
func DefaultConfig() Config {
	return Config{Listen: ":8554", UDPRTP: ":8000", UDPRTCP: ":8001", ReadTimeout: 10 * time.Second}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Listen == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("rtsp.listen: %w", err)
	}
	if (c.UDPRTP == "") != (c.UDPRTCP == "") {
		return errors.New("rtsp: udp_rtp and udp_rtcp go together")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("rtsp: tls_cert and tls_key go together")
	}
	if c.ReadTimeout < time.Second {
		return errors.New("rtsp.read_timeout must be at least 1s")
	}
	return nil
}

// RelayUser is the user name an edge presents, with the cluster secret as
// its password, to read a stream over RTSP.
const RelayUser = "cascade"

// PublishUser is the user name an RTSP publisher presents, with the
// stream's publish key as its password.
const PublishUser = "publish"

// Server is the RTSP server.
type Server struct {
	cfg    Config
	reg    *registry.Registry
	auth   auth.Config
	secret string
	pulls  *Pulls // may be nil
	log    *slog.Logger
	m      *metrics
	gs     *gortsplib.Server
	relays *relays

	mu     sync.Mutex
	conns  map[*gortsplib.ServerConn]*connState
	closed gortsplib.ConnStats // bytes of connections already gone
}

// connState is what the server remembers of one connection.
type connState struct {
	method string // of the request being answered, for the metric
	// describe holds the a=x-cascade-rendition lines to add to the DESCRIBE
	// answer being written (gortsplib writes the SDP itself).
	describe []string
}

// New starts an RTSP server publishing into reg. secret is the cluster
// secret relay readers must present; empty leaves relay reads open, which
// New logs. pulls, if not nil, starts on-demand sources on DESCRIBE.
func New(cfg Config, reg *registry.Registry, a auth.Config, secret string, pulls *Pulls, pr prometheus.Registerer, log *slog.Logger) (*Server, error) {
	s := &Server{
		cfg: cfg, reg: reg, auth: a, secret: secret, pulls: pulls,
		log:   log.With("component", "rtsp"),
		conns: map[*gortsplib.ServerConn]*connState{},
	}
	s.m = newMetrics(pr, s.byteTotals)
	s.relays = newRelays(reg, s.m, s.log)
	s.gs = &gortsplib.Server{
		Handler:        s,
		RTSPAddress:    cfg.Listen,
		UDPRTPAddress:  cfg.UDPRTP,
		UDPRTCPAddress: cfg.UDPRTCP,
		ReadTimeout:    cfg.ReadTimeout,
		WriteTimeout:   cfg.ReadTimeout,
		// A connection that sends garbage (or nothing) is closed this long
		// after its last valid request; gortsplib's own default is 60 s.
		IdleTimeout: 3 * cfg.ReadTimeout,
		// A relay reader that cannot keep up loses packets rather than
		// holding the stream's writer: 512 packets is about 0.3 s of a
		// full ladder.
		WriteQueueSize: 512,
	}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("rtsp: %w", err)
		}
		s.gs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		s.gs.UDPRTPAddress, s.gs.UDPRTCPAddress = "", ""
	}
	if err := s.gs.Start(); err != nil {
		s.relays.close()
		return nil, fmt.Errorf("rtsp: %w", err)
	}
	if secret == "" {
		s.log.Warn("relay reads are open: anyone may read any stream over RTSP (set cluster.secret)")
	}
	s.log.Info("rtsp listening", "addr", s.Addr().String(), "udp", s.gs.UDPRTPAddress != "", "tls", s.gs.TLSConfig != nil)
	return s, nil
}

// Addr is the bound RTSP address.
func (s *Server) Addr() net.Addr { return s.gs.NetListener().Addr() }

// RelayReaders is the number of sessions reading stream over RTSP.
func (s *Server) RelayReaders(stream string) int { return s.relays.readers(stream) }

// Close stops the server and ends every RTSP session.
func (s *Server) Close() {
	s.gs.Close()
	s.relays.close()
}

func (s *Server) byteTotals() (in, out uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, out = s.closed.BytesReceived, s.closed.BytesSent
	for c := range s.conns {
		st := c.Stats()
		in += st.BytesReceived
		out += st.BytesSent
	}
	return in, out
}

// OnConnOpen implements gortsplib.ServerHandlerOnConnOpen.
func (s *Server) OnConnOpen(ctx *gortsplib.ServerHandlerOnConnOpenCtx) {
	s.mu.Lock()
	s.conns[ctx.Conn] = &connState{}
	s.mu.Unlock()
	s.m.conns.Inc()
}

// OnConnClose implements gortsplib.ServerHandlerOnConnClose.
func (s *Server) OnConnClose(ctx *gortsplib.ServerHandlerOnConnCloseCtx) {
	st := ctx.Conn.Stats()
	s.mu.Lock()
	delete(s.conns, ctx.Conn)
	s.closed.BytesReceived += st.BytesReceived
	s.closed.BytesSent += st.BytesSent
	s.mu.Unlock()
	s.m.conns.Dec()
	if ctx.Error != nil && !errors.Is(ctx.Error, liberrors.ErrServerTerminated{}) {
		s.log.Debug("connection closed", "remote", ctx.Conn.NetConn().RemoteAddr().String(), "err", ctx.Error)
	}
}

func (s *Server) conn(c *gortsplib.ServerConn) *connState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.conns[c]; st != nil {
		return st
	}
	return &connState{} // a request racing the connection's close
}

// OnRequest implements gortsplib.ServerHandlerOnRequest.
func (s *Server) OnRequest(c *gortsplib.ServerConn, req *base.Request) {
	m := string(req.Method)
	switch req.Method {
	case base.Options, base.Describe, base.Announce, base.Setup, base.Play, base.Record,
		base.Pause, base.GetParameter, base.SetParameter, base.Teardown:
	default:
		m = "other" // keep the metric's label set bounded
	}
	st := s.conn(c)
	s.mu.Lock()
	st.method = m
	s.mu.Unlock()
}

// OnResponse implements gortsplib.ServerHandlerOnResponse: it counts the
// answer and adds the rendition lines to a DESCRIBE answer.
func (s *Server) OnResponse(c *gortsplib.ServerConn, res *base.Response) {
	st := s.conn(c)
	s.mu.Lock()
	method, lines := st.method, st.describe
	st.method, st.describe = "", nil
	s.mu.Unlock()
	if method == "" {
		method = "other"
	}
	if res.StatusCode == base.StatusNotImplemented && (method == "RECORD" || method == "PLAY") {
		// gortsplib answers these without a session as unknown; they are
		// known here, just not valid before ANNOUNCE/SETUP.
		res.StatusCode = base.StatusMethodNotValidInThisState
	}
	s.m.requests.WithLabelValues(method, fmt.Sprint(int(res.StatusCode))).Inc()
	if res.StatusCode == base.StatusOK && len(lines) > 0 && len(res.Body) > 0 {
		res.Body = annotate(res.Body, lines)
	}
	if res.StatusCode >= 400 && res.StatusCode != base.StatusUnauthorized {
		s.log.Info("rtsp request refused", "method", method, "status", int(res.StatusCode),
			"remote", c.NetConn().RemoteAddr().String())
	}
}

// annotate adds lines[i] at the end of the i-th media section of an SDP
// (empty lines add nothing).
func annotate(sdp []byte, lines []string) []byte {
	var b strings.Builder
	i := 0 // media sections seen
	add := func() {
		if i > 0 && i <= len(lines) && lines[i-1] != "" {
			b.WriteString(lines[i-1] + "\r\n")
		}
	}
	for l := range strings.SplitSeq(strings.TrimRight(string(sdp), "\r\n"), "\r\n") {
		if strings.HasPrefix(l, "m=") {
			add()
			i++
		}
		b.WriteString(l + "\r\n")
	}
	add()
	return []byte(b.String())
}

// OnSessionOpen implements gortsplib.ServerHandlerOnSessionOpen.
func (s *Server) OnSessionOpen(*gortsplib.ServerHandlerOnSessionOpenCtx) {}

// OnSessionClose implements gortsplib.ServerHandlerOnSessionClose.
func (s *Server) OnSessionClose(ctx *gortsplib.ServerHandlerOnSessionCloseCtx) {
	switch u := ctx.Session.UserData().(type) {
	case *publisher:
		u.ended(ctx.Error)
	case *relay:
		u.removeReader(ctx.Session)
	}
}

// streamName checks the path of a request: one valid stream name.
func streamName(path string) (string, bool) {
	name := strings.TrimPrefix(path, "/")
	return name, wish.ValidStreamName(name)
}

func status(code base.StatusCode) *base.Response { return &base.Response{StatusCode: code} }

// checkRelay verifies a relay reader's credentials.
func (s *Server) checkRelay(c *gortsplib.ServerConn, req *base.Request) bool {
	return s.secret == "" || c.VerifyCredentials(req, RelayUser, s.secret)
}

// checkPublish verifies a publisher's credentials: the stream's key as
// the password of user "publish", or nothing for an open stream.
func (s *Server) checkPublish(c *gortsplib.ServerConn, req *base.Request, stream string) bool {
	key, keyed := s.auth.PublishKeys[stream]
	if !keyed {
		return s.auth.OpenPublish
	}
	return key != "" && c.VerifyCredentials(req, PublishUser, key)
}

// OnDescribe implements gortsplib.ServerHandlerOnDescribe: a relay read.
func (s *Server) OnDescribe(ctx *gortsplib.ServerHandlerOnDescribeCtx) (*base.Response, *gortsplib.ServerStream, error) {
	name, ok := streamName(ctx.Path)
	if !ok {
		return status(base.StatusBadRequest), nil, nil
	}
	if !s.checkRelay(ctx.Conn, ctx.Request) {
		s.m.refused.WithLabelValues("auth").Inc()
		return status(base.StatusUnauthorized), nil, liberrors.ErrServerAuth{}
	}
	r := s.relayFor(name)
	if r == nil {
		return status(base.StatusNotFound), nil, nil
	}
	st := s.conn(ctx.Conn)
	s.mu.Lock()
	st.describe = r.lines
	s.mu.Unlock()
	return status(base.StatusOK), r.ss, nil
}

// relayFor returns the relay of stream name, starting an on-demand pull
// source first if name is one.
func (s *Server) relayFor(name string) *relay {
	if s.reg.Get(name) == nil && s.pulls != nil {
		s.pulls.Demand(name)
	}
	r, err := s.relays.get(name, s.gs) // nil: neither published nor relayed here
	if err != nil {
		s.log.Warn("cannot start relay", "stream", name, "err", err)
		return nil
	}
	return r
}

// OnAnnounce implements gortsplib.ServerHandlerOnAnnounce: a publisher.
func (s *Server) OnAnnounce(ctx *gortsplib.ServerHandlerOnAnnounceCtx) (*base.Response, error) {
	name, ok := streamName(ctx.Path)
	if !ok {
		s.m.refused.WithLabelValues("bad_name").Inc()
		return status(base.StatusBadRequest), nil
	}
	if !s.checkPublish(ctx.Conn, ctx.Request, name) {
		s.m.refused.WithLabelValues("auth").Inc()
		return status(base.StatusUnauthorized), liberrors.ErrServerAuth{}
	}
	if s.pulls != nil && s.pulls.Has(name) {
		s.m.refused.WithLabelValues("pull_source").Inc()
		return status(base.StatusForbidden), fmt.Errorf("stream %q is a pull source", name)
	}
	c, err := choose(ctx.Description)
	if err != nil {
		s.m.refused.WithLabelValues("no_codec").Inc()
		return status(base.StatusNotAcceptable), err
	}
	ctx.Session.SetUserData(&publisher{s: s, ss: ctx.Session, stream: name, choice: c,
		log: s.log.With("stream", name, "remote", ctx.Conn.NetConn().RemoteAddr().String())})
	return status(base.StatusOK), nil
}

// OnSetup implements gortsplib.ServerHandlerOnSetup, for publishers (the
// medias they announced) and relay readers (any subset of the ladder).
func (s *Server) OnSetup(ctx *gortsplib.ServerHandlerOnSetupCtx) (*base.Response, *gortsplib.ServerStream, error) {
	if ctx.Session.State() == gortsplib.ServerSessionStatePreRecord {
		return status(base.StatusOK), nil, nil
	}
	if ctx.Transport != nil && ctx.Transport.Protocol == gortsplib.ProtocolUDPMulticast {
		return status(base.StatusUnsupportedTransport), nil, nil
	}
	name, ok := streamName(ctx.Path)
	if !ok {
		return status(base.StatusBadRequest), nil, nil
	}
	if !s.checkRelay(ctx.Conn, ctx.Request) {
		s.m.refused.WithLabelValues("auth").Inc()
		return status(base.StatusUnauthorized), nil, liberrors.ErrServerAuth{}
	}
	if r, ok := ctx.Session.UserData().(*relay); ok {
		return status(base.StatusOK), r.ss, nil // the next media of the same read
	}
	r := s.relayFor(name)
	if r == nil {
		return status(base.StatusNotFound), nil, nil
	}
	r.addReader(ctx.Session)
	ctx.Session.SetUserData(r)
	return status(base.StatusOK), r.ss, nil
}

// OnPlay implements gortsplib.ServerHandlerOnPlay. A reader joins the
// relay mid-GOP (its packets are shared by every reader), so a keyframe
// is asked for at once, as for a new WebRTC viewer; the hubs coalesce
// requests, and a transcoder answers with an early IDR on every rung.
func (s *Server) OnPlay(ctx *gortsplib.ServerHandlerOnPlayCtx) (*base.Response, error) {
	r, ok := ctx.Session.UserData().(*relay)
	if !ok {
		return status(base.StatusMethodNotValidInThisState), nil
	}
	r.play(ctx.Session)
	for _, rd := range r.rends {
		rd.hub.RequestKeyframe()
	}
	return status(base.StatusOK), nil
}

// OnRecord implements gortsplib.ServerHandlerOnRecord: the publisher's
// stream goes live.
func (s *Server) OnRecord(ctx *gortsplib.ServerHandlerOnRecordCtx) (*base.Response, error) {
	p, ok := ctx.Session.UserData().(*publisher)
	if !ok {
		return status(base.StatusMethodNotValidInThisState), nil
	}
	if err := p.start(); err != nil {
		p.log.Warn("cannot start publisher", "err", err)
		return status(base.StatusNotAcceptable), err
	}
	return status(base.StatusOK), nil
}

// OnPacketsLost implements gortsplib.ServerHandlerOnPacketsLost.
func (s *Server) OnPacketsLost(ctx *gortsplib.ServerHandlerOnPacketsLostCtx) {
	s.m.lost.Add(float64(ctx.Lost))
}

// OnDecodeError implements gortsplib.ServerHandlerOnDecodeError: garbage
// from a client (bad RTP, frames for channels never set up) is counted
// and dropped; the session goes on.
func (s *Server) OnDecodeError(ctx *gortsplib.ServerHandlerOnDecodeErrorCtx) {
	s.m.decodeErrors.Inc()
	s.log.Debug("rtsp decode error", "err", ctx.Error)
}

// publisher is one RTSP ANNOUNCE/RECORD session.
type publisher struct {
	s      *Server
	ss     *gortsplib.ServerSession
	stream string
	choice choice
	log    *slog.Logger

	st   *registry.Stream
	in   *ingest
	once sync.Once
}

func (p *publisher) Source() string     { return "rtsp-publish" }
func (p *publisher) VideoCodec() string { return p.choice.codec() }

// Close ends the RTSP session; OnSessionClose then unpublishes.
func (p *publisher) Close() error {
	p.ss.Close()
	return nil
}

func (p *publisher) start() error {
	st := p.s.reg.Publish(p.stream, p)
	in, err := newIngest(p.choice, st, received(p.s.m.ingest, p.stream))
	if err != nil {
		p.s.reg.Unpublish(st, p)
		return err
	}
	p.st, p.in = st, in
	p.s.m.sessions.WithLabelValues("publish").Inc()
	onErr := func(err error) {
		p.s.m.decodeErrors.Inc()
		p.log.Debug("bad media from publisher", "err", err)
	}
	if c := p.choice; c.video != nil {
		p.ss.OnPacketRTP(c.video, c.videoForma, func(pkt *rtp.Packet) {
			if err := in.onVideo(pkt); err != nil {
				onErr(err)
			}
		})
	}
	if c := p.choice; c.audio != nil {
		p.ss.OnPacketRTP(c.audio, c.audioForma, func(pkt *rtp.Packet) {
			if err := in.onAudio(pkt); err != nil {
				onErr(err)
			}
		})
	}
	p.log.Info("rtsp publisher recording", "codec", p.choice.codec(), "audio", formatName(p.choice.audioForma),
		"transport", transportName(p.ss.Transport()))
	return nil
}

// ended runs when gortsplib closed the session, for whatever reason.
func (p *publisher) ended(err error) {
	p.once.Do(func() {
		if p.st == nil {
			return // never recorded
		}
		p.s.m.sessions.WithLabelValues("publish").Dec()
		p.s.reg.Unpublish(p.st, p)
		p.in.close()
		p.log.Info("rtsp publisher left", "err", err)
	})
}

func formatName(f format.Format) string {
	if f == nil {
		return "none"
	}
	return f.Codec()
}

func transportName(t *gortsplib.SessionTransport) string {
	if t == nil {
		return "unknown"
	}
	if t.Protocol == gortsplib.ProtocolTCP {
		return "tcp"
	}
	return "udp"
}
