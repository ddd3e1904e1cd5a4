// Package felix plays Felix's side of one Typha connection with Go's encoding/gob and
// github.com/golang/snappy, following the steps of Calico's typha/pkg/syncclient (v3.32.1):
// hello on a plain gob stream, ServerHello checks, then every server message decoded with Go's
// decoder; a decoder restart swaps in a fresh decoder (over a fresh snappy reader when the
// server names snappy) and is ACKed; every ping gets a pong echoing its timestamp.
//
// Unlike Felix it never reconnects and never skips anything: any decode error, refusal or
// unexpected message ends the connection with an error, because the suite exists to catch them.
package felix

import (
	"bufio"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/golang/snappy"

	"typha-rs.dev/interop/digest"
	"typha-rs.dev/interop/syncproto"
)

// Options are the hello's fields and the client's behaviour.
type Options struct {
	Hostname   string
	Version    string
	Info       string
	SyncerType syncproto.SyncerType
	// NoRestart clears SupportsDecoderRestart (and so the compression list): the server must
	// stream the snapshot on the plain stream.
	NoRestart bool
	// Legacy hellos as a Felix from before v3.32 would: no SupportsModernPolicyKeys. Such a
	// client must then receive every policy key in the v3.31 form; any other policy key ends
	// the connection with an error.
	Legacy       bool
	ClientConnID uint64
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
}

// Stats are what the connection has seen so far.
type Stats struct {
	ServerHello   *syncproto.MsgServerHello
	Restarts      int
	Compression   []string
	Pings         int
	KVMessages    int
	Updates       int
	ByType        [4]int
	Statuses      []syncproto.SyncStatus
	InSync        bool
	InSyncAt      time.Time
	Keys          int
	Digest        digest.Digest
	Messages      int
	LastMessageAt time.Time
}

// Client is one connection's state. Stats may be read from other goroutines via Snapshot.
type Client struct {
	opts Options
	conn net.Conn
	r    *bufio.Reader
	enc  *gob.Encoder
	dec  *gob.Decoder

	mu    sync.Mutex
	kv    *digest.Map
	stats Stats
	// OnInSync runs (once) on the decoding goroutine when the first InSync status arrives.
	OnInSync func(*Client)
}

// ErrRefused marks a connection the server ended, or answered wrongly, before its ServerHello.
var ErrRefused = errors.New("handshake refused")

func New(opts Options) *Client {
	if opts.SyncerType == "" {
		opts.SyncerType = syncproto.SyncerTypeFelix
	}
	if opts.ReadTimeout == 0 {
		opts.ReadTimeout = 30 * time.Second
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	return &Client{opts: opts, kv: digest.NewMap()}
}

// Snapshot copies the stats under the lock.
func (c *Client) Snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Statuses = append([]syncproto.SyncStatus(nil), c.stats.Statuses...)
	s.Compression = append([]string(nil), c.stats.Compression...)
	s.Keys = c.kv.Len()
	s.Digest = c.kv.Digest()
	return s
}

// CountPrefixes counts the keys under each prefix.
func (c *Client) CountPrefixes(prefixes []string) map[string]int {
	counts := make(map[string]int, len(prefixes))
	if len(prefixes) == 0 {
		return counts
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range prefixes {
		counts[p] = 0
	}
	c.kv.Each(func(key string) {
		for _, p := range prefixes {
			if strings.HasPrefix(key, p) {
				counts[p]++
			}
		}
	})
	return counts
}

// Close ends the connection (Run then returns the read error, which the caller asked for).
func (c *Client) Close() {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		_ = conn.Close()
	}
}

// Run dials addr and serves the connection until it ends. The error says why; ErrRefused
// wraps every failure before the handshake completed.
func (c *Client) Run(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	c.mu.Lock()
	c.conn = conn
	c.mu.Unlock()
	defer conn.Close()
	c.r = bufio.NewReaderSize(conn, 64*1024)
	c.enc = gob.NewEncoder(conn)
	c.dec = gob.NewDecoder(c.r)

	restart := !c.opts.NoRestart
	var algs []syncproto.CompressionAlgorithm
	if restart {
		algs = []syncproto.CompressionAlgorithm{syncproto.CompressionSnappy}
	}
	hello := syncproto.MsgClientHello{
		Hostname:                       c.opts.Hostname,
		Info:                           c.opts.Info,
		Version:                        c.opts.Version,
		SyncerType:                     c.opts.SyncerType,
		SupportsDecoderRestart:         restart,
		SupportedCompressionAlgorithms: algs,
		SupportsModernPolicyKeys:       !c.opts.Legacy,
		ClientConnID:                   c.opts.ClientConnID,
	}
	if err := c.send(hello); err != nil {
		return fmt.Errorf("%w: sending hello: %v", ErrRefused, err)
	}
	first, err := c.read()
	if err != nil {
		return fmt.Errorf("%w: waiting for ServerHello: %v", ErrRefused, err)
	}
	sh, ok := first.(syncproto.MsgServerHello)
	if !ok {
		return fmt.Errorf("%w: first message is %T, not MsgServerHello", ErrRefused, first)
	}
	if !sh.SupportsNodeResourceUpdates {
		return fmt.Errorf("%w: ServerHello without SupportsNodeResourceUpdates", ErrRefused)
	}
	serverType := sh.SyncerType
	if serverType == "" {
		serverType = syncproto.SyncerTypeFelix
	}
	if serverType != c.opts.SyncerType {
		return fmt.Errorf("%w: asked for syncer %q, server answered %q", ErrRefused, c.opts.SyncerType, serverType)
	}
	c.mu.Lock()
	c.stats.ServerHello = &sh
	c.mu.Unlock()

	for {
		msg, err := c.read()
		if err != nil {
			return fmt.Errorf("reading from server: %w", err)
		}
		switch m := msg.(type) {
		case syncproto.MsgSyncStatus:
			c.onStatus(m.SyncStatus)
		case syncproto.MsgPing:
			c.mu.Lock()
			c.stats.Pings++
			c.mu.Unlock()
			if err := c.send(syncproto.MsgPong{PingTimestamp: m.Timestamp}); err != nil {
				return fmt.Errorf("sending pong: %w", err)
			}
		case syncproto.MsgKVs:
			if err := c.apply(m); err != nil {
				return err
			}
		case syncproto.MsgDecoderRestart:
			if !restart {
				return fmt.Errorf("server sent MsgDecoderRestart to a client without restart support")
			}
			if err := c.restartDecoder(m); err != nil {
				return err
			}
		case syncproto.MsgServerHello:
			return fmt.Errorf("unexpected second MsgServerHello")
		default:
			return fmt.Errorf("unexpected message %T from server", msg)
		}
	}
}

func (c *Client) restartDecoder(m syncproto.MsgDecoderRestart) error {
	switch m.CompressionAlgorithm {
	case syncproto.CompressionSnappy:
		c.dec = gob.NewDecoder(snappy.NewReader(c.r))
	case "":
		c.dec = gob.NewDecoder(c.r)
	default:
		return fmt.Errorf("decoder restart names unknown compression %q", m.CompressionAlgorithm)
	}
	c.mu.Lock()
	c.stats.Restarts++
	c.stats.Compression = append(c.stats.Compression, string(m.CompressionAlgorithm))
	c.mu.Unlock()
	if err := c.send(syncproto.MsgACK{}); err != nil {
		return fmt.Errorf("sending ACK: %w", err)
	}
	return nil
}

func (c *Client) onStatus(s syncproto.SyncStatus) {
	c.mu.Lock()
	c.stats.Statuses = append(c.stats.Statuses, s)
	first := s == syncproto.InSync && !c.stats.InSync
	if first {
		c.stats.InSync = true
		c.stats.InSyncAt = time.Now()
	}
	c.mu.Unlock()
	if first && c.OnInSync != nil {
		c.OnInSync(c)
	}
}

func (c *Client) apply(m syncproto.MsgKVs) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.KVMessages++
	for _, kv := range m.KVs {
		if kv.Key == "" {
			return fmt.Errorf("update with an empty key")
		}
		if kv.UpdateType == syncproto.UpdateTypeKVUnknown || kv.UpdateType > syncproto.UpdateTypeKVDeleted {
			return fmt.Errorf("update of %q has UpdateType %d (Typha sends New, Updated or Deleted)", kv.Key, kv.UpdateType)
		}
		// Typha may send a nil value with New/Updated (a value that failed validation goes on
		// as a deletion), but never a value with Deleted.
		if kv.Value != nil && kv.UpdateType == syncproto.UpdateTypeKVDeleted {
			return fmt.Errorf("update of %q: UpdateType Deleted with a value", kv.Key)
		}
		if kv.Revision != nil {
			if _, ok := kv.Revision.(string); !ok {
				return fmt.Errorf("update of %q: Revision holds %T, Typha sends a string", kv.Key, kv.Revision)
			}
		}
		if c.opts.Legacy && !IsLegacyPolicyPath(kv.Key) {
			return fmt.Errorf("key %q sent to a client without SupportsModernPolicyKeys is not in the v3.31 form", kv.Key)
		}
		c.stats.Updates++
		c.stats.ByType[kv.UpdateType]++
		c.kv.Set(kv.Key, kv.Value)
	}
	return nil
}

// IsLegacyPolicyPath reports whether a key a v3.31 Felix parses is acceptable: a key outside
// /calico/v1/policy/, or one of the v3.31 forms under it: a tier's metadata, a policy under its
// tier (one escaped name segment), a profile's rules or labels.
func IsLegacyPolicyPath(key string) bool {
	rest, ok := strings.CutPrefix(key, "/calico/v1/policy/")
	if !ok {
		return true
	}
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 3 && parts[0] == "tier" && parts[1] != "" && parts[2] == "metadata":
		return true
	case len(parts) == 4 && parts[0] == "tier" && parts[1] != "" && parts[2] == "policy" && parts[3] != "":
		return true
	case len(parts) == 3 && parts[0] == "profile" && parts[1] != "" && (parts[2] == "rules" || parts[2] == "labels"):
		return true
	}
	return false
}

func (c *Client) send(msg any) error {
	if err := c.conn.SetWriteDeadline(time.Now().Add(c.opts.WriteTimeout)); err != nil {
		return err
	}
	return c.enc.Encode(syncproto.Envelope{Message: msg})
}

func (c *Client) read() (any, error) {
	if err := c.conn.SetReadDeadline(time.Now().Add(c.opts.ReadTimeout)); err != nil {
		return nil, err
	}
	var env syncproto.Envelope
	if err := c.dec.Decode(&env); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("server closed the connection: %w", err)
		}
		return nil, err
	}
	c.mu.Lock()
	c.stats.Messages++
	c.stats.LastMessageAt = time.Now()
	c.mu.Unlock()
	return env.Message, nil
}
