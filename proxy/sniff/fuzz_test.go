package sniff

import (
	"bytes"
	"io"
	"regexp"
	"slices"
	"testing"
	"time"
)

// Seed corpora live in testdata/fuzz/<FuzzName>/; the samples up to
// maxLen bytes are added here, and longer inputs are ignored. The fuzzer's
// minimizer is quadratic in input length, and loop-count coverage makes
// every longer input look new, so without the bound fuzzing stalls for up
// to a minute per find. crypto/tls hellos (1.5 KB with their ML-KEM key
// share) are left to the unit tests; the curl and openssl ones stand in.
const (
	maxTLSInput  = 600
	maxHTTPInput = 256
)

func addSamples(f *testing.F, maxLen int, add func(in []byte)) {
	for _, s := range samples(f) {
		if len(s.in) <= maxLen {
			add(s.in)
		}
	}
}

// checkMatcher is what every matcher owes Detect, on any input: no panic,
// a zero Result without a match, and monotony: a verdict other than
// needMore on a prefix is the verdict on the whole input, with the same
// Result.
func checkMatcher(t *testing.T, m matcher, b []byte) (verdict, Result) {
	v, whole := m(b)
	if v != match && !sameResult(whole, Result{}) {
		t.Fatalf("%v, but Result filled: %+v", v, whole)
	}
	for _, n := range prefixLens(len(b)) {
		pv, r := m(b[:n])
		if pv != needMore && (pv != v || !sameResult(r, whole)) {
			t.Fatalf("prefix %d of %d: %v %+v, whole: %v %+v", n, len(b), pv, r, v, whole)
		}
	}
	return v, whole
}

// prefixLens picks two proper prefixes: the one a byte short, where a
// matcher deciding too early shows, and one in the middle. The fuzzer cuts
// inputs itself; more checks per exec slow fuzzing and minimizing a lot.
func prefixLens(n int) []int {
	switch {
	case n < 2:
		return nil
	case n < 4:
		return []int{n - 1}
	}
	return []int{n - 1, n / 2}
}

func FuzzTLS(f *testing.F) {
	addSamples(f, maxTLSInput, func(in []byte) { f.Add(in) })
	f.Add(defaultSpec().bytes())
	f.Add(records(0x0301, defaultSpec().body(), 3, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxTLSInput {
			return
		}
		v, r := checkMatcher(t, matchTLS, b)
		if v != match {
			return
		}
		if r.SNI != "" && !validHostName([]byte(r.SNI)) {
			t.Fatalf("SNI %q kept", r.SNI)
		}
		if slices.Contains(r.ALPN, "") {
			t.Fatal("empty ALPN name")
		}
		// A hello in one record matches the same when split across records.
		l := int(b[3])<<8 | int(b[4])
		hs := int(b[6])<<16 | int(b[7])<<8 | int(b[8])
		if handshakeHeaderLen+hs <= l && recordHeaderLen+l <= len(b) {
			split := records(uint16(b[1])<<8|uint16(b[2]), b[recordHeaderLen:recordHeaderLen+l], l/3, 1)
			if v2, r2 := matchTLS(split); v2 != match || !sameResult(r, r2) {
				t.Fatalf("split: %v %+v, whole: %+v", v2, r2, r)
			}
		}
	})
}

// requestLine is an independent statement of what matchHTTP1 accepts.
var requestLine = regexp.MustCompile("^([!#$%&'*+\\-.^_`|~0-9A-Za-z]{1,32}) (\\*|[/\\[0-9A-Za-z][^\\x00-\\x20\\x7f]*) HTTP/1\\.[01]\r\n")

func FuzzHTTP1(f *testing.F) {
	addSamples(f, maxHTTPInput, func(in []byte) { f.Add(in) })
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxHTTPInput {
			return
		}
		v, r := checkMatcher(t, matchHTTP1, b)
		m := requestLine.FindSubmatch(b)
		if (v == match) != (m != nil) {
			t.Fatalf("matchHTTP1 %v, reference %q", v, m)
		}
		if m != nil && r.Method != string(m[1]) {
			t.Fatalf("method %q, reference %q", r.Method, m[1])
		}
	})
}

// respCommand is an independent statement of what matchRedis accepts.
var respCommand = regexp.MustCompile("^\\*[1-9][0-9]{0,6}\r\n\\$[0-9]")

func FuzzRedis(f *testing.F) {
	addSamples(f, maxHTTPInput, func(in []byte) { f.Add(in) })
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxHTTPInput {
			return
		}
		v, _ := checkMatcher(t, matchRedis, b)
		if (v == match) != respCommand.Match(b) {
			t.Fatalf("matchRedis %v, reference %v", v, respCommand.Match(b))
		}
		// Never steals what an earlier matcher claims.
		if v == match {
			for _, m := range []matcher{matchTLS, matchHTTP2, matchHTTP1} {
				if mv, _ := m(b); mv == match {
					t.Fatalf("both Redis and an earlier matcher match %q", b)
				}
			}
		}
	})
}

func FuzzHTTP2(f *testing.F) {
	addSamples(f, maxHTTPInput, func(in []byte) { f.Add(in) })
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxHTTPInput {
			return
		}
		v, _ := checkMatcher(t, matchHTTP2, b)
		var want verdict
		switch {
		case bytes.HasPrefix(b, []byte(http2Preface)):
			want = match
		case bytes.HasPrefix([]byte(http2Preface), b):
			want = needMore
		}
		if v != want {
			t.Fatalf("%v, want %v", v, want)
		}
	})
}

// FuzzDetect runs Detect over a conn that hands in over in reads of the
// sizes in chunks, with a byte cap from maxBytes: no error, a replay equal
// to in, and the result decide gives on everything up to the cap, whatever
// the reads were. (Inputs this short stay under maxScanned even a byte at
// a time, so the scan cap never decides here.)
func FuzzDetect(f *testing.F) {
	addSamples(f, maxTLSInput, func(in []byte) { f.Add(in, []byte{}, uint16(0)) })
	f.Add([]byte("GET /a HTTP/1.1\r\n"), []byte{3}, uint16(9))
	f.Fuzz(func(t *testing.T, in, chunks []byte, maxBytes uint16) {
		if len(in) > maxTLSInput || len(chunks) > 64 {
			return
		}
		if len(in)*(len(in)+1)/2 >= maxScanned {
			t.Fatal("input bound too big for the scan cap")
		}
		sizes := make([]int, len(chunks))
		for i, c := range chunks {
			sizes[i] = int(c) + 1
		}
		c := &chunkConn{data: bytes.Clone(in), chunks: sizes, end: io.EOF}
		o := Options{Timeout: time.Second, MaxBytes: int(maxBytes)}
		res, conn, err := Detect(c, o)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(conn)
		if err != nil || !bytes.Equal(got, in) {
			t.Fatalf("replay of %d bytes gave %d, %v", len(in), len(got), err)
		}
		limit := int(maxBytes)
		if limit == 0 {
			limit = DefaultMaxBytes
		}
		var want Result
		if len(in) > 0 {
			want, _ = decide(in[:min(len(in), limit)])
		}
		if !sameResult(res, want) {
			t.Fatalf("Detect %+v, decide on everything %+v", res, want)
		}
	})
}
