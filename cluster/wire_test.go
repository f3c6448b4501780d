package cluster

import (
	"bytes"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func worstMeta() metaWire {
	addr := func(prefix string) string { return prefix + strings.Repeat("h", MaxAddrLen-len(prefix)-6) + ":65535" }
	return metaWire{
		Meta: Meta{Name: strings.Repeat("n", MaxNameLen), Role: RoleOrigin,
			HTTP: addr("https://"), WebRTC: addr(""), RTSP: addr("rtsps://"),
			Region: strings.Repeat("r", MaxLabelLen), Zone: strings.Repeat("z", MaxLabelLen),
			Load: Load{Viewers: maxCount, EgressBps: maxBps, CPU: maxCPU, Capacity: maxCount}, Draining: true},
		epoch: ^uint64(0), beat: ^uint64(0), dseq: ^uint64(0), dsum: ^uint64(0),
	}
}

func TestMetaWorstCaseFits(t *testing.T) {
	w := worstMeta()
	if err := w.Validate(); err != nil {
		t.Fatal(err)
	}
	b := encodeMeta(w)
	if len(b) > memberlist.MetaMaxSize {
		t.Fatalf("worst-case metadata is %d bytes, over %d", len(b), memberlist.MetaMaxSize)
	}
	t.Logf("worst-case metadata: %d bytes; typical: %d", len(b), len(encodeMeta(typicalMeta())))
	got, err := decodeMeta(w.Name, b)
	if err != nil || !reflect.DeepEqual(got, w) {
		t.Fatalf("round trip: %v\n got %+v\nwant %+v", err, got, w)
	}
}

func typicalMeta() metaWire {
	return metaWire{Meta: Meta{Name: "edge-eu-west-1a-017", Role: RoleEdge, HTTP: "http://10.0.12.34:8080",
		WebRTC: "203.0.113.34:8189", RTSP: "rtsp://10.0.12.34:8554", Region: "eu-west", Zone: "eu-west-1a",
		Load: Load{Viewers: 1234, EgressBps: 2_468_000_000, CPU: 0.41, Capacity: 2000}}, epoch: uint64(time.Now().UnixNano()), beat: 9999}
}

// metaHead is the metadata up to the first string.
func metaHead() []byte { return []byte{metaVersion, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0} }

// metaCases are metadata that must be refused; they seed FuzzMeta.
var metaCases = []struct {
	name string
	b    []byte
	err  error
}{
	{"empty", nil, errShort},
	{"version only", []byte{metaVersion}, errShort},
	{"future version", []byte{2, 1, 0}, errVersion},
	{"bad role", []byte{metaVersion, 9, 0}, errBadRole},
	{"truncated string", append(metaHead(), 50, 'h'), errShort},
	{"long string", append(append(metaHead(), 200, 1), bytes.Repeat([]byte{'h'}, 200)...), errTooLong},
	{"control character", append(metaHead(), 2, 'a', '\n'), errBadString},
	{"bad url", encodeMeta(metaWire{Meta: Meta{Role: RoleEdge, HTTP: "ftp://x:1"}}), errBadAddress},
	{"bad label", encodeMeta(metaWire{Meta: Meta{Role: RoleEdge, Region: "a/b"}}), nil},
	{"oversize", bytes.Repeat([]byte{1}, 600), errOversize},
	{"varint overflow", []byte{metaVersion, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, errShort},
}

func TestDecodeMetaRefuses(t *testing.T) {
	for _, tc := range metaCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeMeta("node", tc.b)
			if err == nil || (tc.err != nil && !errors.Is(err, tc.err)) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
		})
	}
	if _, err := decodeMeta("bad name!", encodeMeta(typicalMeta())); !errors.Is(err, errBadName) {
		t.Errorf("bad node name: %v", err)
	}
	// Appended fields of a later minor version are ignored.
	b := append(encodeMeta(typicalMeta()), 1, 2, 3)
	if _, err := decodeMeta("node", b); err != nil {
		t.Errorf("trailing bytes: %v", err)
	}
}

func TestMetaValidate(t *testing.T) {
	ok := typicalMeta().Meta
	for name, f := range map[string]func(*Meta){
		"role":         func(m *Meta) { m.Role = "relay" },
		"long region":  func(m *Meta) { m.Region = strings.Repeat("r", MaxLabelLen+1) },
		"region chars": func(m *Meta) { m.Region = "eu west" },
		"zone chars":   func(m *Meta) { m.Zone = "é" },
		"http scheme":  func(m *Meta) { m.HTTP = "ftp://x" },
		"http path":    func(m *Meta) { m.HTTP = "http://x/whep" },
		"http user":    func(m *Meta) { m.HTTP = "http://u:p@x" },
		"long http":    func(m *Meta) { m.HTTP = "http://" + strings.Repeat("h", MaxAddrLen) },
		"rtsp scheme":  func(m *Meta) { m.RTSP = "http://x:1" },
		"webrtc":       func(m *Meta) { m.WebRTC = "no port" },
		"viewers":      func(m *Meta) { m.Load.Viewers = -1 },
		"cpu":          func(m *Meta) { m.Load.CPU = -0.1 },
	} {
		m := ok
		f(&m)
		if m.Validate() == nil {
			t.Errorf("%s: %+v accepted", name, m)
		}
	}
	if err := ok.Validate(); err != nil {
		t.Error(err)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(*Config){
		"bind":         func(c *Config) { c.Bind = "nope" },
		"bind host":    func(c *Config) { c.Bind = "example.com:7946" },
		"advertise":    func(c *Config) { c.Advertise = "x:y" },
		"join":         func(c *Config) { c.Join = []string{"host:0"} },
		"join empty":   func(c *Config) { c.Join = []string{""} },
		"role":         func(c *Config) { c.Role = "relay" },
		"name":         func(c *Config) { c.Name = "-x" },
		"region":       func(c *Config) { c.Region = strings.Repeat("r", 49) },
		"capacity":     func(c *Config) { c.Capacity = -1 },
		"max_children": func(c *Config) { c.MaxChildren = -1 },
		"profile":      func(c *Config) { c.Profile = "turbo" },
	} {
		c := DefaultConfig()
		f(&c)
		if c.Validate() == nil {
			t.Errorf("%s accepted", name)
		}
	}
	c := DefaultConfig()
	c.Join = []string{"10.0.0.1", "origin.cascade.svc.cluster.local:7946", "[::1]:7946", "origin"}
	c.Advertise = "192.0.2.1:7000"
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
	if k := GossipKey("x"); len(k) != 32 || GossipKey("") != nil || bytes.Equal(k, GossipKey("y")) {
		t.Error("GossipKey")
	}
}

// messageCases are broadcasts and states; they seed FuzzMessage.
var messageCases = [][]byte{
	encodeUpdate(update{owner: "origin", epoch: 1, seq: 2, stream: "live", rungs: []string{"source", "480p"}}),
	encodeUpdate(update{owner: "edge-1", epoch: 1 << 60, seq: 1 << 40, stream: "a.b_c-d", withdrawn: true}),
	encodeState([]ownerState{{owner: "o", epoch: 5, entries: []update{{stream: "x", seq: 1}, {stream: "y", seq: 2, withdrawn: true, rungs: []string{"240p"}}}}}),
	encodeState(nil),
	encodeResync(resync{requester: "edge-1", epoch: 3, since: 7}),
	encodeSnapshot(snapshot{owner: "origin", epoch: 3, dseq: 9, entries: []update{{stream: "a", seq: 9, rungs: []string{"source"}}, {stream: "b", seq: 4, withdrawn: true}}}),
	{kindSnapshot, msgVersion, 1, 'o', 1, 1, 0xff, 0xff, 0x03},
	{kindEntry, msgVersion, 0xff},
	{kindState, msgVersion, 0xff, 0xff, 0xff, 0xff, 0x0f},
	{kindEntry, 2},
}

func TestMessageRoundTrip(t *testing.T) {
	u := update{owner: "origin", epoch: 7, seq: 9, stream: strings.Repeat("s", MaxStreamLen), rungs: make([]string, MaxRungs)}
	for i := range u.rungs {
		u.rungs[i] = strings.Repeat("r", MaxRungLen)
	}
	b := encodeUpdate(u)
	if len(b) > maxEntryBytes {
		t.Fatalf("largest entry is %d bytes", len(b))
	}
	got, err := decodeUpdate(b)
	if err != nil || !reflect.DeepEqual(got, u) {
		t.Fatalf("%v %+v", err, got)
	}
	for name, bad := range map[string]update{
		"stream":     {owner: "o", stream: "../x"},
		"owner":      {owner: "", stream: "x"},
		"rung":       {owner: "o", stream: "x", rungs: []string{"a b"}},
		"many rungs": {owner: "o", stream: "x", rungs: make([]string, MaxRungs+1)},
	} {
		if _, err := decodeUpdate(encodeUpdate(bad)); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	st := []ownerState{{owner: "a", epoch: 1, entries: []update{{stream: "x", seq: 3, rungs: []string{"source"}}}}, {owner: "b", epoch: 2}}
	us, err := decodeState(encodeState(st))
	if err != nil || len(us) != 1 || us[0].owner != "a" || us[0].seq != 3 || us[0].rungs[0] != "source" {
		t.Fatalf("%v %+v", err, us)
	}
}

func TestDirectory(t *testing.T) {
	now := time.Now()
	d := newDirectory("me", 100)
	keep := func(string) bool { return true }
	check := func(want outcome, u update) {
		t.Helper()
		if o, _, _ := d.apply(u, now); o != want {
			t.Fatalf("apply %+v = %v, want %v", u, o, want)
		}
	}
	check(applied, update{owner: "a", epoch: 5, seq: 1, stream: "s"})
	check(duplicate, update{owner: "a", epoch: 5, seq: 1, stream: "s"})
	check(stale, update{owner: "a", epoch: 4, seq: 9, stream: "s", withdrawn: true})
	check(applied, update{owner: "a", epoch: 5, seq: 3, stream: "s", withdrawn: true})
	check(stale, update{owner: "a", epoch: 5, seq: 2, stream: "s"}) // the tombstone holds
	check(applied, update{owner: "a", epoch: 5, seq: 4, stream: "t"})
	// A new run of a: the old entries go.
	check(applied, update{owner: "a", epoch: 6, seq: 1, stream: "u"})
	if c := d.carried(keep)["a"]; len(c) != 1 || c["u"] == nil && len(c) != 1 {
		t.Fatalf("after restart: %v", c)
	}
	// Metadata with a newer epoch also clears.
	d.memberEpoch("a", 7, now)
	if c := d.carried(keep)["a"]; len(c) != 0 {
		t.Fatalf("after metadata epoch: %v", c)
	}
	// Gone: dropped, and late broadcasts refused until it comes back.
	check(applied, update{owner: "b", epoch: 1, seq: 1, stream: "s"})
	d.memberGone("b", 1, now)
	check(refused, update{owner: "b", epoch: 1, seq: 2, stream: "s"})
	d.memberEpoch("b", 1, now)
	if !d.behind("b", 1, 2, 0) {
		t.Error("a rejoined member whose entries were dropped is not behind")
	}
	check(applied, update{owner: "b", epoch: 1, seq: 2, stream: "s"})

	// Claims about me.
	if _, err := d.set("mine", []string{"source"}, false, now); err != nil {
		t.Fatal(err)
	}
	o, fix, _ := d.apply(update{owner: "me", epoch: 100, seq: 50, stream: "mine", withdrawn: true}, now)
	if o != selfFixed || len(fix) != 1 || fix[0].seq <= 50 || fix[0].withdrawn {
		t.Fatalf("forged withdraw: %v %+v", o, fix)
	}
	o, fix, _ = d.apply(update{owner: "me", epoch: 100, seq: 60, stream: "other"}, now)
	if o != selfFixed || len(fix) != 1 || !fix[0].withdrawn || fix[0].seq <= 60 {
		t.Fatalf("forged announce: %v %+v", o, fix)
	}
	o, fix, newEpoch := d.apply(update{owner: "me", epoch: 200, seq: 1, stream: "x"}, now)
	if o != selfFixed || !newEpoch || d.epoch() != 201 || len(fix) != 2 {
		t.Fatalf("forged epoch: %v %v %d %+v", o, newEpoch, d.epoch(), fix)
	}
	check(stale, update{owner: "me", epoch: 100, seq: 1000, stream: "mine", withdrawn: true})

	// Expiry.
	tm := profiles["fast"]()
	d.sweep(now.Add(time.Second), tm, func(n string) bool { return n == "b" })
	if _, ok := d.owners["a"]; !ok {
		t.Fatal("orphan dropped too early")
	}
	d.sweep(now.Add(max(tm.orphanTTL, tm.tombstoneTTL)+time.Second), tm, func(n string) bool { return n == "b" })
	if _, ok := d.owners["a"]; ok {
		t.Error("orphan kept")
	}
	if e := d.owners["me"].streams["other"]; e != nil {
		t.Error("tombstone kept")
	}
	entries, streams := d.counts(keep)
	if entries != 2 || streams != 2 { // b/s and me/mine
		t.Errorf("counts %d %d", entries, streams)
	}
}

func TestSnapshot(t *testing.T) {
	now := time.Now()
	d := newDirectory("me", 1)
	for i, st := range []string{"a", "b", "c"} {
		d.apply(update{owner: "o", epoch: 5, seq: uint64(i + 1), stream: st}, now)
	}
	if !d.behind("o", 5, 7, 0) {
		t.Fatal("not behind o's counter 7")
	}
	// o withdrew b (tombstone expired) and announced d at 7; c at 3 stays.
	o := d.applySnapshot(snapshot{owner: "o", epoch: 5, dseq: 7, entries: []update{
		{stream: "a", seq: 1}, {stream: "c", seq: 3}, {stream: "d", seq: 7, rungs: []string{"source"}}}}, now)
	if o != applied {
		t.Fatal(o)
	}
	got := d.carried(func(string) bool { return true })["o"]
	if len(got) != 3 || got["b"] != nil || got["d"][0] != "source" {
		t.Fatalf("%v", got)
	}
	sum := partSum(d.owners["o"].streams)
	if d.behind("o", 5, 7, sum) {
		t.Error("still behind after the snapshot")
	}
	if o := d.applySnapshot(snapshot{owner: "o", epoch: 4, dseq: 70}, now); o != stale {
		t.Errorf("older run's snapshot: %v", o)
	}
	for _, st := range []string{"x", "y", "z"} {
		d.set(st, nil, false, now)
	}
	d.set("z", nil, true, now)
	if sn := d.snapshot(1, 1); !sn.delta || len(sn.entries) != 2 { // y, and z's tombstone
		t.Errorf("delta: %+v", sn)
	}
	if sn := d.snapshot(1, 0); sn.delta || len(sn.entries) != 3 {
		t.Errorf("whole part: %+v", sn)
	}
	if sn := d.snapshot(0, 2); sn.delta {
		t.Errorf("delta for another run: %+v", sn)
	}
	d.floor = 2
	if sn := d.snapshot(1, 1); sn.delta {
		t.Errorf("delta below an expired tombstone: %+v", sn)
	}
	sn := d.snapshot(1, 0)
	if back, err := decodeSnapshot(encodeSnapshot(sn)); err != nil || back.owner != "me" {
		t.Errorf("%v %+v", err, back)
	}
	if q, err := decodeResync(encodeResync(resync{requester: "edge-7", epoch: 5, since: 9})); err != nil || q != (resync{"edge-7", 5, 9}) {
		t.Errorf("%v %+v", err, q)
	}
	// A delta applies changes and deletes nothing.
	d2 := newDirectory("other", 1)
	d2.apply(update{owner: "me", epoch: 1, seq: 1, stream: "x"}, now)
	d2.applySnapshot(snapshot{owner: "me", epoch: 1, dseq: 3, delta: true, entries: []update{{stream: "y", seq: 2}}}, now)
	if c := d2.carried(func(string) bool { return true })["me"]; len(c) != 2 {
		t.Errorf("after delta: %v", c)
	}
}

func TestDirectoryBounds(t *testing.T) {
	now := time.Now()
	d := newDirectory("me", 1)
	for i := range MaxStreamsPerNode {
		if _, err := d.set("s"+strconv.Itoa(i), nil, false, now); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.set("one-more", nil, false, now); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("err = %v", err)
	}
	for i := range MaxStreamsPerNode {
		d.apply(update{owner: "o", epoch: 1, seq: uint64(i + 1), stream: "s" + strconv.Itoa(i)}, now)
	}
	if o, _, _ := d.apply(update{owner: "o", epoch: 1, seq: 1 << 20, stream: "extra"}, now); o != overLimit {
		t.Errorf("outcome %v", o)
	}
	if n := len(d.state()); n > maxStateBytes {
		t.Errorf("state %d bytes", n)
	}
}
