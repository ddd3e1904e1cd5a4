package digest

import "testing"

// The same numbers are asserted against typha-rs's model::Digest (xxhash-rust) in
// tests/typha_interop.rs (digest_vectors_match_go), so both sides are pinned to one set.
var entryVectors = []struct {
	key, value, hash string
}{
	{"", "", "2c0a8a99dc147d5445c3b49d035665b2"},
	{"/calico/v1/Ready", "true", "a1946ef547d660cac70bb963aad423dc"},
	{"/k", "v", "8102f21853735caf7be520c8e5d5a131"},
	{"/calico/resources/v3/projectcalico.org/nodes/node-1", `{"kind":"Node"}`, "6e8e491769f2a0fa8217430e533392be"},
}

// The four entries' sum wraps past 2^128 and carries between the halves.
const mapDigest = "bd3034bee150dbc90acbd1d7e733bd7d"

func TestEntryVectors(t *testing.T) {
	for _, v := range entryVectors {
		if got := EntryHash(v.key, []byte(v.value)).String(); got != v.hash {
			t.Errorf("EntryHash(%q, %q) = %s, want %s", v.key, v.value, got, v.hash)
		}
	}
}

func TestMapDigestSumsAndRemoves(t *testing.T) {
	m := NewMap()
	for _, v := range entryVectors {
		m.Set(v.key, []byte("placeholder"))
	}
	for _, v := range entryVectors {
		m.Set(v.key, []byte(v.value))
	}
	if got := m.Digest().String(); got != mapDigest {
		t.Fatalf("map digest %s, want %s", got, mapDigest)
	}
	if m.Len() != len(entryVectors) {
		t.Fatalf("len %d", m.Len())
	}
	for _, v := range entryVectors {
		m.Set(v.key, nil)
	}
	if got := m.Digest(); got != (Digest{}) || m.Len() != 0 {
		t.Fatalf("empty map digest %s, len %d", got, m.Len())
	}
}
