package sniff

// A TLS connection opens with a ClientHello (RFC 8446 §4.1.2, RFC 5246
// §7.4.1.2) carried in one or more handshake records:
//
//	record    type(1)=22 version(2)=3,0..4 length(2)=1..2^14 fragment
//	handshake type(1)=1 length(3) body, split across fragments
//	body      client_version(2)=3,0..3 random(32)
//	          session_id<0..32> cipher_suites<2..2^16-2> (even)
//	          compression_methods<1..2^8-1> (includes null)
//	          [extensions<0..2^16-1>: type(2) data<0..2^16-1> …]
//	server_name (0)  list<1..2^16-1>: name_type(1) name<1..2^16-1> …
//	ALPN (16)        list<2..2^16-1>: name<1..2^8-1> …
//
// SSLv2-compatible hellos (first byte 0x80) are not recognised: no client
// that weir meets sends them, and they carry no SNI.

const (
	recordHeaderLen     = 5
	maxRecordLen        = 1 << 14 // plaintext fragment limit, RFC 8446 §5.1
	recordTypeHandshake = 22
	handshakeHeaderLen  = 4
	typeClientHello     = 1
	// minHelloLen is version, random, an empty session id, one cipher
	// suite and the null compression method.
	minHelloLen   = 2 + 32 + 1 + 2 + 2 + 1 + 1
	maxSessionID  = 32
	extServerName = 0
	extALPN       = 16
	sniHostName   = 0
	maxHostName   = 255
)

// matchTLS recognises a ClientHello, reassembling it when it spans records.
// Every record header is checked as it arrives, and the hello's fields are
// checked up to the last byte that has arrived, so garbage after 0x16 fails
// at the first impossible length. A hello that is complete but malformed is
// noMatch: the server will refuse it, and relaying it as opaque bytes keeps
// that answer the server's.
func matchTLS(b []byte) (verdict, Result) {
	var (
		first   []byte // the first record's fragment, as far as it arrived
		hdr     [handshakeHeaderLen]byte
		nhdr    int
		got     int // handshake bytes arrived, over all records
		need    = -1
		records int
	)
	for off := 0; need < 0 || got < need; {
		v, n := recordHeader(b[off:])
		if v == noMatch {
			return noMatch, Result{}
		}
		if v == needMore {
			break
		}
		frag := b[off+recordHeaderLen : min(off+recordHeaderLen+n, len(b))]
		if records == 0 {
			first = frag
		}
		records++
		for _, c := range frag {
			if nhdr == handshakeHeaderLen {
				break
			}
			hdr[nhdr] = c
			nhdr++
		}
		got += len(frag)
		if nhdr > 0 && hdr[0] != typeClientHello {
			return noMatch, Result{}
		}
		if need < 0 && nhdr == handshakeHeaderLen {
			l := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
			if l < minHelloLen {
				return noMatch, Result{}
			}
			need = handshakeHeaderLen + l
		}
		if len(frag) < n {
			break // this record is still arriving
		}
		off += recordHeaderLen + n
	}
	if need < 0 {
		return needMore, Result{}
	}
	if got < need {
		// Check what the first record holds; the rest must wait.
		if len(first) < handshakeHeaderLen {
			return needMore, Result{} // the handshake header itself is split
		}
		return parseHello(first[handshakeHeaderLen:], need-handshakeHeaderLen).v, Result{}
	}
	body := first
	if records > 1 {
		body = joinFragments(b, need)
	}
	h := parseHello(body[handshakeHeaderLen:need], need-handshakeHeaderLen)
	if h.v != match {
		return h.v, Result{}
	}
	return match, h.result()
}

// recordHeader checks the record header at the start of b byte by byte and
// returns the fragment length once all five bytes are there.
func recordHeader(b []byte) (verdict, int) {
	switch {
	case len(b) > 0 && b[0] != recordTypeHandshake,
		len(b) > 1 && b[1] != 3,
		len(b) > 2 && b[2] > 4,
		len(b) > 3 && int(b[3])<<8 > maxRecordLen:
		return noMatch, 0
	case len(b) < recordHeaderLen:
		return needMore, 0
	}
	n := int(b[3])<<8 | int(b[4])
	if n == 0 || n > maxRecordLen {
		return noMatch, 0 // empty handshake fragments are forbidden (§5.1)
	}
	return match, n
}

// joinFragments copies the first need handshake bytes out of the records in
// b, whose headers matchTLS has already checked. Only hellos split across
// records pay for this allocation.
func joinFragments(b []byte, need int) []byte {
	out := make([]byte, 0, need)
	for off := 0; len(out) < need; {
		n := int(b[off+3])<<8 | int(b[off+4])
		frag := b[off+recordHeaderLen : min(off+recordHeaderLen+n, len(b))]
		out = append(out, frag[:min(len(frag), need-len(out))]...)
		off += recordHeaderLen + n
	}
	return out
}

// hello is what parseHello found: a verdict and, on match, views of the
// server name and the ALPN list inside the bytes parsed.
type hello struct {
	v    verdict
	sni  []byte // the first host_name, if any
	alpn []byte // the protocol_name_list contents, validated
}

// result copies out the TLS fields. The name is kept only if it looks like
// a DNS name, so routing, logs and labels never see arbitrary bytes.
func (h *hello) result() Result {
	var r Result
	if validHostName(h.sni) {
		r.SNI = string(h.sni)
	}
	if len(h.alpn) == 0 {
		return r
	}
	n := 0
	for p := h.alpn; len(p) > 0; p = p[1+int(p[0]):] {
		n++
	}
	r.ALPN = make([]string, 0, n)
	for p := h.alpn; len(p) > 0; p = p[1+int(p[0]):] {
		r.ALPN = append(r.ALPN, alpnString(p[1:1+int(p[0])]))
	}
	return r
}

// parseHello checks a ClientHello body of declared length n of which b (at
// most n bytes) has arrived. Fields are read in wire order and the first
// failure decides: a length that overflows its enclosing field or a value
// the RFCs forbid is noMatch; running out of arrived bytes is needMore.
// match needs the whole body.
func parseHello(b []byte, n int) hello {
	c := cursor{b: b, n: n, v: match}
	c.check(c.u8() == 3) // client_version: SSL 3.0 to TLS 1.2, frozen since TLS 1.3
	c.check(c.u8() <= 3)
	c.skip(32) // random
	sid := c.vec8()
	c.check(sid.n <= maxSessionID)
	cs := c.vec16()
	c.check(cs.n >= 2 && cs.n%2 == 0)
	comp := c.vec8()
	c.check(comp.n >= 1)
	c.whole(&comp)
	c.check(comp.has(0)) // the null method must be offered
	if c.ok() && c.off == c.n {
		c.whole(&c)
		return hello{v: c.v} // no extensions: SSL 3.0 and early TLS 1.0 clients
	}
	exts := c.vec16()
	c.check(c.off == c.n) // the extensions end the hello
	var (
		h                 hello
		seenSNI, seenALPN bool
	)
	for c.ok() && exts.ok() && exts.off < exts.n {
		typ := exts.u16()
		data := exts.vec16()
		switch {
		case !exts.ok():
		case typ == extServerName:
			exts.check(!seenSNI) // one extension of each type (RFC 8446 §4.2)
			seenSNI = true
			h.sni = serverName(&data)
		case typ == extALPN:
			exts.check(!seenALPN)
			seenALPN = true
			h.alpn = alpnList(&data)
		}
		exts.adopt(&data)
	}
	c.adopt(&exts)
	c.whole(&c)
	h.v = c.v
	return h
}

// serverName checks a server_name extension (RFC 6066 §3) and returns its
// first host_name.
func serverName(d *cursor) []byte {
	list := d.vec16()
	d.check(list.n >= 1 && d.off == d.n)
	var name []byte
	for d.ok() && list.ok() && list.off < list.n {
		typ := list.u8()
		v := list.vec16() // every name type defined so far is a vector16
		list.check(v.n >= 1)
		list.whole(&v)
		if list.ok() && typ == sniHostName && name == nil {
			name = v.b
		}
	}
	d.adopt(&list)
	return name
}

// alpnList checks an ALPN extension (RFC 7301 §3.1) and returns the
// contents of its protocol_name_list.
func alpnList(d *cursor) []byte {
	list := d.vec16()
	d.check(list.n >= 2 && d.off == d.n)
	for d.ok() && list.ok() && list.off < list.n {
		p := list.vec8()
		list.check(p.n >= 1) // empty names are forbidden
	}
	d.adopt(&list)
	d.whole(&list)
	if !d.ok() {
		return nil
	}
	return list.b
}

// cursor reads a TLS structure of declared length n of which only b (at
// most n bytes) may have arrived. Errors are sticky: after the first, reads
// return zero values and v keeps the verdict (noMatch: a length overflows
// its enclosing structure or a check failed; needMore: the bytes have not
// arrived yet). v is match while no error happened.
type cursor struct {
	b   []byte
	n   int
	off int // may pass len(b) after a vector that is still arriving
	v   verdict
}

func (c *cursor) ok() bool { return c.v == match }

// check records noMatch if cond is false and no error came first.
func (c *cursor) check(cond bool) {
	if c.ok() && !cond {
		c.v = noMatch
	}
}

// whole records needMore if in's contents have not all arrived.
func (c *cursor) whole(in *cursor) {
	if c.ok() && len(in.b) < in.n {
		c.v = needMore
	}
}

// adopt takes in's error, which comes before anything c reads next.
func (c *cursor) adopt(in *cursor) {
	if c.ok() && !in.ok() {
		c.v = in.v
	}
}

// have reports whether k more bytes can be read, recording why not.
func (c *cursor) have(k int) bool {
	switch {
	case !c.ok():
	case k > c.n-c.off:
		c.v = noMatch
	case k > len(c.b)-c.off:
		c.v = needMore
	default:
		return true
	}
	return false
}

func (c *cursor) skip(k int) {
	if c.have(k) {
		c.off += k
	}
}

func (c *cursor) u8() int {
	if !c.have(1) {
		return 0
	}
	c.off++
	return int(c.b[c.off-1])
}

func (c *cursor) u16() int {
	if !c.have(2) {
		return 0
	}
	c.off += 2
	return int(c.b[c.off-2])<<8 | int(c.b[c.off-1])
}

func (c *cursor) vec8() cursor  { return c.vec(c.u8()) }
func (c *cursor) vec16() cursor { return c.vec(c.u16()) }

// vec returns a cursor over the l-byte vector whose length c just read, and
// moves c past it. The length must fit c's declared length; the contents
// may still be arriving, which matters only to whoever reads them.
func (c *cursor) vec(l int) cursor {
	if c.ok() && l > c.n-c.off {
		c.v = noMatch
	}
	if !c.ok() {
		return cursor{v: c.v}
	}
	in := cursor{b: c.b[min(c.off, len(c.b)):min(c.off+l, len(c.b))], n: l, v: match}
	c.off += l
	return in
}

// has reports whether the vector's arrived contents hold x.
func (c *cursor) has(x byte) bool {
	for _, y := range c.b {
		if y == x {
			return true
		}
	}
	return false
}

// validHostName admits 1 to 255 bytes of letters, digits, '-', '_' and
// '.'; anything else is not a name weir could route on.
func validHostName(s []byte) bool {
	if len(s) == 0 || len(s) > maxHostName {
		return false
	}
	for _, c := range s {
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

// alpnString returns the common protocol names as constants, so the usual
// hello costs no allocation per name.
func alpnString(p []byte) string {
	switch string(p) {
	case "h2":
		return "h2"
	case "http/1.1":
		return "http/1.1"
	case "http/1.0":
		return "http/1.0"
	}
	return string(p)
}
