package syncproto

import (
	"fmt"
	"time"
)

// The JSON view of a decoded message. The Rust tests compare it field by field with what the
// Rust codec encoded or decoded, so it spells out every field, zero or not, and keeps the
// distinctions gob keeps: a nil Value (deletion) is null, and Revision records its dynamic type.

type TimeView struct {
	RFC3339   string `json:"rfc3339"`
	UnixNanos int64  `json:"unix_nanos"`
	// Offset of the time's zone east of UTC, in seconds.
	ZoneOffsetSecs int  `json:"zone_offset_secs"`
	IsZero         bool `json:"is_zero"`
}

func viewTime(t time.Time) TimeView {
	_, off := t.Zone()
	v := TimeView{RFC3339: t.Format(time.RFC3339Nano), ZoneOffsetSecs: off, IsZero: t.IsZero()}
	if !t.IsZero() {
		v.UnixNanos = t.UnixNano()
	}
	return v
}

type KVView struct {
	Key string `json:"key"`
	// The value as text (Typha values are JSON or plain text); null for a deletion.
	Value *string `json:"value"`
	// The Revision interface's dynamic type ("string" for everything Typha sends; "nil" when
	// the interface was empty) and its value formatted as Felix's client does (%v).
	RevisionType      string     `json:"revision_type"`
	Revision          string     `json:"revision"`
	V3ResourceVersion string     `json:"v3_resource_version"`
	TTLNanos          int64      `json:"ttl_ns"`
	UpdateType        UpdateType `json:"update_type"`
}

type MessageView struct {
	Type string `json:"type"`

	// MsgClientHello
	Hostname                       *string   `json:"hostname,omitempty"`
	Info                           *string   `json:"info,omitempty"`
	Version                        *string   `json:"version,omitempty"`
	SyncerType                     *string   `json:"syncer_type,omitempty"`
	SupportsDecoderRestart         *bool     `json:"supports_decoder_restart,omitempty"`
	SupportedCompressionAlgorithms *[]string `json:"supported_compression_algorithms,omitempty"`
	SupportsModernPolicyKeys       *bool     `json:"supports_modern_policy_keys,omitempty"`
	ClientConnID                   *uint64   `json:"client_conn_id,omitempty"`

	// MsgServerHello (Version and SyncerType above)
	SupportsNodeResourceUpdates *bool   `json:"supports_node_resource_updates,omitempty"`
	ServerConnID                *uint64 `json:"server_conn_id,omitempty"`

	// MsgDecoderRestart
	Message              *string `json:"message,omitempty"`
	CompressionAlgorithm *string `json:"compression_algorithm,omitempty"`

	// MsgSyncStatus
	SyncStatus *SyncStatus `json:"sync_status,omitempty"`

	// MsgPing, MsgPong
	Timestamp     *TimeView `json:"timestamp,omitempty"`
	PingTimestamp *TimeView `json:"ping_timestamp,omitempty"`
	PongTimestamp *TimeView `json:"pong_timestamp,omitempty"`

	// MsgKVs
	KVs *[]KVView `json:"kvs,omitempty"`
}

func ptr[T any](v T) *T { return &v }

// View turns a decoded Envelope.Message into its JSON view.
func View(msg any) MessageView {
	switch m := msg.(type) {
	case MsgClientHello:
		algs := make([]string, 0, len(m.SupportedCompressionAlgorithms))
		for _, a := range m.SupportedCompressionAlgorithms {
			algs = append(algs, string(a))
		}
		return MessageView{
			Type:                           "MsgClientHello",
			Hostname:                       ptr(m.Hostname),
			Info:                           ptr(m.Info),
			Version:                        ptr(m.Version),
			SyncerType:                     ptr(string(m.SyncerType)),
			SupportsDecoderRestart:         ptr(m.SupportsDecoderRestart),
			SupportedCompressionAlgorithms: &algs,
			SupportsModernPolicyKeys:       ptr(m.SupportsModernPolicyKeys),
			ClientConnID:                   ptr(m.ClientConnID),
		}
	case MsgServerHello:
		return MessageView{
			Type:                        "MsgServerHello",
			Version:                     ptr(m.Version),
			SyncerType:                  ptr(string(m.SyncerType)),
			SupportsNodeResourceUpdates: ptr(m.SupportsNodeResourceUpdates),
			ServerConnID:                ptr(m.ServerConnID),
		}
	case MsgDecoderRestart:
		return MessageView{
			Type:                 "MsgDecoderRestart",
			Message:              ptr(m.Message),
			CompressionAlgorithm: ptr(string(m.CompressionAlgorithm)),
		}
	case MsgACK:
		return MessageView{Type: "MsgACK"}
	case MsgSyncStatus:
		return MessageView{Type: "MsgSyncStatus", SyncStatus: ptr(m.SyncStatus)}
	case MsgPing:
		return MessageView{Type: "MsgPing", Timestamp: ptr(viewTime(m.Timestamp))}
	case MsgPong:
		return MessageView{
			Type:          "MsgPong",
			PingTimestamp: ptr(viewTime(m.PingTimestamp)),
			PongTimestamp: ptr(viewTime(m.PongTimestamp)),
		}
	case MsgKVs:
		kvs := make([]KVView, 0, len(m.KVs))
		for _, kv := range m.KVs {
			kvs = append(kvs, ViewKV(kv))
		}
		return MessageView{Type: "MsgKVs", KVs: &kvs}
	default:
		return MessageView{Type: fmt.Sprintf("unexpected %T", msg)}
	}
}

// ViewKV turns one SerializedUpdate into its JSON view.
func ViewKV(kv SerializedUpdate) KVView {
	v := KVView{
		Key:               kv.Key,
		RevisionType:      "nil",
		V3ResourceVersion: kv.V3ResourceVersion,
		TTLNanos:          int64(kv.TTL),
		UpdateType:        kv.UpdateType,
	}
	if kv.Value != nil {
		v.Value = ptr(string(kv.Value))
	}
	if kv.Revision != nil {
		v.RevisionType = fmt.Sprintf("%T", kv.Revision)
		v.Revision = fmt.Sprint(kv.Revision)
	}
	return v
}
