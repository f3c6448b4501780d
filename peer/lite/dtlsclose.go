package lite

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"sync"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/crypto/ciphersuite"
	"github.com/pion/dtls/v3/pkg/crypto/prf"
	"github.com/pion/dtls/v3/pkg/protocol"
	"github.com/pion/dtls/v3/pkg/protocol/alert"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
)

// Once its handshake is over, a viewer's DTLS connection carries nothing
// but, at the very end, a close_notify alert one way or the other (there
// is no data channel). pion's connection would sit there for the viewer's
// whole life with three goroutines and about 20 KiB, so Cascade lets it go
// as soon as the viewer has shown it completed the handshake (its first
// SRTCP: until then our last flight may need resending), and keeps only
// what the close_notify needs: the epoch-1 record keys. They are derived
// as the handshake derived them (RFC 5246 section 6.3), from the master
// secret pion writes to its key log and the two hello randoms, with pion's
// own PRF and record cipher. Only the one cipher suite every WebRTC
// endpoint must have (RFC 8827 section 6.5) is offered, so there is one
// derivation to get right. Where anything is missing the connection is
// simply kept.

// dtlsSuite is the one cipher suite offered.
const dtlsSuite = dtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256

// AES-128-GCM's key and implicit nonce lengths (RFC 5288).
const (
	gcmKeyLen = 16
	gcmIVLen  = 4
)

// closeSeq is the sequence number of our close_notify: far above what the
// handshake used in epoch 1 (its Finished and any resends), which the
// receiver's replay window then accepts as new.
const closeSeq = 1 << 20

// keyLog takes pion's key log: "CLIENT_RANDOM <client random> <master
// secret>" (NSS key log format), written once during the handshake.
type keyLog struct {
	mu           sync.Mutex
	clientRandom []byte
	master       []byte
}

func (k *keyLog) Write(p []byte) (int, error) {
	f := bytes.Fields(p)
	if len(f) == 3 && string(f[0]) == "CLIENT_RANDOM" {
		cr, err1 := hex.DecodeString(string(f[1]))
		ms, err2 := hex.DecodeString(string(f[2]))
		if err1 == nil && err2 == nil {
			k.mu.Lock()
			k.clientRandom, k.master = cr, ms
			k.mu.Unlock()
		}
	}
	return len(p), nil
}

// recordKeys are what is kept of a DTLS connection after teardown.
type recordKeys struct {
	gcm *ciphersuite.GCM
	mu  sync.Mutex // the sequence number is taken once, by Close
	seq uint64
}

var errNoKeys = errors.New("lite: dtls record keys unavailable")

// deriveKeys makes the server's record keys from the key log and the
// server random our ServerHello carried.
func deriveKeys(k *keyLog, serverRandom []byte) (*recordKeys, error) {
	k.mu.Lock()
	cr, ms := k.clientRandom, k.master
	k.mu.Unlock()
	if len(cr) != handshake.RandomLength || len(serverRandom) != handshake.RandomLength || len(ms) == 0 {
		return nil, errNoKeys
	}
	keys, err := prf.GenerateEncryptionKeys(ms, cr, serverRandom, 0, gcmKeyLen, gcmIVLen, sha256.New)
	if err != nil {
		return nil, err
	}
	g, err := ciphersuite.NewGCM(keys.ServerWriteKey, keys.ServerWriteIV, keys.ClientWriteKey, keys.ClientWriteIV)
	if err != nil {
		return nil, err
	}
	return &recordKeys{gcm: g, seq: closeSeq}, nil
}

// closeNotify is our close_notify alert, encrypted.
func (r *recordKeys) closeNotify() ([]byte, error) {
	r.mu.Lock()
	seq := r.seq
	r.seq++
	r.mu.Unlock()
	rec := &recordlayer.RecordLayer{
		Header:  recordlayer.Header{ContentType: protocol.ContentTypeAlert, Version: protocol.Version1_2, Epoch: 1, SequenceNumber: seq},
		Content: &alert.Alert{Level: alert.Warning, Description: alert.CloseNotify},
	}
	raw, err := rec.Marshal()
	if err != nil {
		return nil, err
	}
	return r.gcm.Encrypt(rec, raw)
}

// closes reports whether a datagram from the viewer holds an authentic
// alert that ends the connection: close_notify, or any fatal one. Anything
// else (a resent handshake record, garbage) is ignored.
func (r *recordKeys) closes(b []byte) bool {
	recs, err := recordlayer.UnpackDatagram(b)
	if err != nil {
		return false
	}
	for _, rec := range recs {
		var h recordlayer.Header
		if h.Unmarshal(rec) != nil || h.ContentType != protocol.ContentTypeAlert || h.Epoch != 1 {
			continue
		}
		plain, err := r.gcm.Decrypt(h, rec)
		if err != nil || len(plain) < recordlayer.FixedHeaderSize {
			continue
		}
		var a alert.Alert
		if a.Unmarshal(plain[recordlayer.FixedHeaderSize:]) != nil {
			continue
		}
		if a.Description == alert.CloseNotify || a.Level == alert.Fatal {
			return true
		}
	}
	return false
}
