package au

import (
	"bytes"
	"testing"
)

// The codec-independent rules: a gap in sequence numbers or a unit that
// ends without its marker damages the unit, a fragment left open damages
// it, and the size bound holds whatever is added.
func TestBuilder(t *testing.T) {
	var b Builder
	b.Next(10, 100)
	b.StartNAL([]byte{0x65, 1, 2})
	b.Next(11, 100)
	b.StartNAL([]byte{0x41, 3})
	u := b.Finish()
	want := []byte{0, 0, 0, 1, 0x65, 1, 2, 0, 0, 0, 1, 0x41, 3}
	if !bytes.Equal(u.Data, want) || u.Damaged || u.Timestamp != 100 {
		t.Fatalf("whole unit: %+v", u)
	}

	b.Next(13, 200) // 12 was lost
	b.StartNAL([]byte{0x41})
	if u := b.Finish(); !u.Damaged {
		t.Error("a sequence gap did not damage the unit")
	}

	b.Next(14, 300)
	b.StartNAL([]byte{0x41})
	b.Next(15, 400) // 300's marker packet was lost
	b.StartNAL([]byte{0x41, 9})
	if u := b.Finish(); !u.Damaged || u.Timestamp != 400 || !bytes.Equal(u.Data, []byte{0, 0, 0, 1, 0x41, 9}) {
		t.Errorf("after a lost marker: %+v, want only 400's data, damaged", u)
	}

	b.Next(16, 500)
	b.StartNAL([]byte{0x5c})
	b.InFU = true
	if u := b.Finish(); !u.Damaged {
		t.Error("an open fragment did not damage the unit")
	}

	b.Max = 16
	b.Next(17, 600)
	if !b.StartNAL(make([]byte, 8)) || b.StartNAL(make([]byte, 8)) {
		t.Error("the size bound did not refuse the second NAL unit")
	}
	b.InFU = true
	if b.Continue(make([]byte, 8)) || b.InFU {
		t.Error("the size bound did not refuse the fragment and close it")
	}
	if u := b.Finish(); !u.Damaged || len(u.Data) > 16 {
		t.Errorf("bounded unit: %d bytes, damaged %v", len(u.Data), u.Damaged)
	}
}
