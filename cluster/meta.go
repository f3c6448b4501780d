package cluster

import (
	"fmt"
	"math"
	"net"
	"net/url"
)

// Role is what a node does in the cluster.
type Role string

// Roles. An all-in-one node gossips as an origin: it ingests and also
// serves viewers.
const (
	RoleOrigin Role = "origin"
	RoleEdge   Role = "edge"
)

// Limits of node metadata. With them the encoding stays under
// memberlist.MetaMaxSize (512 bytes): see TestMetaWorstCaseFits.
const (
	MaxNameLen  = 64  // node names
	MaxAddrLen  = 112 // each of HTTP, WebRTC, RTSP
	MaxLabelLen = 48  // region and zone
	maxCPU      = 64  // CPU load is a fraction of the machine; anything above is clamped
	maxCount    = 1 << 30
	maxBps      = 1 << 50
)

// Load is what a node reports about how busy it is.
type Load struct {
	// Viewers is the number of viewers this node serves itself.
	Viewers int `json:"viewers"`
	// EgressBps is the media bit rate this node sends, relays included.
	EgressBps int64 `json:"egress_bps"`
	// CPU is the busy fraction of the whole machine, 0 to 1.
	CPU float64 `json:"cpu"`
	// Capacity is how many viewers this node takes; 0 means it takes none
	// (an origin that only ingests).
	Capacity int `json:"capacity"`
}

// Ratio is the load as a fraction of what the node can take: the larger of
// viewers/capacity and CPU. A node with no capacity is full (1).
func (l Load) Ratio() float64 {
	if l.Capacity <= 0 {
		return 1
	}
	return math.Max(float64(l.Viewers)/float64(l.Capacity), l.CPU)
}

// Meta is what a node gossips about itself.
type Meta struct {
	// Name is the memberlist node name; it is not part of the encoding.
	Name string `json:"name"`
	Role Role   `json:"role"`
	// HTTP is the base URL of WHIP, WHEP and the API ("http://10.0.0.5:8080"),
	// used in redirects.
	HTTP string `json:"http"`
	// WebRTC is the media address ("10.0.0.5:8189").
	WebRTC string `json:"webrtc,omitempty"`
	// RTSP is the base URL relays read from ("rtsp://10.0.0.5:8554").
	RTSP     string `json:"rtsp,omitempty"`
	Region   string `json:"region"`
	Zone     string `json:"zone,omitempty"`
	Load     Load   `json:"load"`
	Draining bool   `json:"draining"`
}

// Validate checks what a node may announce: known role, addresses and
// labels within their limits, load not negative.
func (m Meta) Validate() error {
	if m.Role != RoleOrigin && m.Role != RoleEdge {
		return fmt.Errorf("cluster: role %q is not origin or edge", m.Role)
	}
	if err := checkURL(m.HTTP, "http", "https"); err != nil {
		return fmt.Errorf("cluster: http address %q: %w", m.HTTP, err)
	}
	if err := checkHostPort(m.WebRTC); err != nil {
		return fmt.Errorf("cluster: webrtc address %q: %w", m.WebRTC, err)
	}
	if err := checkURL(m.RTSP, "rtsp", "rtsps"); err != nil {
		return fmt.Errorf("cluster: rtsp address %q: %w", m.RTSP, err)
	}
	if !validLabel(m.Region) {
		return fmt.Errorf("cluster: region %q: at most %d of [A-Za-z0-9._-]", m.Region, MaxLabelLen)
	}
	if !validLabel(m.Zone) {
		return fmt.Errorf("cluster: zone %q: at most %d of [A-Za-z0-9._-]", m.Zone, MaxLabelLen)
	}
	l := m.Load
	if l.Viewers < 0 || l.Capacity < 0 || l.EgressBps < 0 || math.IsNaN(l.CPU) || l.CPU < 0 {
		return fmt.Errorf("cluster: load %+v has a negative or NaN figure", l)
	}
	return nil
}

// checkURL accepts "" or an absolute URL of one of the schemes, with a host
// and no path, query or user.
func checkURL(s string, schemes ...string) error {
	if s == "" {
		return nil
	}
	if len(s) > MaxAddrLen || !asciiToken(s) {
		return errBadAddress
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return errBadAddress
	}
	for _, sc := range schemes {
		if u.Scheme == sc {
			return nil
		}
	}
	return errBadAddress
}

// checkHostPort accepts "" or host:port.
func checkHostPort(s string) error {
	if s == "" {
		return nil
	}
	if len(s) > MaxAddrLen || !asciiToken(s) {
		return errBadAddress
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return errBadAddress
	}
	return nil
}

// asciiToken reports whether s is printable ASCII without spaces.
func asciiToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

func validLabel(s string) bool {
	if len(s) > MaxLabelLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return false
		}
	}
	return true
}

// ValidNodeName reports whether s is a usable node name:
// [A-Za-z0-9][A-Za-z0-9._-]{0,63}.
func ValidNodeName(s string) bool { return validName(s, MaxNameLen) }

// ValidStream reports whether s is a valid stream name:
// [A-Za-z0-9][A-Za-z0-9._-]{0,127}.
func ValidStream(s string) bool { return validName(s, MaxStreamLen) }

func validName(s string, max int) bool {
	if len(s) == 0 || len(s) > max || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !nameByte(s[i]) {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func nameByte(c byte) bool { return alnum(c) || c == '.' || c == '_' || c == '-' }

// The metadata encoding, version 1:
//
//	byte    version (1)
//	byte    role (1 origin, 2 edge)
//	byte    flags (bit 0: draining)
//	uvarint epoch: this run of the node (see directory.go)
//	uvarint beat: bumped on every refresh, so an unchanged load still
//	        reaches the others and shows the node is reporting
//	uvarint dseq: the node's directory counter (its last change), and
//	u64     dsum: a digest of its live entries, so a node that missed
//	        changes notices and asks for a snapshot
//	str     http, webrtc, rtsp, region, zone
//	uvarint viewers, capacity, egress bit rate, CPU in basis points
const metaVersion = 1

const (
	roleOriginByte = 1
	roleEdgeByte   = 2
	flagDraining   = 1
)

// metaWire is the decoded metadata with the fields only the package uses.
type metaWire struct {
	Meta
	epoch uint64
	beat  uint64
	dseq  uint64
	dsum  uint64
}

func encodeMeta(mw metaWire) []byte {
	w := writer{b: make([]byte, 0, 128)}
	w.byte(metaVersion)
	switch mw.Role {
	case RoleOrigin:
		w.byte(roleOriginByte)
	default:
		w.byte(roleEdgeByte)
	}
	var flags byte
	if mw.Draining {
		flags |= flagDraining
	}
	w.byte(flags)
	w.uvarint(mw.epoch)
	w.uvarint(mw.beat)
	w.uvarint(mw.dseq)
	w.u64(mw.dsum)
	w.str(mw.HTTP)
	w.str(mw.WebRTC)
	w.str(mw.RTSP)
	w.str(mw.Region)
	w.str(mw.Zone)
	w.uvarint(uint64(max(mw.Load.Viewers, 0)))
	w.uvarint(uint64(max(mw.Load.Capacity, 0)))
	w.uvarint(uint64(max(mw.Load.EgressBps, 0)))
	w.uvarint(encodeCPU(mw.Load.CPU))
	return w.b
}

// decodeMeta parses node metadata from the network. name is the memberlist
// node name it came with.
func decodeMeta(name string, b []byte) (metaWire, error) {
	var mw metaWire
	if !ValidNodeName(name) {
		return mw, errBadName
	}
	if len(b) > metaMaxSize {
		return mw, errOversize
	}
	r := reader{b: b}
	if v := r.byte(); r.err == nil && v != metaVersion {
		return mw, errVersion
	}
	switch r.byte() {
	case roleOriginByte:
		mw.Role = RoleOrigin
	case roleEdgeByte:
		mw.Role = RoleEdge
	default:
		if r.err == nil {
			return mw, errBadRole
		}
	}
	flags := r.byte()
	mw.Draining = flags&flagDraining != 0
	mw.epoch = r.uvarint()
	mw.beat = r.uvarint()
	mw.dseq = r.uvarint()
	mw.dsum = r.u64()
	mw.HTTP = r.str(MaxAddrLen)
	mw.WebRTC = r.str(MaxAddrLen)
	mw.RTSP = r.str(MaxAddrLen)
	mw.Region = r.str(MaxLabelLen)
	mw.Zone = r.str(MaxLabelLen)
	mw.Load.Viewers = clampUint(r.uvarint(), maxCount)
	mw.Load.Capacity = clampUint(r.uvarint(), maxCount)
	egress := r.uvarint()
	if egress > maxBps {
		egress = maxBps
	}
	mw.Load.EgressBps = int64(egress)
	mw.Load.CPU = decodeCPU(r.uvarint())
	if r.err != nil {
		return metaWire{}, r.err
	}
	mw.Name = name
	if err := mw.Meta.Validate(); err != nil {
		return metaWire{}, err
	}
	return mw, nil
}

// metaMaxSize mirrors memberlist.MetaMaxSize without importing it here.
const metaMaxSize = 512
