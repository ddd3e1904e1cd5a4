// Package digest computes typha-rs's order-independent map digest (src/model/digest.rs) so a
// Go client's map can be compared with the daemon's /digest endpoint.
//
// Each entry hashes to XXH3-128 over (len(key) as a little-endian u64, key, value); the map's
// digest is the sum of its entries' hashes modulo 2^128, printed as 32 lowercase hex digits of
// the 128-bit number (high half first).
package digest

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/zeebo/xxh3"
)

// Digest is a 128-bit sum; Hi holds the upper 64 bits.
type Digest struct {
	Hi, Lo uint64
}

// EntryHash is the hash of one key/value entry.
func EntryHash(key string, value []byte) Digest {
	h := xxh3.New()
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(key)))
	_, _ = h.Write(n[:])
	_, _ = h.WriteString(key)
	_, _ = h.Write(value)
	s := h.Sum128()
	return Digest{Hi: s.Hi, Lo: s.Lo}
}

func (d *Digest) plus(e Digest) {
	var carry uint64
	d.Lo, carry = bits.Add64(d.Lo, e.Lo, 0)
	d.Hi, _ = bits.Add64(d.Hi, e.Hi, carry)
}

func (d *Digest) minus(e Digest) {
	var borrow uint64
	d.Lo, borrow = bits.Sub64(d.Lo, e.Lo, 0)
	d.Hi, _ = bits.Sub64(d.Hi, e.Hi, borrow)
}

// Add accounts for an entry entering the map.
func (d *Digest) Add(key string, value []byte) { d.plus(EntryHash(key, value)) }

// Remove accounts for an entry leaving the map.
func (d *Digest) Remove(key string, value []byte) { d.minus(EntryHash(key, value)) }

// String is the 32-digit hex form typha-rs prints.
func (d Digest) String() string { return fmt.Sprintf("%016x%016x", d.Hi, d.Lo) }

// Map is a key -> value map that keeps its digest up to date.
type Map struct {
	entries map[string][]byte
	digest  Digest
}

func NewMap() *Map { return &Map{entries: make(map[string][]byte)} }

// Set stores value under key; a nil value deletes the key (a deletion of an unknown key is a
// no-op, as in Felix).
func (m *Map) Set(key string, value []byte) {
	if old, ok := m.entries[key]; ok {
		m.digest.Remove(key, old)
		delete(m.entries, key)
	}
	if value != nil {
		m.entries[key] = value
		m.digest.Add(key, value)
	}
}

func (m *Map) Len() int { return len(m.entries) }

func (m *Map) Digest() Digest { return m.digest }

func (m *Map) Get(key string) ([]byte, bool) {
	v, ok := m.entries[key]
	return v, ok
}

// Each calls f with every key, in no particular order.
func (m *Map) Each(f func(key string)) {
	for k := range m.entries {
		f(k)
	}
}
