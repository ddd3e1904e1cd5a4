// Package syncproto declares the Typha wire messages the way Calico's Felix sees them, so that
// Go's own encoding/gob does the encoding and decoding in the interop suite.
//
// The structs carry the field names and Go kinds of Calico's typha/pkg/syncproto at v3.32.1,
// and are registered under the pre-monorepo names Typha uses on the wire. gob matches struct
// fields by name and sends the bare Go type name (not the package path) in type definitions,
// so bytes produced here are the bytes a Felix produces, and bytes a Felix could decode are
// the bytes that decode here.
package syncproto

import (
	"encoding/gob"
	"time"
)

// RegisteredPrefix is the package path Typha has kept in its gob names since before the
// Calico monorepo; every interface value on the wire names its type with it.
const RegisteredPrefix = "github.com/projectcalico/typha/pkg/syncproto."

// Envelope is the one top-level value on both directions of a connection.
type Envelope struct {
	Message any
}

// SyncerType names the datastore view a client asks for; empty means felix.
type SyncerType string

const (
	SyncerTypeFelix              SyncerType = "felix"
	SyncerTypeBGP                SyncerType = "bgp"
	SyncerTypeTunnelIPAllocation SyncerType = "tunnel-ip-allocation"
	SyncerTypeNodeStatus         SyncerType = "node-status"
)

// CompressionAlgorithm names the compression a decoder restart switches to.
type CompressionAlgorithm string

const CompressionSnappy CompressionAlgorithm = "snappy"

// SyncStatus mirrors libcalico-go's api.SyncStatus (a uint8 on the wire).
type SyncStatus uint8

const (
	WaitForDatastore SyncStatus = 0
	ResyncInProgress SyncStatus = 1
	InSync           SyncStatus = 2
)

// UpdateType mirrors libcalico-go's api.UpdateType (a uint8 on the wire).
type UpdateType uint8

const (
	UpdateTypeKVUnknown UpdateType = 0
	UpdateTypeKVNew     UpdateType = 1
	UpdateTypeKVUpdated UpdateType = 2
	UpdateTypeKVDeleted UpdateType = 3
)

type MsgClientHello struct {
	Hostname                       string
	Info                           string
	Version                        string
	SyncerType                     SyncerType
	SupportsDecoderRestart         bool
	SupportedCompressionAlgorithms []CompressionAlgorithm
	SupportsModernPolicyKeys       bool
	ClientConnID                   uint64
}

type MsgServerHello struct {
	Version                     string
	SyncerType                  SyncerType
	SupportsNodeResourceUpdates bool
	ServerConnID                uint64
}

type MsgDecoderRestart struct {
	Message              string
	CompressionAlgorithm CompressionAlgorithm
}

type MsgACK struct{}

type MsgSyncStatus struct {
	SyncStatus SyncStatus
}

type MsgPing struct {
	Timestamp time.Time
}

type MsgPong struct {
	PingTimestamp time.Time
	PongTimestamp time.Time
}

type MsgKVs struct {
	KVs []SerializedUpdate
}

// SerializedUpdate is one key/value change. Typha never registers it: it only travels as the
// element type of MsgKVs.KVs. A nil Value is a deletion.
type SerializedUpdate struct {
	Key               string
	Value             []byte
	Revision          any
	V3ResourceVersion string
	TTL               time.Duration
	UpdateType        UpdateType
}

func init() {
	gob.RegisterName(RegisteredPrefix+"MsgClientHello", MsgClientHello{})
	gob.RegisterName(RegisteredPrefix+"MsgDecoderRestart", MsgDecoderRestart{})
	gob.RegisterName(RegisteredPrefix+"MsgACK", MsgACK{})
	gob.RegisterName(RegisteredPrefix+"MsgServerHello", MsgServerHello{})
	gob.RegisterName(RegisteredPrefix+"MsgSyncStatus", MsgSyncStatus{})
	gob.RegisterName(RegisteredPrefix+"MsgPing", MsgPing{})
	gob.RegisterName(RegisteredPrefix+"MsgPong", MsgPong{})
	gob.RegisterName(RegisteredPrefix+"MsgKVs", MsgKVs{})
}
