package felix

import (
	"bufio"
	"encoding/gob"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/golang/snappy"

	"typha-rs.dev/interop/digest"
	"typha-rs.dev/interop/syncproto"
)

// A minimal Typha-side peer on Go's gob, following Typha's restart path: ServerHello on the
// plain stream, a restart to snappy, a self-contained snapshot stream that ends in its own
// restart, then a fresh snappy stream for status, deltas and pings.
type peer struct {
	conn net.Conn
	dec  *gob.Decoder
}

func (p *peer) read(t *testing.T) any {
	t.Helper()
	var env syncproto.Envelope
	if err := p.dec.Decode(&env); err != nil {
		t.Errorf("server read: %v", err)
		return nil
	}
	return env.Message
}

func send(t *testing.T, enc *gob.Encoder, w *snappy.Writer, m any) {
	t.Helper()
	if err := enc.Encode(syncproto.Envelope{Message: m}); err != nil {
		t.Errorf("server write: %v", err)
	}
	if w != nil {
		if err := w.Flush(); err != nil {
			t.Errorf("flush: %v", err)
		}
	}
}

func serve(t *testing.T, l net.Listener, restart bool, done chan<- error) {
	conn, err := l.Accept()
	if err != nil {
		done <- err
		return
	}
	defer conn.Close()
	p := &peer{conn: conn, dec: gob.NewDecoder(bufio.NewReader(conn))}
	hello, ok := p.read(t).(syncproto.MsgClientHello)
	if !ok || hello.SyncerType != syncproto.SyncerTypeFelix {
		done <- errors.New("bad hello")
		return
	}
	if hello.SupportsDecoderRestart != restart {
		done <- errors.New("restart flag not as asked")
		return
	}
	plain := gob.NewEncoder(conn)
	send(t, plain, nil, syncproto.MsgServerHello{SyncerType: "felix", SupportsNodeResourceUpdates: true})
	kv := func(k, v string, ut syncproto.UpdateType) syncproto.SerializedUpdate {
		su := syncproto.SerializedUpdate{Key: k, Revision: "1", UpdateType: ut}
		if v != "" {
			su.Value = []byte(v)
		}
		return su
	}
	snapshot := syncproto.MsgKVs{KVs: []syncproto.SerializedUpdate{
		kv("/a", "1", syncproto.UpdateTypeKVNew), kv("/b", "2", syncproto.UpdateTypeKVNew),
	}}
	deltas := syncproto.MsgKVs{KVs: []syncproto.SerializedUpdate{
		kv("/b", "", syncproto.UpdateTypeKVDeleted), kv("/c", "3", syncproto.UpdateTypeKVNew),
	}}
	ping := syncproto.MsgPing{Timestamp: time.Unix(1700000000, 5)}
	if !restart {
		send(t, plain, nil, snapshot)
		send(t, plain, nil, syncproto.MsgSyncStatus{SyncStatus: syncproto.InSync})
		send(t, plain, nil, deltas)
		send(t, plain, nil, ping)
	} else {
		send(t, plain, nil, syncproto.MsgDecoderRestart{CompressionAlgorithm: syncproto.CompressionSnappy})
		if _, ok := p.read(t).(syncproto.MsgACK); !ok {
			done <- errors.New("no first ACK")
			return
		}
		// The shared snapshot: its own snappy stream and gob encoder, ending in a restart.
		sw := snappy.NewBufferedWriter(conn)
		senc := gob.NewEncoder(sw)
		send(t, senc, sw, snapshot)
		send(t, senc, sw, syncproto.MsgDecoderRestart{CompressionAlgorithm: syncproto.CompressionSnappy})
		if _, ok := p.read(t).(syncproto.MsgACK); !ok {
			done <- errors.New("no second ACK")
			return
		}
		lw := snappy.NewBufferedWriter(conn)
		lenc := gob.NewEncoder(lw)
		send(t, lenc, lw, syncproto.MsgSyncStatus{SyncStatus: syncproto.InSync})
		send(t, lenc, lw, deltas)
		send(t, lenc, lw, ping)
	}
	pong, ok := p.read(t).(syncproto.MsgPong)
	if !ok || !pong.PingTimestamp.Equal(ping.Timestamp) {
		done <- errors.New("no pong echoing the ping")
		return
	}
	done <- nil
}

func TestClientFollowsBothPaths(t *testing.T) {
	for _, restart := range []bool{true, false} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go serve(t, l, restart, done)
		c := New(Options{Hostname: "h", NoRestart: !restart, ReadTimeout: 5 * time.Second})
		ended := make(chan error, 1)
		go func() { ended <- c.Run(l.Addr().String()) }()
		if err := <-done; err != nil {
			t.Fatalf("restart=%v: server: %v", restart, err)
		}
		err = <-ended
		if err == nil || errors.Is(err, ErrRefused) {
			t.Fatalf("restart=%v: want a read error after the server closed, got %v", restart, err)
		}
		s := c.Snapshot()
		want := digest.NewMap()
		want.Set("/a", []byte("1"))
		want.Set("/c", []byte("3"))
		if s.Keys != 2 || s.Digest != want.Digest() || !s.InSync || s.Pings != 1 {
			t.Fatalf("restart=%v: stats %+v", restart, s)
		}
		wantRestarts := 0
		if restart {
			wantRestarts = 2
		}
		if s.Restarts != wantRestarts {
			t.Fatalf("restart=%v: %d restarts", restart, s.Restarts)
		}
		l.Close()
	}
}

func TestLegacyPolicyPaths(t *testing.T) {
	for key, want := range map[string]bool{
		"/calico/v1/policy/tier/default/policy/shop%2fknp.default.deny": true,
		"/calico/v1/policy/tier/default/metadata":                       true,
		"/calico/v1/policy/profile/kns.shop/rules":                      true,
		"/calico/v1/host/n1/config/Foo":                                 true,
		"/calico/v1/policy/GlobalNetworkPolicy//p":                      false,
		"/calico/v1/policy/NetworkPolicy/shop/p":                        false,
		"/calico/v1/policy/tier/default/policy/shop/p":                  false,
	} {
		if got := IsLegacyPolicyPath(key); got != want {
			t.Errorf("%s: got %v, want %v", key, got, want)
		}
	}
}

func TestRefusalIsReported(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		conn, err := l.Accept()
		if err == nil {
			// Read the hello, then close without a ServerHello, as Typha does for a legacy client.
			var env syncproto.Envelope
			_ = gob.NewDecoder(conn).Decode(&env)
			conn.Close()
		}
	}()
	err = New(Options{Legacy: true, ReadTimeout: 5 * time.Second}).Run(l.Addr().String())
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("want ErrRefused, got %v", err)
	}
}
