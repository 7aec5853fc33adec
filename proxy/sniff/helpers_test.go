package sniff

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// realHello returns the first TLS record a crypto/tls client writes with
// cfg: its ClientHello.
func realHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- tls.Client(client, cfg).Handshake()
	}()
	var hdr [recordHeaderLen]byte
	if _, err := io.ReadFull(server, hdr[:]); err != nil {
		t.Fatalf("read record header: %v", err)
	}
	rec := make([]byte, recordHeaderLen+int(binary.BigEndian.Uint16(hdr[3:])))
	copy(rec, hdr[:])
	if _, err := io.ReadFull(server, rec[recordHeaderLen:]); err != nil {
		t.Fatalf("read record: %v", err)
	}
	server.Close()
	<-done // the handshake fails: nobody answers
	client.Close()
	return rec
}

// helloH2 is a crypto/tls ClientHello for api.example.test offering h2 and
// http/1.1.
func helloH2(t testing.TB) []byte {
	return realHello(t, &tls.Config{ServerName: "api.example.test", NextProtos: []string{"h2", "http/1.1"}})
}

// testdataHello reads a ClientHello captured from another TLS stack.
func testdataHello(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// helloSpec builds ClientHellos field by field, for malformed variants.
type helloSpec struct {
	recordVersion uint16
	clientVersion uint16
	sessionID     []byte
	suites        []byte
	compression   []byte
	exts          []byte // the extensions, already framed
	noExtsBlock   bool   // leave out the extensions block (SSL 3.0 style)
}

func defaultSpec() helloSpec {
	return helloSpec{
		recordVersion: 0x0301,
		clientVersion: 0x0303,
		sessionID:     bytes.Repeat([]byte{7}, 32),
		suites:        []byte{0x13, 0x01, 0xc0, 0x2f},
		compression:   []byte{0},
		exts:          cat(sniExt("svc.example.test"), alpnExt("h2", "http/1.1"), ext(0x0a0a, nil)),
	}
}

// body is the handshake message: header and ClientHello body.
func (s helloSpec) body() []byte {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, s.clientVersion)
	b = append(b, bytes.Repeat([]byte{0xab}, 32)...)
	b = append(b, byte(len(s.sessionID)))
	b = append(b, s.sessionID...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.suites)))
	b = append(b, s.suites...)
	b = append(b, byte(len(s.compression)))
	b = append(b, s.compression...)
	if !s.noExtsBlock {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s.exts)))
		b = append(b, s.exts...)
	}
	hs := []byte{typeClientHello, byte(len(b) >> 16), byte(len(b) >> 8), byte(len(b))}
	return append(hs, b...)
}

// bytes frames the handshake message in one record.
func (s helloSpec) bytes() []byte { return records(s.recordVersion, s.body()) }

// records frames msg in records whose fragments have the given sizes; the
// last fragment takes the rest.
func records(version uint16, msg []byte, sizes ...int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := len(msg)
		if len(sizes) > 0 {
			n, sizes = min(sizes[0], n), sizes[1:]
		}
		out = append(out, recordTypeHandshake, byte(version>>8), byte(version), byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// reframe splits a one-record hello into records of the given sizes.
func reframe(hello []byte, sizes ...int) []byte {
	v := binary.BigEndian.Uint16(hello[1:3])
	return records(v, hello[recordHeaderLen:], sizes...)
}

func ext(typ uint16, data []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	return append(b, data...)
}

func sniExt(name string) []byte {
	entry := append([]byte{sniHostName}, vec16([]byte(name))...)
	return ext(extServerName, vec16(entry))
}

func alpnExt(protos ...string) []byte {
	var list []byte
	for _, p := range protos {
		list = append(list, byte(len(p)))
		list = append(list, p...)
	}
	return ext(extALPN, vec16(list))
}

func vec16(b []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// chunkConn is a net.Conn whose reads return data in chunks of the given
// sizes (cycled; the rest at once if none), then end with end (io.EOF,
// a deadline error, or another error). Deadlines are accepted and ignored;
// writes are collected.
type chunkConn struct {
	data   []byte
	chunks []int
	i      int
	end    error
	out    bytes.Buffer
	reads  int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	c.reads++
	if len(c.data) == 0 {
		return 0, c.end
	}
	n := len(c.data)
	if len(c.chunks) > 0 {
		n = max(1, c.chunks[c.i%len(c.chunks)])
		c.i++
	}
	n = copy(p, c.data[:min(n, len(c.data))])
	c.data = c.data[n:]
	return n, nil
}

func (c *chunkConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *chunkConn) Close() error                     { return nil }
func (c *chunkConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *chunkConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *chunkConn) SetDeadline(time.Time) error      { return nil }
func (c *chunkConn) SetReadDeadline(time.Time) error  { return nil }
func (c *chunkConn) SetWriteDeadline(time.Time) error { return nil }

var zeroTime time.Time

var errReset = errors.New("connection reset (test)")

// tcpPair returns the two ends of a loopback TCP connection: the accepted
// side, as Detect gets it, and the client side.
func tcpPair(t testing.TB) (server, client *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		server.Close()
		client.Close()
	})
	return server, client
}
