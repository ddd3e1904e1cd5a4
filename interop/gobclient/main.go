// gobclient runs N Felix-side Typha connections (Go's encoding/gob and golang/snappy) in one
// process and reports, as JSON lines on stdout, what each saw: handshake, restarts, in-sync,
// key count and typha-rs's map digest. It exits non-zero if any connection was refused, hit a
// decode error or ended before it was told to stop.
//
// Reports: one "in-sync" line per client when it first reaches InSync (with
// -print-digest-after-insync), a "digest" line per client on SIGUSR1 and every
// -report-interval when its digest changed, an "error" line per failed client, and a closing
// "summary" line. SIGTERM or SIGINT stops every client and exits after the summary.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"typha-rs.dev/interop/felix"
	"typha-rs.dev/interop/syncproto"
)

type line struct {
	Event       string   `json:"event"`
	Client      int      `json:"client"`
	Keys        int      `json:"keys"`
	Digest      string   `json:"digest"`
	InSync      bool     `json:"in_sync"`
	Restarts    int      `json:"restarts"`
	Compression []string `json:"compression"`
	Pings       int      `json:"pings"`
	Messages    int      `json:"messages"`
	Updates     int      `json:"updates"`
	// Updates by UpdateType: [unknown, new, updated, deleted].
	ByType [4]int `json:"by_type"`
	// Every SyncStatus received, in order (ints: a []uint8 would marshal as base64).
	Statuses []int  `json:"statuses"`
	Server   string `json:"server_version"`
	// Keys under each -count-prefixes prefix.
	PrefixCounts map[string]int `json:"prefix_counts"`
}

type errLine struct {
	Event   string `json:"event"`
	Client  int    `json:"client"`
	Refused bool   `json:"refused"`
	Error   string `json:"error"`
}

type summary struct {
	Event   string `json:"event"`
	Clients int    `json:"clients"`
	InSync  int    `json:"in_sync"`
	Errors  int    `json:"errors"`
	Refused int    `json:"refused"`
}

var outMu sync.Mutex

func emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b = []byte(fmt.Sprintf(`{"event":"error","client":-1,"error":%q}`, err.Error()))
	}
	outMu.Lock()
	defer outMu.Unlock()
	os.Stdout.Write(append(b, '\n'))
}

var countPrefixes []string

func report(event string, i int, c *felix.Client) line {
	s := c.Snapshot()
	l := line{
		Event: event, Client: i, Keys: s.Keys, Digest: s.Digest.String(), InSync: s.InSync,
		Restarts: s.Restarts, Compression: s.Compression, Pings: s.Pings, Messages: s.Messages,
		Updates: s.Updates, ByType: s.ByType, Statuses: make([]int, 0, len(s.Statuses)),
	}
	for _, st := range s.Statuses {
		l.Statuses = append(l.Statuses, int(st))
	}
	if l.Compression == nil {
		l.Compression = []string{}
	}
	if s.ServerHello != nil {
		l.Server = s.ServerHello.Version
	}
	l.PrefixCounts = c.CountPrefixes(countPrefixes)
	return l
}

func main() {
	addr := flag.String("addr", "127.0.0.1:5473", "Typha address host:port")
	n := flag.Int("clients", 1, "number of connections in this process")
	syncer := flag.String("syncer", "felix", "syncer type to ask for")
	legacy := flag.Bool("legacy", false, "hello as an old Felix (v3.31 and older): SupportsModernPolicyKeys=false; fail on any policy key not in the v3.31 form")
	noRestart := flag.Bool("no-restart", false, "SupportsDecoderRestart=false (streamed snapshot, no compression)")
	hostname := flag.String("hostname", "interop-node", "hostname prefix (client i sends <prefix>-<i>)")
	printInSync := flag.Bool("print-digest-after-insync", false, "print each client's digest when it first reaches InSync")
	exitInSync := flag.Bool("exit-after-insync", false, "stop once every client reached InSync (implies -print-digest-after-insync)")
	interval := flag.Duration("report-interval", 0, "print each client's digest this often when it changed (0: never)")
	duration := flag.Duration("duration", 0, "stop after this long (0: run until a signal)")
	dialGap := flag.Duration("dial-interval", time.Millisecond, "pause between starting two clients")
	readTimeout := flag.Duration("read-timeout", 30*time.Second, "read deadline per message (Felix: 30s)")
	prefixes := flag.String("count-prefixes", "", "comma-separated key prefixes whose key counts each report carries")
	flag.Parse()
	if *prefixes != "" {
		countPrefixes = strings.Split(*prefixes, ",")
	}
	if *exitInSync {
		*printInSync = true
	}

	var stopping atomic.Bool
	var inSync, failed, refused atomic.Int64
	allSynced := make(chan struct{})
	var allOnce sync.Once
	done := make(chan struct{})
	// Closed once no client is left running: nothing more can happen.
	allEnded := make(chan struct{})
	var ended atomic.Int64
	checkAll := func() {
		if inSync.Load()+failed.Load() >= int64(*n) {
			allOnce.Do(func() { close(allSynced) })
		}
	}

	clients := make([]*felix.Client, *n)
	base := rand.Uint64() << 32
	for i := range clients {
		c := felix.New(felix.Options{
			Hostname:     fmt.Sprintf("%s-%d", *hostname, i),
			Version:      "v3.32.1-interop",
			Info:         "Revision: interop; Build date: n/a",
			SyncerType:   syncproto.SyncerType(*syncer),
			NoRestart:    *noRestart,
			Legacy:       *legacy,
			ClientConnID: base + uint64(i) + 1,
			ReadTimeout:  *readTimeout,
		})
		idx := i
		c.OnInSync = func(c *felix.Client) {
			if *printInSync {
				emit(report("in-sync", idx, c))
			}
			inSync.Add(1)
			checkAll()
		}
		clients[i] = c
	}

	var wg sync.WaitGroup
	go func() {
		for i, c := range clients {
			if stopping.Load() {
				// Never started: they did not converge either.
				failed.Add(int64(len(clients) - i))
				break
			}
			wg.Add(1)
			go func(i int, c *felix.Client) {
				defer wg.Done()
				err := c.Run(*addr)
				if !stopping.Load() {
					if err == nil {
						err = errors.New("connection ended")
					}
					ref := errors.Is(err, felix.ErrRefused)
					if ref {
						refused.Add(1)
					}
					if !c.Snapshot().InSync {
						failed.Add(1)
					} else {
						// Counted as synced already; it still failed.
						failed.Add(1)
						inSync.Add(-1)
					}
					emit(errLine{Event: "error", Client: i, Refused: ref, Error: err.Error()})
					checkAll()
				}
				if ended.Add(1) == int64(len(clients)) {
					close(allEnded)
				}
			}(i, c)
			if *dialGap > 0 {
				time.Sleep(*dialGap)
			}
		}
		checkAll()
		close(done)
	}()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)
	var tick <-chan time.Time
	if *interval > 0 {
		t := time.NewTicker(*interval)
		defer t.Stop()
		tick = t.C
	}
	var deadline <-chan time.Time
	if *duration > 0 {
		deadline = time.After(*duration)
	}
	var untilSynced <-chan struct{}
	if *exitInSync {
		untilSynced = allSynced
	}
	last := make([]string, len(clients))
loop:
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGUSR1 {
				for i, c := range clients {
					emit(report("digest", i, c))
				}
				continue
			}
			break loop
		case <-tick:
			for i, c := range clients {
				l := report("digest", i, c)
				if l.Digest != last[i] && l.Messages > 0 {
					last[i] = l.Digest
					emit(l)
				}
			}
		case <-deadline:
			break loop
		case <-untilSynced:
			break loop
		case <-allEnded:
			break loop
		}
	}
	stopping.Store(true)
	<-done
	for _, c := range clients {
		c.Close()
	}
	wg.Wait()
	for i, c := range clients {
		emit(report("final", i, c))
	}
	emit(summary{Event: "summary", Clients: len(clients), InSync: int(inSync.Load()),
		Errors: int(failed.Load()), Refused: int(refused.Load())})
	if failed.Load() > 0 {
		os.Exit(1)
	}
}
