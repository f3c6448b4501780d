package cluster

import (
	"reflect"
	"testing"
	"time"
)

// FuzzMeta: the metadata decoder never panics, and what it accepts
// re-encodes to something that decodes to the same.
func FuzzMeta(f *testing.F) {
	f.Add(encodeMeta(typicalMeta()))
	f.Add(encodeMeta(worstMeta()))
	for _, tc := range metaCases {
		f.Add(tc.b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		mw, err := decodeMeta("node", b)
		if err != nil {
			return
		}
		if err := mw.Validate(); err != nil {
			t.Fatalf("accepted invalid metadata: %v", err)
		}
		enc := encodeMeta(mw)
		if len(enc) > metaMaxSize {
			t.Fatalf("re-encoded to %d bytes", len(enc))
		}
		again, err := decodeMeta("node", enc)
		if err != nil || !reflect.DeepEqual(again, mw) {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, again, mw)
		}
	})
}

// FuzzMessage: broadcasts, snapshots, requests and push/pull states from
// the network never
// panic the decoders or the directory, and accepted ones round-trip.
func FuzzMessage(f *testing.F) {
	for _, b := range messageCases {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d := newDirectory("me", 10)
		now := time.Now()
		if u, err := decodeUpdate(b); err == nil {
			again, err := decodeUpdate(encodeUpdate(u))
			if err != nil || !reflect.DeepEqual(again, u) {
				t.Fatalf("update round trip: %v %+v %+v", err, again, u)
			}
			d.apply(u, now)
		}
		if sn, err := decodeSnapshot(b); err == nil {
			again, err := decodeSnapshot(encodeSnapshot(sn))
			if err != nil || !reflect.DeepEqual(again, sn) {
				t.Fatalf("snapshot round trip: %v %+v %+v", err, again, sn)
			}
			d.applySnapshot(sn, now)
		}
		if q, err := decodeResync(b); err == nil && !ValidNodeName(q.requester) {
			t.Fatalf("accepted requester %q", q.requester)
		}
		if us, err := decodeState(b); err == nil {
			for _, u := range us {
				if !ValidNodeName(u.owner) || !ValidStream(u.stream) || !validRungs(u.rungs) {
					t.Fatalf("accepted %+v", u)
				}
				d.apply(u, now)
			}
			// What we hold re-encodes to a state that decodes.
			if _, err := decodeState(d.state()); err != nil {
				t.Fatalf("own state does not decode: %v", err)
			}
		}
	})
}
