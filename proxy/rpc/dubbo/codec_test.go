package dubbo

import (
	"bytes"
	"errors"
	"testing"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// request builds a hessian2 Dubbo request as dubbo-go and Java Dubbo
// send it: the leading strings, the arguments (already encoded) and the
// attachments as an untyped map.
func request(id uint64, flags byte, path, version, method, desc string, args []byte, attach ...string) []byte {
	var body []byte
	for _, s := range []string{"2.0.2", path, version, method, desc} {
		body = appendString(body, s)
	}
	body = append(body, args...)
	body = append(body, 'H')
	for _, s := range attach {
		body = appendString(body, s)
	}
	// A value that is not a string: an int (timeout), skipped.
	body = appendString(body, "timeout")
	body = append(body, 'I', 0, 0, 0x0b, 0xb8)
	body = append(body, 'Z')
	return message(flags, 0, id, body)
}

const reqFlags = flagRequest | flagTwoWay | Hessian2

func decode(t *testing.T, b []byte, from rpc.Side) *Frame {
	t.Helper()
	f, n, err := Codec{}.Decode(b, from, 1<<20)
	if err != nil || n != len(b) {
		t.Fatalf("decode: n=%d of %d, err %v", n, len(b), err)
	}
	return f.(*Frame)
}

func TestRequestAttributes(t *testing.T) {
	// An object argument (class definition, then the instance), a typed
	// list, a long string and binary, so every skip path has a say.
	var args []byte
	args = appendString(args, "bob")
	args = append(args, 'C')
	args = appendString(args, "org.weir.User")
	args = append(args, 0x92) // 2 fields
	args = appendString(args, "name")
	args = appendString(args, "age")
	args = append(args, 0x60)
	args = appendString(args, "ann")
	args = append(args, 0xc8, 0x20) // int 32
	args = append(args, 0x60)       // a second User, same class
	args = appendString(args, "bo")
	args = append(args, 'N')
	args = append(args, 0x72) // typed list of 2
	args = appendString(args, "[int")
	args = append(args, 0x91, 0x92)
	args = appendString(args, string(bytes.Repeat([]byte("é"), 40)))
	args = append(args, 0x23, 1, 2, 3)               // binary of 3
	args = append(args, 'L', 0, 0, 0, 0, 0, 0, 0, 1) // long
	args = append(args, 'D', 0, 0, 0, 0, 0, 0, 0, 0) // double
	desc := "Ljava/lang/String;Lorg/weir/User;Lorg/weir/User;[ILjava/lang/String;[BJD"
	b := request(7, reqFlags, "org.weir.Greeter", "1.0", "Hello", desc, args,
		"group", "gold", "interface", "org.weir.Greeter", "x-canary", "yes")
	f := decode(t, b, rpc.Client)
	if f.Kind() != rpc.Request || f.ID() != 7 {
		t.Fatalf("kind %v id %d", f.Kind(), f.ID())
	}
	for name, want := range map[string]string{
		AttrService: "org.weir.Greeter", AttrVersion: "1.0", AttrMethod: "Hello",
		AttrGroup: "gold", AttrInterface: "org.weir.Greeter", AttrDubboVersion: "2.0.2",
		"x-canary": "yes",
	} {
		if got := string(f.Attr(name)); got != want {
			t.Errorf("Attr(%q) = %q, want %q (body error %v)", name, got, want, f.BodyError())
		}
	}
	if f.Attr("timeout") != nil || f.Attr("absent") != nil {
		t.Errorf("a non-string or absent attachment gave a value")
	}
	f.SetID(1 << 40)
	if f.ID() != 1<<40 || !bytes.Equal(f.Bytes()[16:], b[16:]) {
		t.Fatalf("SetID changed more than the id")
	}
}

func TestKinds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags byte
		body  []byte
		from  rpc.Side
		want  rpc.Kind
	}{
		{"request", reqFlags, []byte{'N'}, rpc.Client, rpc.Request},
		{"oneway", flagRequest | Hessian2, []byte{'N'}, rpc.Client, rpc.Oneway},
		{"heartbeat", flagRequest | flagTwoWay | flagEvent | Hessian2, []byte{'N'}, rpc.Client, rpc.Heartbeat},
		{"readonly", flagRequest | flagEvent | Hessian2, readonlyBody, rpc.Server, rpc.GoAway},
		{"response", Hessian2, []byte{0x91}, rpc.Server, rpc.Response},
	} {
		f := decode(t, message(tc.flags, 20, 3, tc.body), tc.from)
		if f.Kind() != tc.want {
			t.Errorf("%s: kind %v, want %v", tc.name, f.Kind(), tc.want)
		}
	}
}

func TestHeartbeatAndErrorReplies(t *testing.T) {
	hb := decode(t, message(flagRequest|flagTwoWay|flagEvent|Hessian2, 0, 99, []byte{'N'}), rpc.Client)
	r := decode(t, Codec{}.HeartbeatReply(hb), rpc.Server)
	if r.Kind() != rpc.Response || r.ID() != 99 || r.Status() != StatusOK || r.Bytes()[2]&flagEvent == 0 {
		t.Fatalf("heartbeat reply % x", r.Bytes())
	}
	req := decode(t, request(5, reqFlags, "s", "", "m", "", nil), rpc.Client)
	e := decode(t, Codec{}.ErrorReply(req, errors.New("no endpoint")), rpc.Server)
	if e.ID() != 5 || e.Status() != StatusServerError {
		t.Fatalf("error reply id %d status %d", e.ID(), e.Status())
	}
	hr := hreader{b: e.Bytes()[headerLen:]}
	if s, err := hr.str(); err != nil || string(s) != "weir: no endpoint" {
		t.Fatalf("error text %q, %v", s, err)
	}
	if e := decode(t, Codec{}.ErrorReply(req, rpc.ErrResponseTimeout), rpc.Server); e.Status() != StatusServerTimeout {
		t.Fatalf("timeout status %d", e.Status())
	}
	if (Codec{}).ErrorReply(nil, errors.New("x")) != nil {
		t.Fatal("an error reply for bytes that are not Dubbo")
	}
	ga := decode(t, Codec{}.GoAwayFrame(), rpc.Server)
	if ga.Kind() != rpc.GoAway {
		t.Fatalf("goaway decodes as %v", ga.Kind())
	}
}

func TestFraming(t *testing.T) {
	b := request(1, reqFlags, "s", "", "m", "", nil)
	for i := 1; i < len(b); i++ {
		_, n, err := Codec{}.Decode(b[:i], rpc.Client, 1<<20)
		if !errors.Is(err, rpc.ErrNeedMore) || n <= i || n > len(b) {
			t.Fatalf("prefix %d: n=%d err=%v", i, n, err)
		}
	}
	if _, _, err := (Codec{}).Decode([]byte{0xda, 0xbc}, rpc.Client, 1<<20); !errors.Is(err, ErrNotDubbo) {
		t.Fatalf("bad magic: %v", err)
	}
	big := message(reqFlags, 0, 1, nil)
	big[12] = 0x7f
	if _, _, err := (Codec{}).Decode(big, rpc.Client, 1<<20); !errors.Is(err, rpc.ErrFrameTooLarge) {
		t.Fatalf("large body: %v", err)
	}
}

func TestLongStrings(t *testing.T) {
	for _, n := range []int{0, 31, 32, 1023, 1024, 70000} {
		s := string(bytes.Repeat([]byte("a"), n-n/3)) + string(bytes.Repeat([]byte("€"), n/3))
		r := hreader{b: appendString(nil, s)}
		got, err := r.str()
		if err != nil || string(got) != s || r.off != len(r.b) {
			t.Fatalf("%d units: %v, equal %v", n, err, string(got) == s)
		}
	}
}

// TestBusy: SERVER_THREADPOOL_EXHAUSTED_ERROR is the retryable "busy";
// other errors, and the agent's own timeout, are not.
func TestBusy(t *testing.T) {
	busy := decode(t, message(Hessian2, StatusThreadPoolExhausted, 3, appendString(nil, "pool full")), rpc.Server)
	if !(Codec{}).Busy(busy) {
		t.Fatal("status 100 is not busy")
	}
	req := decode(t, request(5, reqFlags, "s", "", "m", "", nil), rpc.Client)
	for _, err := range []error{errors.New("x"), rpc.ErrRequestTimeout} {
		if (Codec{}).Busy(decode(t, Codec{}.ErrorReply(req, err), rpc.Server)) {
			t.Fatalf("the error reply for %v is busy", err)
		}
	}
	if e := decode(t, Codec{}.ErrorReply(req, rpc.ErrRequestTimeout), rpc.Server); e.Status() != StatusServerTimeout {
		t.Fatalf("route timeout status %d", e.Status())
	}
}

// TestRecycledFrameIsFresh: a frame handed back and decoded again keeps
// nothing of the message it held before (its attachments were decoded).
func TestRecycledFrameIsFresh(t *testing.T) {
	for range 10 { // sync.Pool may drop a frame: try a few
		a := decode(t, request(1, reqFlags, "s", "", "m", "", nil, "group", "gold"), rpc.Client)
		if string(a.Attr(AttrGroup)) != "gold" {
			t.Fatalf("group %q", a.Attr(AttrGroup))
		}
		Codec{}.Recycle(a)
		b := decode(t, request(2, reqFlags, "s2", "", "m2", "", nil), rpc.Client)
		if b.Attr(AttrGroup) != nil || string(b.Attr(AttrService)) != "s2" || b.ID() != 2 || b.Kind() != rpc.Request {
			t.Fatalf("recycled frame: group %q service %q id %d kind %v", b.Attr(AttrGroup), b.Attr(AttrService), b.ID(), b.Kind())
		}
		Codec{}.Recycle(b)

		// Decoded into (rpc.Reuser): the same, and a failed decode leaves
		// the frame as it was.
		c := decode(t, request(3, reqFlags, "s3", "", "m3", "", nil, "group", "gold"), rpc.Client)
		c.Attr(AttrGroup)
		if _, _, err := (Codec{}).DecodeInto(c, []byte("not dubbo"), rpc.Client, 1<<20); err == nil || string(c.Attr(AttrGroup)) != "gold" {
			t.Fatalf("a failed decode into a frame: %v, group now %q", err, c.Attr(AttrGroup))
		}
		d, _, err := Codec{}.DecodeInto(c, request(4, reqFlags, "s4", "", "m4", "", nil), rpc.Client, 1<<20)
		if err != nil || d != c || d.Attr(AttrGroup) != nil || string(d.Attr(AttrService)) != "s4" || d.ID() != 4 {
			t.Fatalf("decoded into a frame: %v, same %v, group %q service %q id %d", err, d == c, d.Attr(AttrGroup), d.Attr(AttrService), d.ID())
		}
	}
}
