package cluster

// Directory messages. A broadcast (memberlist user message) is one entry:
//
//	byte    kind (1 entry)
//	byte    version (1)
//	str     owner: the node that carries (or stopped carrying) the stream
//	uvarint epoch: the owner's run (see directory.go)
//	uvarint seq: the owner's counter, bumped on every change it makes
//	str     stream
//	byte    flags (bit 0: withdrawn)
//	uvarint rung count, then each rung name
//
// The push/pull state (LocalState) is every entry this node knows,
// grouped by owner:
//
//	byte    kind (2), byte version (1)
//	uvarint owner count
//	  str owner, uvarint epoch, uvarint entry count
//	    uvarint seq, str stream, byte flags, rungs as above
//
// A resync request (kind 3) asks a node for its snapshot: kind, version,
// str requester, uvarint epoch and since (what the requester holds). A
// snapshot (kind 4) is one owner's part, sent by the owner only, to the
// node that asked: the whole part, or a delta of the changes after since:
//
//	byte    kind (4), byte version (1)
//	str     owner, uvarint epoch, uvarint dseq (the owner's last seq)
//	byte    flags (bit 0: delta)
//	uvarint entry count, then entries as in the state

// Bounds on names and sizes of the directory.
const (
	MaxStreamLen      = 128
	MaxRungs          = 16
	MaxRungLen        = 32
	MaxStreamsPerNode = 4096
	maxOwners         = 4096
	// maxEntryBytes bounds one broadcast: the largest valid entry is about
	// 750 bytes, under memberlist's 1400-byte packets.
	maxEntryBytes = 1024
	// maxStateBytes bounds the push/pull state we send and accept
	// (memberlist's own limit is 20 MB).
	maxStateBytes = 16 << 20
)

const (
	kindEntry    = 1
	kindState    = 2
	kindResync   = 3
	kindSnapshot = 4
	msgVersion   = 1
	flagGone     = 1
)

// update is one directory entry as it travels.
type update struct {
	owner     string
	epoch     uint64
	seq       uint64
	stream    string
	withdrawn bool
	rungs     []string
}

func encodeUpdate(u update) []byte {
	w := writer{b: make([]byte, 0, 32+len(u.owner)+len(u.stream)+16*len(u.rungs))}
	w.byte(kindEntry)
	w.byte(msgVersion)
	w.str(u.owner)
	w.uvarint(u.epoch)
	w.uvarint(u.seq)
	encodeEntryBody(&w, u.stream, u.withdrawn, u.rungs)
	return w.b
}

func encodeEntryBody(w *writer, stream string, withdrawn bool, rungs []string) {
	w.str(stream)
	var f byte
	if withdrawn {
		f = flagGone
	}
	w.byte(f)
	w.strs(rungs)
}

// resync is a request for a snapshot: the requester, and what it holds of
// the owner's current run (epoch, and since: its counter for a delta, or 0
// for the whole part).
type resync struct {
	requester string
	epoch     uint64
	since     uint64
}

func encodeResync(r resync) []byte {
	w := writer{b: []byte{kindResync, msgVersion}}
	w.str(r.requester)
	w.uvarint(r.epoch)
	w.uvarint(r.since)
	return w.b
}

func decodeResync(b []byte) (resync, error) {
	if k, err := messageKind(b); err != nil || k != kindResync {
		return resync{}, errKind
	}
	r := reader{b: b[2:]}
	var q resync
	q.requester = r.str(MaxNameLen)
	q.epoch = r.uvarint()
	q.since = r.uvarint()
	if r.err != nil {
		return resync{}, r.err
	}
	if !ValidNodeName(q.requester) {
		return resync{}, errBadName
	}
	return q, nil
}

// snapshot is one owner's part of the directory: complete, or (delta)
// every change after the counter the requester named.
type snapshot struct {
	owner   string
	epoch   uint64
	dseq    uint64
	delta   bool
	entries []update
}

func encodeSnapshot(s snapshot) []byte {
	w := writer{b: make([]byte, 0, 64+40*len(s.entries))}
	w.byte(kindSnapshot)
	w.byte(msgVersion)
	w.str(s.owner)
	w.uvarint(s.epoch)
	w.uvarint(s.dseq)
	var f byte
	if s.delta {
		f = 1
	}
	w.byte(f)
	w.uvarint(uint64(len(s.entries)))
	for _, e := range s.entries {
		w.uvarint(e.seq)
		encodeEntryBody(&w, e.stream, e.withdrawn, e.rungs)
	}
	return w.b
}

func decodeSnapshot(b []byte) (snapshot, error) {
	if len(b) > maxStateBytes {
		return snapshot{}, errOversize
	}
	if k, err := messageKind(b); err != nil || k != kindSnapshot {
		return snapshot{}, errKind
	}
	r := reader{b: b[2:]}
	var s snapshot
	s.owner = r.str(MaxNameLen)
	s.epoch = r.uvarint()
	s.dseq = r.uvarint()
	s.delta = r.byte()&1 != 0
	if r.err == nil && !ValidNodeName(s.owner) {
		return snapshot{}, errBadName
	}
	n := r.count(MaxStreamsPerNode)
	for i := 0; i < n && r.err == nil; i++ {
		u := update{owner: s.owner, epoch: s.epoch, seq: r.uvarint()}
		if err := decodeEntryBody(&r, &u); err != nil {
			return snapshot{}, err
		}
		s.entries = append(s.entries, u)
	}
	if r.err != nil {
		return snapshot{}, r.err
	}
	return s, nil
}

// messageKind checks the header of a user message and returns its kind.
func messageKind(b []byte) (byte, error) {
	if len(b) < 2 {
		return 0, errShort
	}
	switch b[0] {
	case kindEntry, kindState, kindResync, kindSnapshot:
	default:
		return 0, errKind
	}
	if b[1] != msgVersion {
		return 0, errVersion
	}
	return b[0], nil
}

// decodeUpdate parses one entry broadcast.
func decodeUpdate(b []byte) (update, error) {
	if len(b) > maxEntryBytes {
		return update{}, errOversize
	}
	k, err := messageKind(b)
	if err != nil {
		return update{}, err
	}
	if k != kindEntry {
		return update{}, errKind
	}
	r := reader{b: b[2:]}
	var u update
	u.owner = r.str(MaxNameLen)
	u.epoch = r.uvarint()
	u.seq = r.uvarint()
	if r.err == nil && !ValidNodeName(u.owner) {
		return update{}, errBadName
	}
	if err := decodeEntryBody(&r, &u); err != nil {
		return update{}, err
	}
	return u, nil
}

func decodeEntryBody(r *reader, u *update) error {
	u.stream = r.str(MaxStreamLen)
	f := r.byte()
	u.withdrawn = f&flagGone != 0
	n := r.count(MaxRungs)
	if n > 0 {
		u.rungs = make([]string, 0, n)
	}
	for i := 0; i < n && r.err == nil; i++ {
		u.rungs = append(u.rungs, r.str(MaxRungLen))
	}
	if r.err != nil {
		return r.err
	}
	if !ValidStream(u.stream) {
		return errBadName
	}
	if !validRungs(u.rungs) {
		return errBadName
	}
	return nil
}

// validRungs reports whether every rung is a name of at most MaxRungLen
// bytes and there are at most MaxRungs.
func validRungs(rungs []string) bool {
	if len(rungs) > MaxRungs {
		return false
	}
	for _, r := range rungs {
		if !validName(r, MaxRungLen) {
			return false
		}
	}
	return true
}

// ownerState is one owner's part of a push/pull state.
type ownerState struct {
	owner   string
	epoch   uint64
	entries []update // owner and epoch not repeated on the wire
}

func encodeState(owners []ownerState) []byte {
	w := writer{b: make([]byte, 0, 1024)}
	w.byte(kindState)
	w.byte(msgVersion)
	w.uvarint(uint64(len(owners)))
	for _, o := range owners {
		w.str(o.owner)
		w.uvarint(o.epoch)
		w.uvarint(uint64(len(o.entries)))
		for _, e := range o.entries {
			w.uvarint(e.seq)
			encodeEntryBody(&w, e.stream, e.withdrawn, e.rungs)
		}
	}
	return w.b
}

// decodeState parses a push/pull state into updates.
func decodeState(b []byte) ([]update, error) {
	if len(b) > maxStateBytes {
		return nil, errOversize
	}
	k, err := messageKind(b)
	if err != nil {
		return nil, err
	}
	if k != kindState {
		return nil, errKind
	}
	r := reader{b: b[2:]}
	no := r.count(maxOwners)
	var out []update
	for i := 0; i < no && r.err == nil; i++ {
		owner := r.str(MaxNameLen)
		epoch := r.uvarint()
		if r.err == nil && !ValidNodeName(owner) {
			return nil, errBadName
		}
		ne := r.count(MaxStreamsPerNode)
		for j := 0; j < ne && r.err == nil; j++ {
			u := update{owner: owner, epoch: epoch, seq: r.uvarint()}
			if err := decodeEntryBody(&r, &u); err != nil {
				return nil, err
			}
			out = append(out, u)
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return out, nil
}
