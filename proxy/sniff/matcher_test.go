package sniff

import (
	"bytes"
	"crypto/tls"
	"slices"
	"strings"
	"testing"
)

// sample is a client's first bytes and what detection must make of them.
type sample struct {
	name string
	in   []byte
	// at is the prefix length at which detection decides: every shorter
	// prefix must leave it undecided (some matcher says needMore), every
	// longer one must give want.
	at   int
	want Result
}

// samples are the cases every detection test runs: real ClientHellos from
// three TLS stacks, HTTP/2 and HTTP/1 openings, and things that are
// neither.
func samples(t testing.TB) []sample {
	h2 := helloH2(t)
	noSNI := realHello(t, &tls.Config{InsecureSkipVerify: true})
	tls12 := realHello(t, &tls.Config{ServerName: "legacy.example.test", MaxVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}})
	tls10 := realHello(t, &tls.Config{ServerName: "old.example.test", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10})
	grpc := realHello(t, &tls.Config{ServerName: "grpc.example.test", NextProtos: []string{"grpc-exp", "h2"}})
	curl := testdataHello(t, "curl-clienthello.bin")
	openssl := testdataHello(t, "openssl-clienthello.bin")
	alpnH2 := []string{"h2", "http/1.1"}
	tlsResult := func(sni string, alpn []string) Result { return Result{Protocol: TLS, SNI: sni, ALPN: alpn} }
	preface := []byte(http2Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00") // + empty SETTINGS
	httpReq := func(line string) []byte { return []byte(line + "Host: a\r\n\r\n") }
	lineLen := func(b []byte) int { return bytes.Index(b, []byte("\r\n")) + 2 }
	http1 := func(name, line, method string) sample {
		b := httpReq(line)
		return sample{name, b, lineLen(b), Result{Protocol: HTTP1, Method: method}}
	}
	unknown := func(name, in string, at int) sample {
		return sample{name, []byte(in), at, Result{Protocol: Unknown}}
	}
	return []sample{
		{"tls/go-h2", h2, len(h2), tlsResult("api.example.test", alpnH2)},
		{"tls/go-no-sni", noSNI, len(noSNI), tlsResult("", nil)},
		{"tls/go-tls12", tls12, len(tls12), tlsResult("legacy.example.test", []string{"http/1.1"})},
		{"tls/go-tls10", tls10, len(tls10), tlsResult("old.example.test", nil)},
		{"tls/go-grpc", grpc, len(grpc), tlsResult("grpc.example.test", []string{"grpc-exp", "h2"})},
		{"tls/curl", curl, len(curl), tlsResult("api.example.test", alpnH2)},
		{"tls/openssl", openssl, len(openssl), tlsResult("db.example.test", []string{"h2", "http/1.1", "acme-tls/1"})},
		{"tls/two-records", reframe(h2, 100), len(h2) + recordHeaderLen, tlsResult("api.example.test", alpnH2)},
		{"tls/header-split", reframe(h2, 2, 1, 300), len(h2) + 3*recordHeaderLen, tlsResult("api.example.test", alpnH2)},
		{"tls/trailing-ccs", append(slices.Clip(h2), 20, 3, 3, 0, 1, 1), len(h2), tlsResult("api.example.test", alpnH2)},

		{"http2/preface", preface, len(http2Preface), Result{Protocol: HTTP2}},

		http1("http1/get", "GET / HTTP/1.1\r\n", "GET"),
		http1("http1/post-1.0", "POST /submit?a=b HTTP/1.0\r\n", "POST"),
		http1("http1/absolute", "GET http://example.test/x HTTP/1.1\r\n", "GET"),
		http1("http1/connect", "CONNECT example.test:443 HTTP/1.1\r\n", "CONNECT"),
		http1("http1/connect-v6", "CONNECT [fd00::1]:443 HTTP/1.1\r\n", "CONNECT"),
		http1("http1/options-star", "OPTIONS * HTTP/1.1\r\n", "OPTIONS"),
		http1("http1/extension-method", "M-SEARCH * HTTP/1.1\r\n", "M-SEARCH"),
		http1("http1/webdav", "PROPFIND /dav/ HTTP/1.1\r\n", "PROPFIND"),
		http1("http1/pri-1.1", "PRI * HTTP/1.1\r\n", "PRI"),
		http1("http1/utf8-path", "GET /caf\xc3\xa9 HTTP/1.1\r\n", "GET"),

		{"redis/ping", []byte("*1\r\n$4\r\nPING\r\n"), 6, Result{Protocol: Redis}},
		{"redis/set", []byte("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"), 6, Result{Protocol: Redis}},
		{"redis/many-args", []byte("*1234567\r\n$3\r\nDEL\r\n"), 12, Result{Protocol: Redis}},
		unknown("redis/count-too-long", "*12345678\r\n$3\r\n", 10),
		unknown("redis/zero-count", "*0\r\n", 3),
		unknown("redis/not-bulk", "*1\r\n:1\r\n", 5),
		unknown("redis/bare-lf", "*1\n$4\r\nPING\r\n", 3),
		http1("redis/star-token-is-http1", "*1 / HTTP/1.1\r\n", "*1"),
		unknown("redis/inline", "PING\r\n", 5),
		{"dubbo/request", []byte("\xda\xbb\xc2\x00\x00\x00\x00\x00"), 3, Result{Protocol: Dubbo}},
		unknown("dubbo/response", "\xda\xbb\x02\x14", 3),
		unknown("dubbo/no-serialization", "\xda\xbb\xc0", 3),
		unknown("binary/da-not-bb", "\xda\x00\xc2", 2),
		unknown("binary/postgres-sslrequest", "\x00\x00\x00\x08\x04\xd2\x16\x2f", 1),
		unknown("binary/tls-alert", "\x15\x03\x03\x00\x02\x02\x28", 1),
		unknown("binary/sslv2-hello", "\x80\x2e\x01\x00\x02\x00\x15", 1),
		unknown("binary/record-version", "\x16\x03\x05\x00\x10", 3),
		unknown("binary/server-hello", "\x16\x03\x03\x00\x30\x02\x00\x00\x2c", 6),
		unknown("text/ssh", "SSH-2.0-OpenSSH_9.6\r\n", 20),
		unknown("text/json", `{"jsonrpc":"2.0"}`, 1),
		unknown("http2/bad-tail", "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", 19),
		unknown("http2/as-http1", "PRI * HTTP/2.0\r\nHost: a\r\n\r\n", 17),
		unknown("http1/lowercase-version", "get / http/1.1\r\n", 7),
		unknown("http1/version-1.2", "GET / HTTP/1.2\r\n", 14),
		unknown("http1/version-0.9", "GET /\r\n", 6),
		unknown("http1/bare-lf", "GET / HTTP/1.1\nHost: a\n\n", 15),
		unknown("http1/double-space", "GET  / HTTP/1.1\r\n", 5),
		unknown("http1/tab", "GET\t/ HTTP/1.1\r\n", 4),
		unknown("http1/leading-crlf", "\r\nGET / HTTP/1.1\r\n", 1),
		unknown("http1/nul-in-target", "GET /a\x00b HTTP/1.1\r\n", 7),
		unknown("http1/cr-in-target", "GET /a\rb HTTP/1.1\r\n", 7),
		unknown("http1/space-before-version", "GET / HTTP/1.1 \r\n", 15),
		unknown("http1/star-path", "OPTIONS *x HTTP/1.1\r\n", 10),
		unknown("http1/target-start", "GET %2F HTTP/1.1\r\n", 5),
		unknown("http1/long-method", strings.Repeat("A", 40)+" / HTTP/1.1\r\n", maxMethodLen+1),
	}
}

// TestSamplesEveryPrefix feeds every prefix of every sample to decide:
// undecided below the sample's decision point, the right result from there
// on, whatever follows.
func TestSamplesEveryPrefix(t *testing.T) {
	for _, s := range samples(t) {
		t.Run(s.name, func(t *testing.T) {
			if s.at < 1 || s.at > len(s.in) {
				t.Fatalf("bad sample: at=%d len=%d", s.at, len(s.in))
			}
			for n := 1; n <= len(s.in); n++ {
				r, ok := decide(s.in[:n])
				if n < s.at {
					if ok {
						t.Fatalf("prefix %d of %d: decided %v, want undecided until %d", n, len(s.in), r.Protocol, s.at)
					}
					continue
				}
				if !ok {
					t.Fatalf("prefix %d of %d: undecided, want %v", n, len(s.in), s.want.Protocol)
				}
				if !sameResult(r, s.want) {
					t.Fatalf("prefix %d of %d: got %+v, want %+v", n, len(s.in), r, s.want)
				}
			}
		})
	}
}

// sameResult compares everything but Elapsed.
func sameResult(a, b Result) bool {
	return a.Protocol == b.Protocol && a.SNI == b.SNI && slices.Equal(a.ALPN, b.ALPN) && a.Method == b.Method
}

func TestMatchersVerdicts(t *testing.T) {
	h2 := helloH2(t)
	for _, tc := range []struct {
		name string
		fn   matcher
		in   string
		want verdict
	}{
		{"tls/first-byte", matchTLS, "G", noMatch},
		{"tls/record-header", matchTLS, "\x16\x03\x01", needMore},
		{"tls/record-too-long", matchTLS, "\x16\x03\x01\x41", noMatch},
		{"tls/record-empty", matchTLS, "\x16\x03\x01\x00\x00", noMatch},
		{"tls/hello-too-short", matchTLS, "\x16\x03\x01\x00\x30\x01\x00\x00\x10", noMatch},
		{"tls/client-version", matchTLS, "\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x02", noMatch},
		{"tls/partial-hello", matchTLS, string(h2[:200]), needMore},
		{"tls/not-http", matchTLS, string(h2), match},
		{"http2/first-byte", matchHTTP2, "G", noMatch},
		{"http2/prefix", matchHTTP2, "PRI * HTTP/2.0\r\n", needMore},
		{"http2/tls", matchHTTP2, string(h2), noMatch},
		{"http1/tls", matchHTTP1, string(h2), noMatch},
		{"http1/method-only", matchHTTP1, "DELETE", needMore},
		{"http1/h2-preface", matchHTTP1, http2Preface, noMatch},
		{"http1/no-crlf-yet", matchHTTP1, "GET /very/long HTTP/1.1", needMore},
		{"http1/cr-only", matchHTTP1, "GET / HTTP/1.1\r", needMore},
		{"http1/method-at-limit", matchHTTP1, strings.Repeat("X", maxMethodLen), needMore},
		{"http1/method-over-limit", matchHTTP1, strings.Repeat("X", maxMethodLen+1), noMatch},
		{"redis/first-byte", matchRedis, "G", noMatch},
		{"redis/star", matchRedis, "*", needMore},
		{"redis/count", matchRedis, "*3\r", needMore},
		{"redis/dollar", matchRedis, "*3\r\n$", needMore},
		{"redis/command", matchRedis, "*3\r\n$3", match},
		{"redis/tls", matchRedis, string(h2), noMatch},
		{"redis/h2-preface", matchRedis, http2Preface, noMatch},
		{"redis/http1", matchRedis, "GET / HTTP/1.1\r\n", noMatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, r := tc.fn([]byte(tc.in))
			if got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			if tc.want != match && !sameResult(r, Result{}) {
				t.Fatalf("matcher returned %+v without a match", r)
			}
		})
	}
}

// TestOrderIsDocumented pins the table to the order the package doc gives.
func TestOrderIsDocumented(t *testing.T) {
	var got []Protocol
	for _, m := range matchers {
		got = append(got, m.proto)
	}
	if want := []Protocol{TLS, HTTP2, HTTP1, Redis, Dubbo}; !slices.Equal(got, want) {
		t.Fatalf("matcher order %v, want %v", got, want)
	}
}

func TestProtocolString(t *testing.T) {
	for p := range numProtocols {
		if p.String() == "" || p.String() == "invalid" {
			t.Errorf("Protocol(%d) has no name", p)
		}
	}
	if got := numProtocols.String(); got != "invalid" {
		t.Errorf("out of range: %q", got)
	}
}
