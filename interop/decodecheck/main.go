// decodecheck decodes Typha wire bytes with Go's encoding/gob (and golang/snappy) and prints
// one JSON line per message (the view of package syncproto), so a Rust test can check that
// what the Rust encoder wrote is what a Felix would read.
//
// Framing (-framing):
//   - gob:    one plain gob stream (a client's stream, or a streamed-snapshot server stream);
//   - snappy: one snappy-framed gob stream;
//   - server: a whole server stream as Felix reads it: plain gob until a MsgDecoderRestart,
//     then a fresh decoder (over a fresh snappy reader when the restart names snappy), and so
//     on for every restart.
//
// Input is -file or stdin. It reads to the end: a clean end of input between messages is
// success; anything else (a decode error, a truncated message, trailing garbage) prints
// {"error": ...} and exits 1.
package main

import (
	"bufio"
	"encoding/gob"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/golang/snappy"

	"typha-rs.dev/interop/syncproto"
)

func fail(format string, args ...any) {
	b, _ := json.Marshal(map[string]string{"error": fmt.Sprintf(format, args...)})
	fmt.Println(string(b))
	os.Exit(1)
}

func main() {
	file := flag.String("file", "", "input file (default: stdin)")
	framing := flag.String("framing", "gob", "gob | snappy | server")
	flag.Parse()

	var in io.Reader = os.Stdin
	if *file != "" {
		f, err := os.Open(*file)
		if err != nil {
			fail("%v", err)
		}
		defer f.Close()
		in = f
	}
	r := bufio.NewReader(in)
	var dec *gob.Decoder
	switch *framing {
	case "gob", "server":
		dec = gob.NewDecoder(r)
	case "snappy":
		dec = gob.NewDecoder(snappy.NewReader(r))
	default:
		fail("unknown framing %q", *framing)
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for n := 0; ; n++ {
		var env syncproto.Envelope
		err := dec.Decode(&env)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			out.Flush()
			fail("message %d: %v", n, err)
		}
		b, err := json.Marshal(syncproto.View(env.Message))
		if err != nil {
			out.Flush()
			fail("message %d: %v", n, err)
		}
		out.Write(append(b, '\n'))
		if rs, ok := env.Message.(syncproto.MsgDecoderRestart); ok && *framing == "server" {
			switch rs.CompressionAlgorithm {
			case syncproto.CompressionSnappy:
				dec = gob.NewDecoder(snappy.NewReader(r))
			case "":
				dec = gob.NewDecoder(r)
			default:
				out.Flush()
				fail("message %d: restart names unknown compression %q", n, rs.CompressionAlgorithm)
			}
		}
	}
}
