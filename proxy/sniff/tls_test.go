package sniff

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestTLSBuiltHellos runs hand-built hellos, valid and broken one field at
// a time, through matchTLS; each must get its verdict at full length and
// needMore or the same verdict on every prefix.
func TestTLSBuiltHellos(t *testing.T) {
	mod := func(f func(*helloSpec)) []byte {
		s := defaultSpec()
		f(&s)
		return s.bytes()
	}
	good := defaultSpec().bytes()
	body := defaultSpec().body()
	for _, tc := range []struct {
		name string
		in   []byte
		want verdict
		sni  string
		alpn []string
	}{
		{"valid", good, match, "svc.example.test", []string{"h2", "http/1.1"}},
		{"no-extensions", mod(func(s *helloSpec) { s.noExtsBlock = true }), match, "", nil},
		{"empty-extensions", mod(func(s *helloSpec) { s.exts = nil }), match, "", nil},
		{"ssl3", mod(func(s *helloSpec) { s.recordVersion, s.clientVersion, s.noExtsBlock = 0x0300, 0x0300, true }), match, "", nil},
		{"odd-sni-kept-out", mod(func(s *helloSpec) { s.exts = sniExt("bad name\x00") }), match, "", nil},
		{"sni-other-type-first", mod(func(s *helloSpec) {
			entries := cat([]byte{7}, vec16([]byte("x")), []byte{sniHostName}, vec16([]byte("b.example.test")))
			s.exts = ext(extServerName, vec16(entries))
		}), match, "b.example.test", nil},
		{"alpn-custom", mod(func(s *helloSpec) { s.exts = alpnExt("dubbo", "x") }), match, "", []string{"dubbo", "x"}},
		{"many-records", records(0x0301, body, 1, 1, 1, 1, 1, 50), match, "svc.example.test", []string{"h2", "http/1.1"}},

		{"record-version-3.5", mod(func(s *helloSpec) { s.recordVersion = 0x0305 }), noMatch, "", nil},
		{"record-version-2", mod(func(s *helloSpec) { s.recordVersion = 0x0203 }), noMatch, "", nil},
		{"client-version-1.3", mod(func(s *helloSpec) { s.clientVersion = 0x0304 }), noMatch, "", nil},
		{"client-version-4", mod(func(s *helloSpec) { s.clientVersion = 0x0403 }), noMatch, "", nil},
		{"session-id-33", mod(func(s *helloSpec) { s.sessionID = make([]byte, 33) }), noMatch, "", nil},
		{"no-suites", mod(func(s *helloSpec) { s.suites = nil }), noMatch, "", nil},
		{"odd-suites", mod(func(s *helloSpec) { s.suites = []byte{0x13, 0x01, 0xc0} }), noMatch, "", nil},
		{"no-compression", mod(func(s *helloSpec) { s.compression = nil }), noMatch, "", nil},
		{"no-null-compression", mod(func(s *helloSpec) { s.compression = []byte{1} }), noMatch, "", nil},
		{"dup-sni", mod(func(s *helloSpec) { s.exts = cat(sniExt("a.test"), sniExt("b.test")) }), noMatch, "", nil},
		{"dup-alpn", mod(func(s *helloSpec) { s.exts = cat(alpnExt("h2"), alpnExt("h2")) }), noMatch, "", nil},
		{"empty-alpn-name", mod(func(s *helloSpec) { s.exts = alpnExt("h2", "") }), noMatch, "", nil},
		{"empty-alpn-list", mod(func(s *helloSpec) { s.exts = ext(extALPN, vec16(nil)) }), noMatch, "", nil},
		{"alpn-trailing", mod(func(s *helloSpec) { s.exts = ext(extALPN, append(vec16([]byte("\x02h2")), 0)) }), noMatch, "", nil},
		{"alpn-name-overflows", mod(func(s *helloSpec) { s.exts = ext(extALPN, vec16([]byte("\x09h2"))) }), noMatch, "", nil},
		{"empty-sni-list", mod(func(s *helloSpec) { s.exts = ext(extServerName, vec16(nil)) }), noMatch, "", nil},
		{"empty-host-name", mod(func(s *helloSpec) { s.exts = ext(extServerName, vec16([]byte{0, 0, 0})) }), noMatch, "", nil},
		{"sni-overflows", mod(func(s *helloSpec) { s.exts = ext(extServerName, vec16([]byte{0, 0, 9, 'a'})) }), noMatch, "", nil},
		{"ext-overflows-block", mod(func(s *helloSpec) { s.exts = append(ext(5, []byte{1, 2, 3}), 0, 9, 0, 9) }), noMatch, "", nil},
		{"ext-header-cut", mod(func(s *helloSpec) { s.exts = append(ext(5, nil), 0) }), noMatch, "", nil},
		{"bytes-after-extensions", func() []byte {
			b := append(defaultSpec().body(), 0)
			b[3]++ // handshake length covers the extra byte
			return records(0x0301, b)
		}(), noMatch, "", nil},
		{"extensions-short-of-hello", func() []byte {
			s := defaultSpec()
			s.exts = append(slices.Clip(s.exts), 0, 0, 0, 0)
			b := s.body()
			b[len(b)-len(s.exts)-1] -= 4 // the block's length leaves 4 bytes over
			return records(0x0301, b)
		}(), noMatch, "", nil},
		{"second-record-not-handshake", cat(records(0x0301, body[:60]), []byte{23, 3, 3, 0, 5}), noMatch, "", nil},
		{"second-record-empty", cat(records(0x0301, body[:60]), []byte{22, 3, 1, 0, 0}), noMatch, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for n := 1; n < len(tc.in); n++ {
				if v, _ := matchTLS(tc.in[:n]); v != needMore && v != tc.want {
					t.Fatalf("prefix %d of %d: %v, want NeedMore or %v", n, len(tc.in), v, tc.want)
				}
			}
			v, r := matchTLS(tc.in)
			if v != tc.want {
				t.Fatalf("got %v, want %v", v, tc.want)
			}
			if r.SNI != tc.sni || !slices.Equal(r.ALPN, tc.alpn) {
				t.Fatalf("SNI %q ALPN %q, want %q %q", r.SNI, r.ALPN, tc.sni, tc.alpn)
			}
		})
	}
}

// TestTLSEarlyNoMatch checks that garbage after a plausible start is
// refused as soon as the impossible byte arrives, long before the hello's
// declared length.
func TestTLSEarlyNoMatch(t *testing.T) {
	good := defaultSpec().bytes()
	sidAt := recordHeaderLen + handshakeHeaderLen + 2 + 32
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"session-id-length", append(slices.Clip(good[:sidAt]), 200)},
		{"client-version", append(slices.Clip(good[:recordHeaderLen+handshakeHeaderLen]), 3, 9)},
		{"suites-overflow", append(slices.Clip(good[:sidAt]), 0, 0xff, 0xff)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if v, _ := matchTLS(tc.in); v != noMatch {
				t.Fatalf("got %v after %d bytes, want NoMatch", v, len(tc.in))
			}
		})
	}
}

// TestTLSAgreesWithCryptoTLS hands each real hello to a crypto/tls server
// and checks that what it parsed (server name, ALPN) is what matchTLS
// returns.
func TestTLSAgreesWithCryptoTLS(t *testing.T) {
	for _, s := range samples(t) {
		if s.want.Protocol != TLS {
			continue
		}
		t.Run(s.name, func(t *testing.T) {
			chi := goParse(t, s.in)
			if chi == nil {
				t.Fatal("crypto/tls did not parse the hello")
			}
			v, r := matchTLS(s.in)
			if v != match {
				t.Fatalf("matchTLS: %v", v)
			}
			if r.SNI != chi.ServerName || !slices.Equal(r.ALPN, chi.SupportedProtos) {
				t.Fatalf("sniff: %q %q; crypto/tls: %q %q", r.SNI, r.ALPN, chi.ServerName, chi.SupportedProtos)
			}
		})
	}
}

// goParse feeds b to a crypto/tls server and returns the ClientHelloInfo it
// built, or nil if it refused the hello.
func goParse(t *testing.T, b []byte) *tls.ClientHelloInfo {
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		client.Write(b)
		io.Copy(io.Discard, client) // the server's alert
	}()
	server.SetDeadline(time.Now().Add(5 * time.Second))
	var got *tls.ClientHelloInfo
	stop := errors.New("stop")
	err := tls.Server(server, &tls.Config{
		MinVersion: tls.VersionTLS10,
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			got = chi
			return nil, stop
		},
	}).Handshake()
	server.Close()
	if got == nil {
		t.Logf("crypto/tls: %v", err)
	}
	return got
}

// TestHostNames pins which server names are kept.
func TestHostNames(t *testing.T) {
	for name, ok := range map[string]bool{
		"a": true, "api.example.test": true, "_srv.x-y.test": true, "Mixed.Case": true,
		"": false, "a b": false, "a\x00b": false, "é.test": false, "a/b": false,
		strings.Repeat("a", 255): true, strings.Repeat("a", 256): false,
	} {
		if got := validHostName([]byte(name)); got != ok {
			t.Errorf("validHostName(%q) = %v", name, got)
		}
	}
}

func TestALPNStringsInterned(t *testing.T) {
	b := []byte("h2http/1.1")
	if n := testing.AllocsPerRun(100, func() {
		_ = alpnString(b[:2])
		_ = alpnString(b[2:])
	}); n != 0 {
		t.Fatalf("%v allocations", n)
	}
	if got := alpnString(bytes.Clone([]byte("spdy/3"))); got != "spdy/3" {
		t.Fatal(got)
	}
}
