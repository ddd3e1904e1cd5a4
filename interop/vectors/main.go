// vectors writes Go-produced Typha wire bytes into a directory (the repository keeps them in
// tests/fixtures/typha-gob/), so the Rust codec is checked against Go's encoding/gob itself.
//
// Each single-message vector is one Envelope written by a fresh gob.Encoder (type definitions
// first, then the value), exactly what the first message of a stream looks like. The stream
// vectors put several messages through one Encoder, so later messages reuse the type ids the
// first ones defined. manifest.json lists every file with the JSON view (package syncproto) of
// the messages it holds, in order; the Rust test compares its decoding with that view.
//
// The output is deterministic: fixed timestamps, fixed connection ids.
package main

import (
	"bytes"
	"encoding/gob"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/golang/snappy"

	"typha-rs.dev/interop/syncproto"
)

type vector struct {
	File        string                  `json:"file"`
	Description string                  `json:"description"`
	Framing     string                  `json:"framing"`
	Messages    []syncproto.MessageView `json:"messages"`
	msgs        []any
}

var (
	pingTime = time.Date(2026, 6, 24, 18, 32, 35, 123456789, time.UTC)
	pongTime = time.Date(2026, 6, 24, 18, 32, 35, 987654321, time.UTC)
	// A zone whose offset has seconds makes MarshalBinary use its 16-byte form.
	oddZone  = time.FixedZone("odd", 5*3600+30*60+15)
	zoneTime = time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("ist", 5*3600+30*60))
)

func felixHello() syncproto.MsgClientHello {
	return syncproto.MsgClientHello{
		Hostname:                       "node-1.example",
		Info:                           "Revision: 0ca9d1b93644; Build date: 2026-06-24",
		Version:                        "v3.32.1",
		SyncerType:                     syncproto.SyncerTypeFelix,
		SupportsDecoderRestart:         true,
		SupportedCompressionAlgorithms: []syncproto.CompressionAlgorithm{syncproto.CompressionSnappy},
		SupportsModernPolicyKeys:       true,
		ClientConnID:                   0x9a3b_c4d5_0000_0001,
	}
}

func sampleKVs() syncproto.MsgKVs {
	return syncproto.MsgKVs{KVs: []syncproto.SerializedUpdate{
		{
			Key:        "/calico/v1/host/node-1/config/IpInIpTunnelAddr",
			Value:      []byte("10.0.0.1"),
			Revision:   "1042",
			UpdateType: syncproto.UpdateTypeKVNew,
		},
		{
			Key:               "/calico/resources/v3/projectcalico.org/nodes/node-1",
			Value:             []byte(`{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"node-1"}}`),
			Revision:          "1043",
			V3ResourceVersion: "1043",
			UpdateType:        syncproto.UpdateTypeKVUpdated,
		},
		{
			Key:        "/calico/v1/host/node-2/workload/k8s/default%2fpod-7/endpoint/eth0",
			Revision:   "1044",
			UpdateType: syncproto.UpdateTypeKVDeleted,
		},
		{
			Key:        "/calico/v1/Ready",
			Value:      []byte("true"),
			Revision:   "",
			TTL:        90 * time.Second,
			UpdateType: syncproto.UpdateTypeKVNew,
		},
		{
			Key:        "/calico/v1/policy/tier/default/metadata",
			Value:      []byte(`{"order":1000000}`),
			UpdateType: syncproto.UpdateTypeKVNew,
		},
	}}
}

func vectors() []vector {
	legacyHello := felixHello()
	legacyHello.SupportsDecoderRestart = false
	legacyHello.SupportedCompressionAlgorithms = nil
	legacyHello.SupportsModernPolicyKeys = false
	legacyHello.Version = "v3.31.0"
	bgpHello := syncproto.MsgClientHello{Hostname: "node-2", SyncerType: syncproto.SyncerTypeBGP, ClientConnID: 7}
	serverHello := syncproto.MsgServerHello{
		Version: "v3.32.1", SyncerType: syncproto.SyncerTypeFelix,
		SupportsNodeResourceUpdates: true, ServerConnID: 0x51ab_0000_0000_0002,
	}
	restartSnappy := syncproto.MsgDecoderRestart{Message: "switching to snappy", CompressionAlgorithm: syncproto.CompressionSnappy}
	restartPlain := syncproto.MsgDecoderRestart{Message: "end of snapshot"}
	ping := syncproto.MsgPing{Timestamp: pingTime}
	pong := syncproto.MsgPong{PingTimestamp: pingTime}
	pongBoth := syncproto.MsgPong{PingTimestamp: pingTime, PongTimestamp: pongTime}
	one := func(file, desc string, m any) vector {
		return vector{File: file, Description: desc, Framing: "gob", msgs: []any{m}}
	}
	return []vector{
		one("client_hello_felix.bin", "ClientHello as Felix v3.32 sends it", felixHello()),
		one("client_hello_legacy.bin", "ClientHello of a Felix without decoder restart or modern policy keys", legacyHello),
		one("client_hello_bgp.bin", "ClientHello with only some fields set (bgp syncer)", bgpHello),
		one("client_hello_empty.bin", "ClientHello with every field zero (empty syncer type means felix)", syncproto.MsgClientHello{}),
		one("server_hello.bin", "ServerHello", serverHello),
		one("decoder_restart_snappy.bin", "DecoderRestart naming snappy", restartSnappy),
		one("decoder_restart_plain.bin", "DecoderRestart with no compression", restartPlain),
		one("ack.bin", "ACK (an empty struct)", syncproto.MsgACK{}),
		one("sync_status_in_sync.bin", "SyncStatus InSync", syncproto.MsgSyncStatus{SyncStatus: syncproto.InSync}),
		one("sync_status_resync.bin", "SyncStatus ResyncInProgress", syncproto.MsgSyncStatus{SyncStatus: syncproto.ResyncInProgress}),
		one("sync_status_wait.bin", "SyncStatus WaitForDatastore (zero: the struct is empty)", syncproto.MsgSyncStatus{}),
		one("ping.bin", "Ping with a UTC timestamp", ping),
		one("ping_zone.bin", "Ping with a timestamp in a +05:30 zone", syncproto.MsgPing{Timestamp: zoneTime}),
		one("ping_zone_seconds.bin", "Ping whose zone offset has seconds (16-byte time form)",
			syncproto.MsgPing{Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 6, oddZone)}),
		one("pong.bin", "Pong as Felix sends it: PingTimestamp echoed, PongTimestamp zero", pong),
		one("pong_both.bin", "Pong with both timestamps", pongBoth),
		one("kvs.bin", "KVs: new, updated (v3, V3ResourceVersion), deleted (nil value), TTL, empty and absent revision", sampleKVs()),
		one("kvs_empty.bin", "KVs with no updates", syncproto.MsgKVs{}),
		{
			File: "stream_client.bin", Framing: "gob",
			Description: "What Felix writes on one encoder: hello, ACK, pong, ACK, pong",
			msgs:        []any{felixHello(), syncproto.MsgACK{}, pong, syncproto.MsgACK{}, pongBoth},
		},
		{
			File: "stream_server_plain.bin", Framing: "gob",
			Description: "A streamed-snapshot server stream on one encoder: hello, KVs, status, ping, KVs",
			msgs: []any{serverHello, sampleKVs(), syncproto.MsgSyncStatus{SyncStatus: syncproto.InSync}, ping,
				syncproto.MsgKVs{KVs: sampleKVs().KVs[1:3]}},
		},
		{
			File: "stream_server_snappy.bin", Framing: "snappy",
			Description: "A snappy-framed server stream on one encoder, flushed after each message: KVs, status, ping, KVs",
			msgs: []any{sampleKVs(), syncproto.MsgSyncStatus{SyncStatus: syncproto.InSync}, ping,
				syncproto.MsgKVs{KVs: sampleKVs().KVs[:1]}},
		},
	}
}

func encode(v vector) ([]byte, error) {
	var buf bytes.Buffer
	if v.Framing == "snappy" {
		w := snappy.NewBufferedWriter(&buf)
		enc := gob.NewEncoder(w)
		for _, m := range v.msgs {
			if err := enc.Encode(syncproto.Envelope{Message: m}); err != nil {
				return nil, err
			}
			// Typha flushes the snappy writer after every message.
			if err := w.Flush(); err != nil {
				return nil, err
			}
		}
		return buf.Bytes(), w.Close()
	}
	enc := gob.NewEncoder(&buf)
	for _, m := range v.msgs {
		if err := enc.Encode(syncproto.Envelope{Message: m}); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

func main() {
	out := flag.String("out", "tests/fixtures/typha-gob", "directory to write the vectors into")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	vs := vectors()
	for i := range vs {
		b, err := encode(vs[i])
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", vs[i].File, err)
			os.Exit(1)
		}
		for _, m := range vs[i].msgs {
			vs[i].Messages = append(vs[i].Messages, syncproto.View(m))
		}
		if err := os.WriteFile(filepath.Join(*out, vs[i].File), b, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	m, err := json.MarshalIndent(vs, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := os.WriteFile(filepath.Join(*out, "manifest.json"), append(m, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("wrote %d vectors and manifest.json to %s\n", len(vs), *out)
}
